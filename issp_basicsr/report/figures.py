"""The report's figures: one PNG per quantity, one curve per experiment, so methods compare on one plot.

Drawn with matplotlib's object API on an Agg canvas (``Figure.savefig``), so no pyplot state or display is
touched. Each function returns the path it wrote, or None and a note when no experiment has the data.
"""
import os
from typing import List, Optional, Tuple

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .records import Experiment

DPI = 100


LINESTYLES = ('-', '--', '-.', ':')


def line_styles(count: int):
    """One line style per experiment: colour, dash pattern and a width that shrinks with the index, so curves
    that coincide (methods at the same sparsity, say) stay visible under each other."""
    cmap = colormaps['tab10' if count <= 10 else 'tab20']
    return [
        dict(color=cmap(i % cmap.N), linestyle=LINESTYLES[i % len(LINESTYLES)], linewidth=max(1.0, 2.8 - 0.35 * i))
        for i in range(count)
    ]


def new_figure(panels: int = 1, width: float = 6.4, height: float = 4.2):
    figure = Figure(figsize=(width * panels if panels > 1 else width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, panels, i + 1) for i in range(panels)]
    return figure, axes


def save(figure, path: str) -> str:
    figure.tight_layout()
    figure.savefig(path)
    return path


def _plot_series(axis, experiments, tag, labels, styles, pruning_only=False) -> int:
    drawn = 0
    for experiment, style in zip(experiments, styles):
        x, y = experiment.curve(tag)
        if pruning_only and experiment.prune_iter:
            keep = [i for i, it in enumerate(x) if it <= experiment.prune_iter]
            x, y = [x[i] for i in keep], [y[i] for i in keep]
        if not x:
            continue
        axis.plot(x, y, label=labels[experiment.name], marker='o' if len(x) < 30 else None, markersize=3, **style)
        drawn += 1
    return drawn


def _missing(experiments, tag) -> List[str]:
    return [e.name for e in experiments if not e.series.get(tag)]


def validation_figure(experiments, dataset, out, labels) -> Tuple[Optional[str], List[str]]:
    """Validation metrics of ``dataset`` over iterations, the bicubic value of the same images dashed."""
    with_data = [e for e in experiments if dataset in e.datasets() and any(
        e.series.get(f'metrics/{dataset}/{m}') for m in e.metrics(dataset))]
    if not with_data:
        return None, [f'validation_{dataset}.png: no experiment has validation metrics on {dataset}; skipped']
    notes = [f'validation_{dataset}.png: {name} has no validation on {dataset}; left out'
             for name in (e.name for e in experiments if e not in with_data)]
    metrics = []
    for experiment in with_data:
        metrics += [m for m in experiment.metrics(dataset) if m not in metrics]
    styles = dict(zip((e.name for e in experiments), line_styles(len(experiments))))
    figure, axes = new_figure(len(metrics))
    for axis, metric in zip(axes, metrics):
        _plot_series(axis, with_data, f'metrics/{dataset}/{metric}', labels, [styles[e.name] for e in with_data])
        bicubic = {e.name: e.final_metric(dataset, metric)[1] for e in with_data}
        values = {round(v, 4) for v in bicubic.values() if v is not None}
        if len(values) == 1:
            axis.axhline(values.pop(), color='0.4', linestyle='--', linewidth=1, label='bicubic')
        else:
            for name, value in bicubic.items():
                if value is not None:
                    axis.axhline(value, color=styles[name]['color'], linestyle='--', linewidth=1)
        axis.set_xlabel('iteration')
        axis.set_ylabel(metric.upper() if metric in ('psnr', 'ssim') else metric)
        axis.set_title(f'{dataset}: validation {metric}')
        axis.grid(alpha=0.3)
        axis.legend(fontsize='small')
    return save(figure, os.path.join(out, f'validation_{dataset}.png')), notes


def series_figure(experiments, tag, out, file, title, ylabel, labels, logy=False, pruning_only=False,
                  note_missing=True):
    """One scalar over iterations, one curve per experiment (``pruning_only``: iterations up to prune_iter)."""
    styles = line_styles(len(experiments))
    figure, (axis,) = new_figure()
    drawn = _plot_series(axis, experiments, tag, labels, styles, pruning_only=pruning_only)
    if not drawn:
        return None, [f'{file}: no experiment logged {tag}; skipped']
    notes = [f'{file}: {name} logged no {tag}; left out' for name in _missing(experiments, tag)] if note_missing else []
    axis.set_xlabel('iteration')
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    if logy:
        axis.set_yscale('log')
    axis.grid(alpha=0.3)
    axis.legend(fontsize='small')
    return save(figure, os.path.join(out, file)), notes


