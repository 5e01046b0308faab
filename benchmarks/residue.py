"""Measure the residue ISS-P leaves on the weights it shrinks: ISS-P at ratio 0.99 for each learning rate and alpha.

The README's explanation of ISS-P trailing IHT at ratio 0.99 with lr 2e-3 is that the unimportant weights do not
shrink to ~0 during pruning: Adam moves each by about lr per step and ISS-P then multiplies it by alpha, so its
magnitude settles near alpha·lr/(1-alpha). This script trains ISS-P on the comparison's base file (same network,
data and schedule as benchmarks/compare_methods.py) for every (lr, alpha) pair and draws ``residue.png``: the mean
and max |w| of the unimportant set that the pruning core logs (``sparsity/unimportant_abs_mean`` / ``_max``) over
the pruning stage, each run with its alpha·lr/(1-alpha) line.

    python benchmarks/residue.py                                # lr 2e-4, 2e-3 x alpha 0.5, 0.8, 0.95 (6 runs)
    python benchmarks/residue.py --iters 300 --lrs 2e-4 --alphas 0.95 --out results/residue_quick
    python benchmarks/residue.py --dry-run                      # write the option files, print the commands

Finished runs are skipped when the script is started again (``--rerun`` trains them anew).
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

DEFAULT_LRS = [2e-4, 2e-3]
DEFAULT_ALPHAS = [0.5, 0.8, 0.95]
DEFAULT_ITERS = 1200  # prune_iter 400 with the base's 1/3: every alpha reaches its steady state long before


def run_name(lr, alpha, ratio, seed):
    return f'res_issp_r{ratio:g}_lr{lr:g}_a{alpha:g}_s{seed}'


def plan(common, lrs, alphas, ratio, seed):
    """[(name, lr, alpha, options)]: the comparison's ISS-P run at ``ratio``, differing only in lr and alpha.
    The lr is constant over the pruning stage (hold_lr_during_pruning), so the option file's lr is the one the
    reference line needs. One validation, at the end."""
    runs = []
    total = common['train']['total_iter']
    for lr in lrs:
        for alpha in alphas:
            opt = copy.deepcopy(common)
            opt['name'] = run_name(lr, alpha, ratio, seed)
            opt['manual_seed'] = seed
            opt['train']['optim_g']['lr'] = float(lr)
            block = cm.sparsity_block('issp', ratio, dict(common['train']['sparsity'], alpha=alpha))
            opt['train']['sparsity'] = block
            opt['logger']['print_freq'] = max(1, total // 100)  # the residue scalars come with every log line
            if opt.get('val') is not None:
                opt['val']['val_freq'] = total
            runs.append((opt['name'], lr, alpha, opt))
    return runs


def fmt(value, spec='.2e'):
    return '–' if value is None else format(value, spec)


def summary(experiments, lrs_alphas):
    """Markdown table: per run lr, alpha, alpha·lr/(1-alpha), mean and max |w| of the unimportant set at the
    last log of the pruning stage, max/reference, and the final PSNR on the validation set."""
    from issp_basicsr.report.figures import residue_summary
    from issp_basicsr.report.table import markdown_table
    rows = {row['name']: row for row in residue_summary(experiments)}
    table = []
    for experiment, (lr, alpha) in zip(experiments, lrs_alphas):
        row = rows.get(experiment.name, {})
        reference = alpha * lr / (1 - alpha)
        dataset = next(iter(experiment.datasets()), None)
        psnr = experiment.final_metric(dataset, 'psnr')[0] if dataset else None
        ratio = row['max'] / reference if row.get('max') is not None else None
        table.append([experiment.name, f'{lr:g}', f'{alpha:g}', fmt(reference), fmt(row.get('mean')),
                      fmt(row.get('max')), fmt(ratio, '.2f'), fmt(psnr, '.2f')])
    header = ['run', 'lr', 'alpha', 'alpha·lr/(1-alpha)', 'mean abs(w) at prune_iter', 'max abs(w) at prune_iter',
              'max / reference', 'final PSNR']
    return markdown_table(header, table)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--lrs', nargs='+', type=float, default=DEFAULT_LRS, help='Adam learning rates')
    parser.add_argument('--alphas', nargs='+', type=float, default=DEFAULT_ALPHAS, help='ISS-P shrink factors')
    parser.add_argument('--ratio', type=float, default=0.99, help='pruning ratio (default 0.99)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--iters', type=int, default=DEFAULT_ITERS,
                        help=f'total_iter of every run; prune_iter and milestones scale along '
                             f'(default {DEFAULT_ITERS})')
    parser.add_argument('--batch', type=int, help='training batch size of every run')
    parser.add_argument('--base', default=cm.SAMPLE_BASE,
                        help=f'base option file (default {os.path.relpath(cm.SAMPLE_BASE, cm.ROOT)})')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override a base option for every run (as in compare_methods.py; lr is set by --lrs)')
    parser.add_argument('--out', default=os.path.join('results', 'residue'), help='output folder')
    parser.add_argument('--jobs', type=int, help='trainings at a time (default one per core)')
    parser.add_argument('--rerun', action='store_true', help='train every run afresh')
    parser.add_argument('--dry-run', action='store_true', help='write the option files and print the commands only')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    import issp_basicsr  # noqa: F401  (BasicSR fixes and registrations)
    from issp_basicsr.report import load_experiment
    from issp_basicsr.report.figures import residue_figure

    bad = [a for a in args.alphas if not 0 <= a < 1]
    if bad:
        raise SystemExit(f'residue: --alphas must lie in [0, 1), got {bad[0]:g}')
    if not os.path.isfile(args.base):
        raise SystemExit(f'residue: {args.base} does not exist (build the sample set: basicsr datasets sample)')
    jobs = args.jobs or max(1, os.cpu_count() or 1)
    common = cm.common_options(cm.load_yaml(args.base), args.iters, args.batch, args.set, base_dir=os.getcwd())
    out = os.path.abspath(args.out)
    runs = plan(common, args.lrs, args.alphas, args.ratio, args.seed)
    files = [cm.write_options(opt, os.path.join(out, 'options')) for *_, opt in runs]
    prune_iter = common['train']['sparsity']['prune_iter']
    print(f'{len(runs)} ISS-P runs at ratio {args.ratio:g}, {args.iters:,} iterations (pruning until {prune_iter:,}); '
          f'options in {out}/options')
    if args.dry_run:
        for path in files:
            print(f'(cd {shlex.quote(out)} && {shlex.join(cm.train_command(path))})')
        return 0
    from issp_basicsr.options import OptionError, check_datasets
    try:
        check_datasets(common)
    except OptionError as error:
        raise SystemExit(f'residue: {error}')
    started = time.time()
    fresh = {name for name, *_ in runs} if args.rerun else \
        {name for (name, *_), path in zip(runs, files) if cm.stale(out, name, path)}
    todo = [(name, path, name not in fresh) for (name, *_), path in zip(runs, files)
            if name in fresh or not cm.finished(out, name)]
    print(f'{len(runs) - len(todo)} finished before, {len(todo)} to train')
    failures, threads = cm.run_all(todo, out, jobs)
    wall = time.time() - started

    done = [(name, lr, alpha) for name, lr, alpha, _ in runs if cm.finished(out, name)]
    experiments = [load_experiment(os.path.join(out, 'experiments', name), read_weights=False) for name, *_ in done]
    figure, notes = residue_figure(experiments, out, {e.name: e.name.replace('res_issp_', '') for e in experiments})
    table = summary(experiments, [(lr, alpha) for _, lr, alpha in done])
    command = 'python benchmarks/residue.py ' + shlex.join(argv if argv is not None else sys.argv[1:])
    report = [
        '# Residue of the unimportant weights during ISS-P pruning', '',
        f'Command: `{command.strip()}`  ',
        f'Machine: {cm.machine()}; {jobs} training(s) at a time, OMP_NUM_THREADS '
        f'{os.environ.get("OMP_NUM_THREADS", threads)} each  ',
        f'Base options: `{os.path.relpath(os.path.abspath(args.base), cm.ROOT)}`, ratio {args.ratio:g}, '
        f'{args.iters:,} iterations, prune_iter {prune_iter:,}, seed {args.seed}; wall time {wall / 60:.1f} min.',
        '', table, '',
    ]
    if figure:
        report += [f'![residue]({os.path.basename(figure)})', '']
    report += [f'- note: {note}' for note in notes] + [f'- FAILED: {failure}' for failure in failures]
    with open(os.path.join(out, 'results.md'), 'w') as handle:
        handle.write('\n'.join(report) + '\n')
    print(table)
    for note in notes:
        print(f'note: {note}')
    for failure in failures:
        print(f'FAILED: {failure}')
    print(f'\nwrote {os.path.join(out, "results.md")}' + (f' and {figure}' if figure else ''))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
