"""Time the per-iteration pruning step against a naive reference, as in an ISS-P training run.

Models (BasicSR archs, paper settings): SwinIR-light x4 (103 prunable layers, 880,740 weights) and EDSR-L x4
(69 layers, about 43M weights). For each model it compares

* the naive reference, written the way the authors' code does it: per layer, copy the weight to the host,
  NumPy argsort of |w|, a Python list of the ``ceil(ratio * n)`` first indices, a mask, a multiply;
* ``Sparsifier.step`` of issp_basicsr's pruning core (method issp, ratio 0.95, alpha 0.95, pruning stage).

Between timed calls the weights move by one real Adam step (lr 2e-4, betas 0.9/0.99; EDSR-L 1e-4) on a random
small batch, as in training; that step is not timed, and the sparsifier's step is timed right after it, as it
runs right after the optimizer step in training. Both steps start from the same weights at every iteration (a
snapshot is restored in between, untimed), their results are compared, and training goes on from the
sparsifier's result. The step's share of a training
iteration uses a separately timed forward + L1 loss + backward + Adam step on the batch given by
``--train-batch``/``--train-patch``.

    python benchmarks/bench_step.py --model both --threads 2
"""
import argparse
import statistics
import time

import numpy as np
import torch

import issp_basicsr  # noqa: F401  (makes BasicSR 1.4.2 importable on today's torch)
from issp_basicsr.sparsity import build_sparsifier, prunable_layers, pruned_count

RATIO = 0.95
ALPHA = 0.95


def swinir_light():
    from basicsr.archs.swinir_arch import SwinIR
    return SwinIR(upscale=4, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6, 6, 6, 6],
                  embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler='pixelshuffledirect',
                  resi_connection='1conv')


def edsr_l():
    from basicsr.archs.edsr_arch import EDSR
    return EDSR(num_in_ch=3, num_out_ch=3, num_feat=256, num_block=32, upscale=4, res_scale=0.1)


# name -> (title, builder, Adam lr, LR patch of the untimed move step, default timed steps, default training
# batch, LR patch and timed iterations)
MODELS = {
    'swinir': ('SwinIR-light x4', swinir_light, 2e-4, 32, 30, 8, 64, 2),
    'edsr': ('EDSR-L x4', edsr_l, 1e-4, 16, 5, 1, 48, 1),
}


def naive_step(modules, ratio, alpha):
    """The reference: host copy, full NumPy argsort, Python index list and mask, per layer."""
    for module in modules:
        weight = module.weight
        host = weight.detach().cpu().numpy()
        order = np.argsort(np.abs(host).reshape(-1))
        unimportant = order[:pruned_count(ratio, host.size)].tolist()
        mask = np.ones(host.size, dtype=np.float32)
        mask[unimportant] = alpha
        weight.data.mul_(torch.from_numpy(mask).view(weight.shape).to(weight.device))


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(function, device):
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def train_iteration(model, optimizer, batch, patch, scale, device, generator):
    lq = torch.rand(batch, 3, patch, patch, generator=generator).to(device)
    gt = torch.rand(batch, 3, patch * scale, patch * scale, generator=generator).to(device)
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.l1_loss(model(lq), gt)
    loss.backward()
    optimizer.step()


def counters(sparsifier):
    """(layer selections settled by the threshold check, layer selections ranked exactly) so far."""
    groups = sparsifier.groups
    return (sum(getattr(g, 'checked_rows', 0) for g in groups), sum(getattr(g, 'ranked_rows', 0) for g in groups))


def describe(seconds):
    ms = [s * 1e3 for s in seconds]
    return f'median {statistics.median(ms):8.2f} ms   mean {statistics.mean(ms):8.2f} ms   min {min(ms):8.2f} ms'


