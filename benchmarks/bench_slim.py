"""Dense vs slim (channels removed) latency beside the MAC ratio, for EDSR-L x4 and SwinIR-light x4.

    OMP_NUM_THREADS=1 python benchmarks/bench_slim.py [--threads 1 2] [--models edsr swinir] [--repeats 3]

Channels are chosen by channel ``l1`` (from the random initial weights: latency depends only on the shapes) at
ratios 0.25/0.5/0.75 per coupled group; the slim network is the one ``export --slim`` writes (checked equal to
the masked dense one). Target (reported, not tested): EDSR-L at 0.5 >= 2.5x faster than dense, within 80% of
its MAC ratio.
"""
import argparse
import os
import time

import torch

import issp_basicsr  # noqa: F401  (BasicSR fixes)
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.swinir_arch import SwinIR
from issp_basicsr.deploy.slim import count_macs, slim_network
from issp_basicsr.sparsity import build_sparsifier

MODELS = {
    'edsr': lambda: EDSR(3, 3, num_feat=256, num_block=32, upscale=4, res_scale=0.1),
    'swinir': lambda: SwinIR(upscale=4, in_chans=3, img_size=64, window_size=8, img_range=1., depths=[6, 6, 6, 6],
                             embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler='pixelshuffledirect',
                             resi_connection='1conv'),
}


@torch.no_grad()
def best(model, x, repeats):
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--models', nargs='+', default=list(MODELS))
    parser.add_argument('--ratios', type=float, nargs='+', default=[0.25, 0.5, 0.75])
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    print(f'load average {os.getloadavg()}, {os.cpu_count()} CPUs, torch {torch.__version__}')
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for key in args.models:
        torch.manual_seed(0)
        dense = MODELS[key]().eval()
        dense_macs = count_macs(dense, x)
        slims = {}
        for ratio in args.ratios:
            masked = MODELS[key]().eval()
            masked.load_state_dict(dense.state_dict())
            build_sparsifier(masked, method='l1', granularity='channel', ratio=ratio)
            slim, _ = slim_network(masked, x[..., :16, :16] if key == 'edsr' else x)
            slims[ratio] = (slim, dense_macs / count_macs(slim, x))
        for threads in args.threads:
            torch.set_num_threads(threads)
            t_dense = best(dense, x, args.repeats)
            print(f'{key} x4, 64x64, {threads} thread(s): dense {t_dense * 1e3:.0f} ms')
            for ratio, (slim, mac_ratio) in slims.items():
                t = best(slim, x, args.repeats)
                speedup = t_dense / t
                print(f'  ratio {ratio}: slim {t * 1e3:.0f} ms, speed-up {speedup:.2f}x, MAC ratio {mac_ratio:.2f}x, '
                      f'{speedup / mac_ratio:.0%} of it (load {os.getloadavg()[0]:.2f})')


if __name__ == '__main__':
    main()
