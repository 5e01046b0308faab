"""The report's markdown summary: one row per experiment, final metrics beside bicubic, sparsity, iterations."""
from typing import List, Optional

from .records import Experiment

MISSING = '–'


def fmt_metric(metric: str, value: Optional[float]) -> str:
    if value is None:
        return MISSING
    return f'{value:.2f}' if metric.lower() == 'psnr' else f'{value:.4f}'


def fmt_ratio(value) -> str:
    return MISSING if value is None else f'{value:g}'


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines)


def summary_table(experiments: List[Experiment]) -> str:
    """Final validation metrics per dataset (model, then bicubic of the same images), sparsity, iterations."""
    columns = []  # (dataset, metric)
    for experiment in experiments:
        for dataset in experiment.datasets():
            columns += [(dataset, m) for m in experiment.metrics(dataset) if (dataset, m) not in columns]
    header = ['experiment', 'method', 'ratio', 'iterations']
    header += [f'{d} {m.upper()}' for d, m in columns]
    header += [f'{d} bicubic {m.upper()}' for d, m in columns]
    header += ['sparsity', 'train time']
    rows = []
    for experiment in experiments:
        finals = [experiment.final_metric(d, m) for d, m in columns]
        iterations = experiment.iterations
        row = [experiment.name, experiment.method, fmt_ratio(experiment.ratio),
               MISSING if iterations is None else f'{iterations:,}']
        row += [fmt_metric(m, value) for (_, m), (value, _) in zip(columns, finals)]
        row += [fmt_metric(m, bicubic) for (_, m), (_, bicubic) in zip(columns, finals)]
        sparsity = experiment.sparsity
        row += [MISSING if sparsity is None else f'{sparsity:.4f}', experiment.train_time or MISSING]
        rows.append(row)
    return markdown_table(header, rows)
