"""Dense vs sparse CPU inference of pruned EDSR-L x4 and SwinIR-light x4, with the speed-up.

    python benchmarks/bench_sparse_inference.py [--models edsr swinir] [--ratios 0.9 0.95 0.99] [--size 64]
                                                [--repeats 5] [--threads N] [--plan density|timed] [--sizes]

The weights are made sparse without training by exact per-layer magnitude pruning (IHT at iteration 1, the core's
own selection), then ``convert_to_sparse`` swaps the pruned layers for CSR ones (by default those of density
<= --max-density). Each row: best-of-``repeats`` latency of the dense and the sparse model, run in turn so that
both see the same machine load, and the largest |sparse - dense| output difference. Figures on a shared machine
move with its load: run it more than once and read the best; the load average is printed with each model.
"""
import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import issp_basicsr  # noqa: E402,F401  (BasicSR fixes before its archs are imported)
from basicsr.archs.edsr_arch import EDSR  # noqa: E402
from basicsr.archs.swinir_arch import SwinIR  # noqa: E402
from issp_basicsr.deploy.compressed import compress_checkpoint, serialized_size, unpruned_bytes  # noqa: E402
from issp_basicsr.deploy.efficiency import best_latencies, contention_warning  # noqa: E402
from issp_basicsr.deploy.sparse_modules import (DEFAULT_MAX_DENSITY, SparseConv2d, SparseLinear,  # noqa: E402
                                                convert_to_sparse, plan_sparse_layers)
from issp_basicsr.sparsity import build_sparsifier  # noqa: E402

MODELS = {
    # BasicSR's EDSR-L x4 (the paper's EDSR): 256 features, 32 residual blocks, residual scale 0.1
    'edsr': ('EDSR-L x4', lambda: EDSR(3, 3, num_feat=256, num_block=32, upscale=4, res_scale=0.1), 1),
    # SwinIR-light x4: embed 60, depths/heads 6x4, window 8, mlp ratio 2, pixelshuffledirect, 1conv
    'swinir': ('SwinIR-light x4', lambda: SwinIR(upscale=4, in_chans=3, img_size=64, window_size=8, img_range=1.,
                                                 depths=[6, 6, 6, 6], embed_dim=60, num_heads=[6, 6, 6, 6],
                                                 mlp_ratio=2, upsampler='pixelshuffledirect',
                                                 resi_connection='1conv'), 8),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', choices=list(MODELS), default=list(MODELS))
    parser.add_argument('--ratios', nargs='+', type=float, default=[0.9, 0.95, 0.99])
    parser.add_argument('--size', type=int, default=64, help='LR input height and width (default 64)')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, help='torch.set_num_threads (default: PyTorch default)')
    parser.add_argument('--plan', choices=('density', 'timed'), default='density')
    parser.add_argument('--max-density', type=float, default=DEFAULT_MAX_DENSITY)
    parser.add_argument('--sizes', action='store_true',
                        help='also the compressed checkpoint: MB, and its ratio to the bound 1.2 (1 - r) * plain + '
                        'the tensors stored dense (slow on EDSR-L)')
    return parser.parse_args()


def load():
    return '/'.join(f'{v:.2f}' for v in os.getloadavg())


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'input 1x3x{args.size}x{args.size}, best of {args.repeats}, plan {args.plan}'
          f'{f" (max density {args.max_density})" if args.plan == "density" else ""}')
    header = f'{"model":<16} {"ratio":>5} {"dense ms":>9} {"sparse ms":>9} {"speed-up":>8} {"sparse layers":>13} ' \
             f'{"max |diff|":>10}' + (f' {"plain MB":>8} {"sparse MB":>9} {"size/bound":>10}' if args.sizes else '')
    print(header)
    for key in args.models:
        label, build, multiple = MODELS[key]
        load_before = os.getloadavg()[0]
        torch.manual_seed(0)
        model = build().eval()
        size = -(-args.size // multiple) * multiple
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        for ratio in sorted(args.ratios):
            build_sparsifier(model, method='iht', ratio=ratio, prune_iter=1).step(1)  # nested: prune further
            plan = plan_sparse_layers(model, x if args.plan == 'timed' else None, args.max_density)
            sparse = convert_to_sparse(model, plan=plan)
            with torch.no_grad():
                difference = float((sparse(x) - model(x)).abs().max())
            dense_s, sparse_s = best_latencies([model, sparse], x, args.repeats)
            converted = sum(isinstance(m, (SparseConv2d, SparseLinear)) for m in sparse.modules())
            row = (f'{label:<16} {ratio:>5} {dense_s * 1e3:>9.1f} {sparse_s * 1e3:>9.1f} {dense_s / sparse_s:>7.2f}x '
                   f'{f"{converted}/{len(plan)}":>13} {difference:>10.1e}')
            if args.sizes:
                state = {'params': model.state_dict()}
                plain = serialized_size(state)
                compressed = compress_checkpoint(state)
                unpruned = unpruned_bytes(compressed)
                stored = serialized_size(compressed)
                bound = 1.2 * (1 - ratio) * plain + unpruned
                row += f' {plain / 1e6:>8.2f} {stored / 1e6:>9.3f} {stored / bound:>10.3f}'
            print(row, flush=True)
            del sparse
        print(f'  (load average {load()} at {time.strftime("%H:%M:%S")})', flush=True)
        warning = contention_warning(load_before)
        if warning:
            print(f'  {warning}', flush=True)


if __name__ == '__main__':
    main()