def gradient_figure(experiments, out, labels):
    """The paper's trainability curves: gradient norm on the unimportant and on the kept weights."""
    tags = [('sparsity/grad_unimportant', 'unimportant / pruned weights'), ('sparsity/grad_kept', 'kept weights')]
    if not any(e.series.get(tag) for e in experiments for tag, _ in tags):
        return None, ['grad_norms.png: no experiment logged gradient norms; skipped']
    styles = line_styles(len(experiments))
    figure, axes = new_figure(2)
    for axis, (tag, title) in zip(axes, tags):
        _plot_series(axis, experiments, tag, labels, styles)
        axis.set_xlabel('iteration')
        axis.set_ylabel('gradient L2 norm')
        axis.set_title(f'gradient norm: {title}')
        if any(v > 0 for e in experiments for v in e.series.get(tag, {}).values()):
            axis.set_yscale('log')
        axis.grid(alpha=0.3)
        axis.legend(fontsize='small')
    notes = [f'grad_norms.png: {name} logged no gradient norms; left out'
             for name in _missing(experiments, 'sparsity/grad_kept')]
    return save(figure, os.path.join(out, 'grad_norms.png')), notes


def layer_figure(experiments, out, labels):
    """Fraction of exact zeros per prunable layer of the final checkpoint, layers in network order."""
    with_layers = [e for e in experiments if e.layer_sparsity]
    if not with_layers:
        return None, ['layer_sparsity.png: no experiment has a readable checkpoint; skipped']
    notes = [f'layer_sparsity.png: {e.name} has no readable checkpoint; left out'
             for e in experiments if not e.layer_sparsity]
    styles = dict(zip((e.name for e in experiments), line_styles(len(experiments))))
    widest = max(with_layers, key=lambda e: len(e.layer_sparsity))
    names = list(widest.layer_sparsity)
    figure, (axis,) = new_figure(width=max(6.4, min(16.0, 0.12 * len(names) + 3)))
    for experiment in with_layers:
        values = [experiment.layer_sparsity.get(name) for name in names]
        x = [i for i, v in enumerate(values) if v is not None]
        axis.plot(x, [values[i] for i in x], label=labels[experiment.name], marker='o', markersize=3,
                  **styles[experiment.name])
    step = max(1, len(names) // 25)
    axis.set_xticks(range(0, len(names), step))
    axis.set_xticklabels([names[i] for i in range(0, len(names), step)], rotation=90, fontsize=6)
    axis.set_xlabel('layer (network order)')
    axis.set_ylabel('fraction of weights exactly 0')
    axis.set_ylim(-0.02, 1.02)
    axis.set_title('per-layer sparsity of the final checkpoint')
    axis.grid(alpha=0.3)
    axis.legend(fontsize='small')
    return save(figure, os.path.join(out, 'layer_sparsity.png')), notes


RESIDUE_TAGS = (('sparsity/unimportant_abs_mean', 'mean |w|'), ('sparsity/unimportant_abs_max', 'max |w|'))


def residue_reference(experiment: Experiment) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """(alpha, lr, alpha·lr/(1-alpha)) of an ISS-P run, read from its option file; Nones where they do not apply.

    With Adam, an unimportant weight moves by about lr per step and is then multiplied by alpha, so its
    magnitude settles near w = alpha·(w + lr), i.e. alpha·lr/(1-alpha): the residue the explanation predicts.
    """
    if experiment.method != 'issp':
        return None, None, None
    from ..sparsity import SparsityConfig
    alpha = experiment.sparsity_options.get('alpha', SparsityConfig.alpha)
    lr = ((experiment.options.get('train') or {}).get('optim_g') or {}).get('lr')
    try:
        alpha, lr = float(alpha), float(lr)
    except (TypeError, ValueError):
        return None, None, None
    return alpha, lr, (alpha * lr / (1 - alpha) if alpha < 1 else None)


def residue_summary(experiments: List[Experiment]) -> List[dict]:
    """One row per experiment with the residue scalars: alpha, lr, the reference alpha·lr/(1-alpha), and the
    mean and max |w| of the unimportant set at the last log of the pruning stage."""
    rows = []
    for experiment in experiments:
        if not any(experiment.series.get(tag) for tag, _ in RESIDUE_TAGS):
            continue
        alpha, lr, reference = residue_reference(experiment)
        row = dict(name=experiment.name, alpha=alpha, lr=lr, reference=reference)
        for tag, _ in RESIDUE_TAGS:
            points = {i: v for i, v in experiment.series.get(tag, {}).items()
                      if not experiment.prune_iter or i <= experiment.prune_iter}
            row[tag.rsplit('_', 1)[1]] = points[max(points)] if points else None
        rows.append(row)
    return rows


def residue_figure(experiments, out, labels):
    """Mean and max |w| of the unimportant set over the pruning stage, one curve per experiment, each with its
    reference alpha·lr/(1-alpha) as a dotted line of the same colour."""
    file = 'residue.png'
    with_data = [e for e in experiments if any(e.series.get(tag) for tag, _ in RESIDUE_TAGS)]
    if not with_data:
        return None, [f'{file}: no experiment logged {RESIDUE_TAGS[0][0]} or {RESIDUE_TAGS[1][0]} '
                      '(the pruning core logs them during the pruning stage); skipped']
    notes = [f'{file}: {e.name} logged no {RESIDUE_TAGS[0][0]} / {RESIDUE_TAGS[1][0]}; left out'
             for e in experiments if e not in with_data]
    styles = dict(zip((e.name for e in experiments), line_styles(len(experiments))))
    figure, axes = new_figure(2)
    for axis, (tag, what) in zip(axes, RESIDUE_TAGS):
        _plot_series(axis, with_data, tag, labels, [styles[e.name] for e in with_data], pruning_only=True)
        for experiment in with_data:
            _, _, reference = residue_reference(experiment)
            if reference is not None and reference > 0:
                axis.axhline(reference, color=styles[experiment.name]['color'], linestyle=':', linewidth=1.2)
        axis.plot([], [], color='0.3', linestyle=':', label='alpha·lr/(1-alpha), same colour')
        axis.set_xlabel('iteration')
        axis.set_ylabel(f'{what} of the unimportant set')
        axis.set_title(f'residue during pruning: {what}')
        if any(v > 0 for e in with_data for v in e.series.get(tag, {}).values()):
            axis.set_yscale('log')
        axis.grid(alpha=0.3)
        axis.legend(fontsize='x-small')
    notes += [f'{file}: {e.name} is not an ISS-P run with alpha < 1 and a numeric lr; no reference line'
              for e in with_data if residue_reference(e)[2] is None]
    return save(figure, os.path.join(out, file)), notes


def all_figures(experiments: List[Experiment], out: str, labels: dict, progress=None) -> Tuple[List[str], List[str]]:
    """Write every figure the experiments have data for; returns (paths written, notes on what was skipped)."""
    datasets = []
    for experiment in experiments:
        datasets += [d for d in experiment.datasets() if d not in datasets]
    jobs = [lambda d=d: validation_figure(experiments, d, out, labels) for d in datasets]
    if not datasets:
        jobs.append(lambda: (None, ['validation: no experiment has validation metrics; skipped']))
    jobs += [
        lambda: series_figure(experiments, 'sparsity/zeros', out, 'sparsity.png', 'overall sparsity (exact zeros)',
                              'fraction of prunable weights = 0', labels),
        lambda: layer_figure(experiments, out, labels),
        lambda: series_figure(experiments, 'sparsity/mask_change', out, 'mask_change.png',
                              'change of the unimportant set over the pruning stage',
                              'fraction changed since the last log', labels, pruning_only=True),
        lambda: gradient_figure(experiments, out, labels),
        lambda: series_figure(experiments, 'losses/l_pix', out, 'loss.png', 'training loss (l_pix)', 'L1 loss',
                              labels, logy=True),
    ]
    if any(e.series.get('sparsity/penalty') for e in experiments):  # only issr / greg log it
        jobs.append(lambda: series_figure(experiments, 'sparsity/penalty', out, 'penalty.png',
                                          'L2 penalty on the unimportant set (issr, greg)', 'coefficient', labels,
                                          pruning_only=True, note_missing=False))
    if any(e.series.get(tag) for e in experiments for tag, _ in RESIDUE_TAGS):  # once the core logs them
        jobs.append(lambda: residue_figure(experiments, out, labels))
    paths, notes = [], []
    for job in (progress(jobs, desc='figures', unit='fig') if progress else jobs):
        path, job_notes = job()
        if path:
            paths.append(path)
        notes += job_notes
    return paths, notes
