"""What each kind of pruning buys at equal parameter count: unstructured ISS-P against channel ISS-P, ``assl`` and
channel ``l1``, each with PSNR/SSIM and the latency of its deployable form.

The channel runs remove ``--channel-ratio`` of every coupled channel group; the unstructured ISS-P run prunes the
same number of weights (its ratio is computed from the network before training: the zeros channel ``l1`` leaves,
over the weights unstructured pruning takes). Everything else is the comparison's base file
(benchmarks/compare_methods.py: data, iterations, schedule, seeds), with network_g replaced by a small EDSR, the
backbone channel pruning suits (SwinIR loses only its MLP hidden channels; ``--swinir`` keeps the base network).

Latency, best of ``--repeats`` at ``--threads`` on an LR input of ``--input-size``, the models run in turn:
dense as trained; unstructured with its pruned layers as CSR products (``basicsr report-efficiency``'s sparse
execution); channel runs as the slim network of ``basicsr export --slim``.

    python benchmarks/compare_structured.py                       # channel ratio 0.5, 6,000 iterations, seed 0
    python benchmarks/compare_structured.py --iters 300 --out results/structured_quick
    python benchmarks/compare_structured.py --dry-run             # write the option files, print the commands

Finished runs are skipped when the script is started again, stopped ones resume (``--rerun`` trains anew).
"""
import argparse
import copy
import os
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import compare_methods as cm  # noqa: E402  (the comparison's option handling and runner, shared)

# 196k parameters (the base SwinIR has 142k prunable weights); x2 as the base
EDSR = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 32, 'num_block': 8, 'upscale': 2,
        'res_scale': 1, 'img_range': 255.}
CHANNEL_METHODS = ('issp', 'assl', 'l1')


def build(network_options):
    import torch
    from basicsr.utils.registry import ARCH_REGISTRY
    net_opt = dict(network_options)
    with torch.random.fork_rng(devices=[]):
        return ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt).eval()


def equal_count_ratio(network_options, channel_ratio, exclude=()):
    """The unstructured ratio that prunes as many weights as channel ``l1`` at ``channel_ratio`` zeroes."""
    from issp_basicsr.sparsity import build_sparsifier, prunable_layers
    net = build(network_options)
    build_sparsifier(net, method='l1', granularity='channel', ratio=channel_ratio, exclude=list(exclude))
    layers = prunable_layers(net, tuple(exclude))
    zeros = sum(int((module.weight == 0).sum()) for _, module in layers)
    return round(zeros / sum(module.weight.numel() for _, module in layers), 4)


def plan(common, channel_ratio, seeds):
    """[(name, label, granularity, ratio, seed, options)]: dense, unstructured ISS-P at the equal-count ratio,
    and the channel methods at ``channel_ratio``."""
    shared = common['train']['sparsity']
    weight_ratio = equal_count_ratio(common['network_g'], channel_ratio, shared.get('exclude') or ())
    setups = [('dense', 'dense', 'weight', None), ('issp', 'issp (weights)', 'weight', weight_ratio)]
    setups += [(m, f'{m} (channels)', 'channel', channel_ratio) for m in CHANNEL_METHODS]
    runs = []
    for seed in seeds:
        for method, label, granularity, ratio in setups:
            opt = copy.deepcopy(common)
            opt['name'] = cm.run_name('st' if method == 'dense' else f'st_{granularity}', method, ratio, seed)
            opt['manual_seed'] = seed
            block = cm.sparsity_block(method, ratio, dict(shared, granularity=granularity))
            opt['train']['sparsity'] = block
            runs.append((opt['name'], label, granularity, ratio, seed, opt))
    return runs


def deployable(experiment_path, network_options, granularity, example_input):
    """``(trained network, the form it ships in)``: the CSR-converted one for unstructured runs, the slim one at
    channel granularity, the network itself when dense."""
    from issp_basicsr.checkpoint import read_network
    from issp_basicsr.deploy.slim import slim_network
    from issp_basicsr.deploy.sparse_modules import convert_to_sparse
    net = build(network_options)
    net.load_state_dict(read_network(os.path.join(experiment_path, 'models', 'net_g_latest.pth')))
    if granularity == 'channel':
        return net, slim_network(net, example_input)[0]
    return net, convert_to_sparse(net)


def measure(out, runs, input_size, repeats):
    """Per finished run: PSNR, SSIM, non-zero parameters of the shipped form, latency (ms), and the largest
    difference between the shipped form's output and the trained network's."""
    import torch

    from issp_basicsr.deploy.efficiency import best_latencies
    from issp_basicsr.report import load_experiment
    x = torch.rand(1, 3, *input_size, generator=torch.Generator().manual_seed(0))
    rows, models = [], []
    for name, label, granularity, ratio, seed, opt in runs:
        path = os.path.join(out, 'experiments', name)
        if not cm.finished(out, name):
            continue
        experiment = load_experiment(path)
        dataset = next(iter(experiment.datasets()), None)
        trained, shipped = deployable(path, opt['network_g'], granularity, x)
        with torch.no_grad():
            difference = float((trained(x) - shipped(x)).abs().max())
        nonzero = sum(int(torch.count_nonzero(p)) for p in trained.parameters())
        rows.append({'name': name, 'label': label, 'ratio': ratio, 'seed': seed, 'nonzero': nonzero,
                     'psnr': experiment.final_metric(dataset, 'psnr')[0] if dataset else None,
                     'ssim': experiment.final_metric(dataset, 'ssim')[0] if dataset else None,
                     'bicubic': experiment.final_metric(dataset, 'psnr')[1] if dataset else None,
                     'difference': difference, 'dataset': dataset})
        models.append(shipped)
    for row, seconds in zip(rows, best_latencies(models, x, repeats) if models else []):
        row['ms'] = seconds * 1e3
    return rows


