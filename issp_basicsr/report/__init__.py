"""``basicsr report``: figures and a summary table from finished (or running) experiments.

    basicsr report experiments/<name> [experiments/<other> ...] -o report/

Reads each experiment's training logs, TensorBoard events (``tb_logger/<name>`` beside ``experiments/``), the
option file BasicSR copied next to them and the last checkpoint, then writes PNG figures (validation metrics
with bicubic, overall and per-layer sparsity, mask change over the pruning stage, gradient norms, loss), one
curve per experiment, and ``summary.md`` with the table and the figures.
"""
import argparse
import os
from typing import List, Optional

from tqdm import tqdm

from .records import Experiment, load_experiment, parse_log
from .table import summary_table

__all__ = ['main', 'make_report', 'load_experiment', 'parse_log', 'summary_table', 'Experiment']


def build_parser():
    parser = argparse.ArgumentParser(
        prog='basicsr report',
        description='Figures and a summary table from BasicSR experiments (logs, TensorBoard events, checkpoints).')
    parser.add_argument('experiments', nargs='+', help='experiment folders (experiments/<name>)')
    parser.add_argument('-o', '--out', default='report', help='output folder for the figures and summary.md')
    parser.add_argument('--labels', nargs='+', help='legend labels, one per experiment (default: their names)')
    parser.add_argument('--title', default='Experiment report', help='heading of summary.md')
    parser.add_argument('--no-weights', action='store_true',
                        help='do not read checkpoints (no per-layer sparsity figure)')
    return parser


def make_report(paths: List[str], out: str, labels: Optional[List[str]] = None, title: str = 'Experiment report',
                read_weights: bool = True, quiet: bool = False):
    """Load the experiments, write the figures and ``summary.md`` into ``out``; returns (experiments, figure
    paths, notes, table)."""
    from .figures import all_figures  # matplotlib only when figures are drawn

    if labels is not None and len(labels) != len(paths):
        raise ValueError(f'--labels: {len(labels)} labels for {len(paths)} experiments')
    progress = (lambda items, **kw: tqdm(items, leave=False, disable=None, **kw)) if not quiet else None
    experiments = [load_experiment(p, read_weights) for p in (progress(paths, desc='reading', unit='exp')
                                                            if progress else paths)]
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):  # the same name from two roots: tell them apart by folder
        for experiment in experiments:
            experiment.name = experiment.path
    label_map = dict(zip((e.name for e in experiments), labels or (e.name for e in experiments)))
    os.makedirs(out, exist_ok=True)
    figures, notes = all_figures(experiments, out, label_map, progress)
    notes = [n for e in experiments for n in e.notes] + notes
    table = summary_table(experiments)
    lines = [f'# {title}', '', table, '']
    lines += [f'![{os.path.splitext(os.path.basename(f))[0]}]({os.path.basename(f)})' for f in figures]
    if notes:
        lines += ['', '## Notes', ''] + [f'- {note}' for note in notes]
    lines += ['', '## Sources', ''] + [f'- {e.name}: ' + ', '.join(e.sources) for e in experiments]
    with open(os.path.join(out, 'summary.md'), 'w') as handle:
        handle.write('\n'.join(lines) + '\n')
    return experiments, figures, notes, table


def main(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.experiments):
        parser.error(f'--labels: {len(args.labels)} labels for {len(args.experiments)} experiments')
    from ..option_checks import check_output_folder
    check_output_folder('-o', args.out)  # before any experiment is read
    _, figures, notes, table = make_report(args.experiments, args.out, args.labels, args.title, not args.no_weights)
    print(table)
    print()
    for note in notes:
        print(f'note: {note}')
    for figure in figures:
        print(f'wrote {figure}')
    print(f'wrote {os.path.join(args.out, "summary.md")}')
    return 0