def bench(key, args, device):
    title, build, lr, move_patch, default_iters, default_batch, default_patch, default_train_iters = MODELS[key]
    iters = args.iters or default_iters
    train_iters = args.train_iters or default_train_iters
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model = build().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    modules = [module for _, module in prunable_layers(model, [])]
    weights = [module.weight for module in modules]
    sparsifier = build_sparsifier(model, method='issp', ratio=RATIO, alpha=ALPHA, prune_iter=10**9)
    if args.exact:
        for group in sparsifier.groups:  # as on CUDA: rank every layer exactly at every step
            group.incremental = False
    print(f'{title}: {len(modules)} prunable layers, {sum(w.numel() for w in weights):,} weights, '
          f'{len(sparsifier.groups)} same-size groups; between steps: one Adam step (lr {lr:g}) on a random '
          f'batch of 1, LR {move_patch}x{move_patch}')

    naive_times, step_times, identical = [], [], 0
    first_step = None
    checked = ranked = 0
    total = args.warmup + iters
    for iteration in range(1, total + 1):
        # the weights move (untimed); the step follows it as it follows the optimizer step in training
        train_iteration(model, optimizer, 1, move_patch, 4, device, generator)
        with torch.no_grad():
            snapshot = [w.detach().clone() for w in weights]
            before = counters(sparsifier)
            step_time = timed(lambda: sparsifier.step(iteration), device)
            after = counters(sparsifier)
            result = [w.detach().clone() for w in weights]
            for w, saved in zip(weights, snapshot):  # the naive step starts from the same weights
                w.copy_(saved)
            naive_time = timed(lambda: naive_step(modules, RATIO, ALPHA), device)
            identical_step = all(torch.equal(a, b) for a, b in zip(result, weights))
            for w, saved in zip(weights, result):  # training goes on from the sparsifier's result
                w.copy_(saved)
            del snapshot, result
        if iteration == 1:
            first_step = step_time
        if iteration > args.warmup:
            naive_times.append(naive_time)
            step_times.append(step_time)
            checked += after[0] - before[0]
            ranked += after[1] - before[1]
            identical += identical_step
        if args.verbose:
            print(f'  iteration {iteration:3d}: naive {naive_time * 1e3:9.2f} ms   step {step_time * 1e3:8.2f} ms')

    train_batch = args.train_batch or default_batch
    train_patch = args.train_patch or default_patch
    train_iteration(model, optimizer, train_batch, train_patch, 4, device, generator)  # one-off allocations
    train_times = [
        timed(lambda: train_iteration(model, optimizer, train_batch, train_patch, 4, device, generator), device)
        for _ in range(train_iters)
    ]
    train_time = statistics.median(train_times)

    naive_median = statistics.median(naive_times)
    step_median = statistics.median(step_times)
    print(f'  naive reference step    : {describe(naive_times)}')
    print(f'  Sparsifier.step         : {describe(step_times)}')
    print(f'  speed-up                : {naive_median / step_median:.1f}x (medians), '
          f'{statistics.mean(naive_times) / statistics.mean(step_times):.1f}x (means)')
    print(f'  first step (full exact ranking of every layer): {first_step * 1e3:.2f} ms')
    print(f'  timed steps: {len(step_times)} after {args.warmup} warm-up; layer selections settled by the '
          f'threshold check {checked}, ranked exactly {ranked}; identical to the naive result in '
          f'{identical}/{len(step_times)} steps')
    print(f'  training iteration (batch {train_batch}, LR {train_patch}x{train_patch}, x4, forward + L1 + backward '
          f'+ Adam, median of {train_iters}): {train_time * 1e3:.0f} ms')
    print(f'  share of an iteration   : Sparsifier.step {100 * step_median / (train_time + step_median):.3f} %, '
          f'naive {100 * naive_median / (train_time + naive_median):.2f} %')
    return naive_median, step_median


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', choices=['swinir', 'edsr', 'both'], default='both')
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch\'s)')
    parser.add_argument('--iters', type=int, default=None, help='timed pruning steps per model (default: '
                        'SwinIR-light 30, EDSR-L 5)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed pruning steps first (the first one '
                        'ranks every layer exactly)')
    parser.add_argument('--train-batch', type=int, default=None, help='batch of the timed training iteration '
                        '(default: SwinIR-light 8, EDSR-L 1)')
    parser.add_argument('--train-patch', type=int, default=None, help='LR patch size of the timed training '
                        'iteration (default: SwinIR-light 64, EDSR-L 48)')
    parser.add_argument('--train-iters', type=int, default=None, help='timed training iterations, after an '
                        'untimed one (median; default: SwinIR-light 2, EDSR-L 1)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--exact', action='store_true', help='no threshold check: rank every layer exactly at '
                        'every step (the sync-free path CUDA tensors take)')
    parser.add_argument('--verbose', action='store_true', help='print every iteration')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, '
          f'ratio {RATIO}, alpha {ALPHA}' + (', exact ranking at every step' if args.exact else ''))
    keys = ['swinir', 'edsr'] if args.model == 'both' else [args.model]
    for key in keys:
        bench(key, args, device)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