def table(rows):
    from issp_basicsr.report.table import markdown_table
    dense = next((r['ms'] for r in rows if r['label'] == 'dense'), None)
    body = [[r['label'], '–' if r['ratio'] is None else f'{r["ratio"]:g}', str(r['seed']), f'{r["nonzero"]:,}',
             cm.cell([r['psnr']], 2), cm.cell([r['ssim']], 4), f'{r["ms"]:.1f}',
             f'{dense / r["ms"]:.2f}x' if dense else '–', f'{r["difference"]:.1e}'] for r in rows]
    return markdown_table(['run', 'ratio', 'seed', 'non-zero params', 'PSNR', 'SSIM', 'latency ms', 'vs dense',
                           'max abs(shipped - trained)'], body)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--channel-ratio', type=float, default=0.5, help='channel ratio of the channel runs')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0])
    parser.add_argument('--iters', type=int, help='total_iter of every run (default: the base file\'s)')
    parser.add_argument('--batch', type=int, help='training batch size of every run')
    parser.add_argument('--base', default=cm.SAMPLE_BASE,
                        help=f'base option file (default {os.path.relpath(cm.SAMPLE_BASE, cm.ROOT)})')
    parser.add_argument('--swinir', action='store_true', help="keep the base file's network instead of EDSR")
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override a base option for every run (as in compare_methods.py)')
    parser.add_argument('--out', default=os.path.join('results', 'compare_structured'), help='output folder')
    parser.add_argument('--jobs', type=int, help='trainings at a time (default one per core)')
    parser.add_argument('--input-size', type=int, nargs=2, default=(64, 64), metavar=('H', 'W'),
                        help='LR input size of the latency measurement (default 64 64)')
    parser.add_argument('--threads', type=int, default=1, help='threads of the latency measurement (default 1)')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per model (best is reported)')
    parser.add_argument('--rerun', action='store_true', help='train every run afresh')
    parser.add_argument('--dry-run', action='store_true', help='write the option files and print the commands only')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    import issp_basicsr  # noqa: F401  (BasicSR fixes and registrations)

    if not 0 < args.channel_ratio < 1:
        raise SystemExit(f'compare_structured: --channel-ratio must lie in (0, 1), got {args.channel_ratio:g}')
    if not os.path.isfile(args.base):
        raise SystemExit(f'compare_structured: {args.base} does not exist (build the sample set: basicsr datasets '
                         'sample)')
    base = cm.load_yaml(args.base)
    if not args.swinir:
        base['network_g'] = dict(EDSR, upscale=base['scale'])
    common = cm.common_options(base, args.iters, args.batch, args.set, base_dir=os.getcwd())
    out = os.path.abspath(args.out)
    runs = plan(common, args.channel_ratio, args.seeds)
    files = [cm.write_options(opt, os.path.join(out, 'options')) for *_, opt in runs]
    print(f'{len(runs)} runs of {common["train"]["total_iter"]:,} iterations; channel ratio {args.channel_ratio:g}, '
          f'unstructured ratio {runs[1][3]:g} for the same count; options in {out}/options')
    if args.dry_run:
        for path in files:
            print(f'(cd {shlex.quote(out)} && {shlex.join(cm.train_command(path))})')
        return 0
    from issp_basicsr.options import OptionError, check_datasets
    try:
        check_datasets(common)
    except OptionError as error:
        raise SystemExit(f'compare_structured: {error}')
    started = time.time()
    fresh = {name for name, *_ in runs} if args.rerun else \
        {name for (name, *_), path in zip(runs, files) if cm.stale(out, name, path)}
    todo = [(name, path, name not in fresh) for (name, *_), path in zip(runs, files)
            if name in fresh or not cm.finished(out, name)]
    print(f'{len(runs) - len(todo)} finished before, {len(todo)} to train')
    failures, threads = cm.run_all(todo, out, args.jobs or max(1, os.cpu_count() or 1))
    wall = time.time() - started

    import torch
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rows = measure(out, runs, args.input_size, args.repeats)
    text = table(rows)
    dataset = next((r['dataset'] for r in rows if r['dataset']), None)
    bicubic = next((r['bicubic'] for r in rows if r['bicubic'] is not None), None)
    command = 'python benchmarks/compare_structured.py ' + shlex.join(argv if argv is not None else sys.argv[1:])
    report = [
        '# Unstructured and channel pruning at equal parameter count', '',
        f'Command: `{command.strip()}`  ',
        f'Machine: {cm.machine()}; trainings {args.jobs or os.cpu_count()} at a time; latency at {args.threads} '
        f'thread(s), load average {load:.2f} before timing, best of {args.repeats}, LR input '
        f'{args.input_size[0]}x{args.input_size[1]}  ',
        f'Network: {common["network_g"]}; {common["train"]["total_iter"]:,} iterations, prune_iter '
        f'{common["train"]["sparsity"].get("prune_iter")}; evaluated on {dataset} (PSNR/SSIM on Y), bicubic '
        f'{cm.cell([bicubic], 2)} dB; training wall time {wall / 60:.1f} min.', '', text, '',
    ] + [f'- FAILED: {failure}' for failure in failures]
    with open(os.path.join(out, 'results.md'), 'w') as handle:
        handle.write('\n'.join(report) + '\n')
    print(text)
    for failure in failures:
        print(f'FAILED: {failure}')
    print(f'\nwrote {os.path.join(out, "results.md")}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
