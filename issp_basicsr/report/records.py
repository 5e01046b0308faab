"""Reading one experiment back: its training logs, TensorBoard events, option file and last checkpoint.

Everything is turned into one shape, :class:`Experiment`: ``series`` maps a TensorBoard-style tag
(``losses/l_pix``, ``sparsity/zeros``, ``metrics/<dataset>/psnr``, ``metrics/<dataset>/psnr_bicubic``, ``lr``)
to ``{iteration: value}``. The log and the events carry the same scalars (BasicSR's MessageLogger writes both);
the log is always there and also holds the final summary lines, the events hold full precision, so both are read
and the events win where they overlap. Missing pieces leave gaps, never errors: the figures skip what is absent.
"""
import glob
import os
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import yaml

NUMBER = r'[-+]?(?:\d[\d.]*(?:[eE][-+]?\d+)?|nan|inf)'
# "2026-11-24 19:59:20,985 INFO: <message>" (BasicSR's root logger format)
RECORD = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+: (.*)$')
# MessageLogger: "[name..][epoch:  0, iter:   1,000, lr:(2.000e-04,)] [eta: .., time (data): 0.011 (0.003)] k: v ..."
TRAIN_MESSAGE = re.compile(r'^\[[^\]]*\]\[epoch:\s*-?\d+, iter:\s*([\d,]+), lr:\(([^)]*)\)\]\s*(.*)$')
ETA_BLOCK = re.compile(r'^\[eta:[^\]]*time \(data\): (' + NUMBER + r') \((' + NUMBER + r')\)\]\s*')
KEY_VALUE = re.compile(r'(\S+): (' + NUMBER + r')(?=\s|$)')
# ISSPSRModel: "Validation <set> @ <iter>: psnr 28.1 (bicubic 27.2), ssim 0.81 (bicubic 0.78), sparsity 0.95 (..)"
ISSP_VALIDATION = re.compile(r'^Validation (.+?) @ ([\d,]+): (.*)$')
METRIC_PART = re.compile(r'^(\S+) (' + NUMBER + r')(?: \(bicubic (' + NUMBER + r')\))?')
# stock SRModel: "Validation <set>" then lines "\t # psnr: 28.1000\tBest: ..."
STOCK_VALIDATION = re.compile(r'^Validation (.+?)\s*$')
STOCK_METRIC = re.compile(r'^\s*# (\S+): (' + NUMBER + r')')
FINAL_SPARSITY = re.compile(r'^Final sparsity: (' + NUMBER + r')')
FINAL_METRICS = re.compile(r'^Final (.+?): (.*)$')
TIME_CONSUMED = re.compile(r'^End of training\. Time consumed: (\S+)')


def tb_tag(key: str) -> str:
    """The TensorBoard tag MessageLogger gives a logged key: losses go under ``losses/``."""
    return f'losses/{key}' if key.startswith('l_') else key


@dataclass
class Experiment:
    name: str
    path: str
    options: dict = field(default_factory=dict)
    series: Dict[str, Dict[int, float]] = field(default_factory=dict)
    final: Dict[str, Dict[str, Tuple[float, Optional[float]]]] = field(default_factory=dict)
    final_sparsity: Optional[float] = None
    layer_sparsity: 'OrderedDict[str, float]' = field(default_factory=OrderedDict)
    checkpoint_sparsity: Optional[float] = None
    train_time: Optional[str] = None
    sources: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    # ------------------------------------------------------------------------------ option read-outs
    @property
    def sparsity_options(self) -> dict:
        return ((self.options.get('train') or {}).get('sparsity')) or {}

    @property
    def method(self) -> str:
        if self.sparsity_options:
            return str(self.sparsity_options.get('method', 'issp'))
        return 'dense' if self.options else '?'

    @property
    def ratio(self) -> Optional[float]:
        return self.sparsity_options.get('ratio') if self.method != 'dense' else None

    @property
    def prune_iter(self) -> Optional[int]:
        return self.sparsity_options.get('prune_iter')

    @property
    def total_iter(self) -> Optional[int]:
        return (self.options.get('train') or {}).get('total_iter')

    # ------------------------------------------------------------------------------ series read-outs
    def curve(self, tag: str) -> Tuple[List[int], List[float]]:
        points = sorted(self.series.get(tag, {}).items())
        return [i for i, _ in points], [v for _, v in points]

    @property
    def iterations(self) -> Optional[int]:
        """The last iteration the run reached (from any logged scalar)."""
        last = [max(values) for values in self.series.values() if values]
        return max(last) if last else None

    def datasets(self) -> List[str]:
        names = [tag.split('/')[1] for tag in self.series if tag.startswith('metrics/') and tag.count('/') == 2]
        names += list(self.final)
        return list(OrderedDict.fromkeys(names))

    def metrics(self, dataset: str) -> List[str]:
        prefix = f'metrics/{dataset}/'
        names = [tag[len(prefix):] for tag in self.series if tag.startswith(prefix)]
        names = [n for n in names if not n.endswith('_bicubic')]
        names += list(self.final.get(dataset, {}))
        return list(OrderedDict.fromkeys(names))

    def final_metric(self, dataset: str, metric: str) -> Tuple[Optional[float], Optional[float]]:
        """(model, bicubic) at the end of training: the 'Final' log line, else the last validation point."""
        if metric in self.final.get(dataset, {}):
            value, bicubic = self.final[dataset][metric]
            if bicubic is None:
                bicubic = self.last(f'metrics/{dataset}/{metric}_bicubic')
            return value, bicubic
        return self.last(f'metrics/{dataset}/{metric}'), self.last(f'metrics/{dataset}/{metric}_bicubic')

    def last(self, tag: str) -> Optional[float]:
        values = self.series.get(tag)
        return values[max(values)] if values else None

    @property
    def sparsity(self) -> Optional[float]:
        """Fraction of the pruned layers' weights that are exactly 0 at the end."""
        for value in (self.final_sparsity, self.checkpoint_sparsity, self.last('sparsity/zeros')):
            if value is not None:
                return value
        return None


# ------------------------------------------------------------------------------------------ log files
def parse_log(lines, series=None, final=None):
    """Parse BasicSR training-log lines into ``(series, final, info)``.

    ``info`` has ``final_sparsity`` and ``train_time`` when the log reached the end of training. A stock
    SRModel validation block carries no iteration; it is filed under the last logged training iteration unless
    an ISSPSRModel line for the same set (which names the iteration) follows it.
    """
    series = {} if series is None else series
    final = {} if final is None else final
    info = {}
    last_iter = 0
    pending = None  # (dataset, {metric: value}) of a stock validation block

    def put(tag, iteration, value):
        series.setdefault(tag, {})[iteration] = value

    def commit_pending():
        nonlocal pending
        if pending is not None:
            dataset, values = pending
            for metric, value in values.items():
                put(f'metrics/{dataset}/{metric}', last_iter, value)
            pending = None

    for raw in lines:
        line = raw.rstrip('\n')
        record = RECORD.match(line)
        if record is None:
            metric = STOCK_METRIC.match(line)
            if pending is not None and metric:
                pending[1][metric.group(1)] = float(metric.group(2))
            continue
        message = record.group(1)
        issp_validation = ISSP_VALIDATION.match(message)
        if issp_validation and pending is not None and pending[0] == issp_validation.group(1):
            pending = None  # superseded by the line that names the iteration
        commit_pending()

        train = TRAIN_MESSAGE.match(message)
        if train:
            last_iter = int(train.group(1).replace(',', ''))
            lrs = [float(v) for v in train.group(2).split(',') if v.strip()]
            if lrs:
                put('lr', last_iter, lrs[0])
            rest = train.group(3)
            eta = ETA_BLOCK.match(rest)
            if eta:
                put('time/iter', last_iter, float(eta.group(1)))
                put('time/data', last_iter, float(eta.group(2)))
                rest = rest[eta.end():]
            for key, value in KEY_VALUE.findall(rest):
                put(tb_tag(key), last_iter, float(value))
            continue
        if issp_validation:
            dataset, iteration = issp_validation.group(1), int(issp_validation.group(2).replace(',', ''))
            for part in issp_validation.group(3).split(', '):
                match = METRIC_PART.match(part)
                if not match or match.group(1) == 'sparsity':
                    continue
                put(f'metrics/{dataset}/{match.group(1)}', iteration, float(match.group(2)))
                if match.group(3) is not None:
                    put(f'metrics/{dataset}/{match.group(1)}_bicubic', iteration, float(match.group(3)))
            continue
        stock = STOCK_VALIDATION.match(message)
        if stock and '@' not in message and ':' not in message:
            pending = (stock.group(1), {})
            continue
        match = FINAL_SPARSITY.match(message)
        if match:
            info['final_sparsity'] = float(match.group(1))
            continue
        match = FINAL_METRICS.match(message)
        if match:
            values = {}
            for part in match.group(2).split(', '):
                metric = METRIC_PART.match(part)
                if metric:
                    bicubic = float(metric.group(3)) if metric.group(3) is not None else None
                    values[metric.group(1)] = (float(metric.group(2)), bicubic)
            if values:
                final[match.group(1)] = values
            continue
        match = TIME_CONSUMED.match(message)
        if match:
            info['train_time'] = match.group(1)
    commit_pending()
    return series, final, info


def log_files(path: str, name: str) -> List[str]:
    """BasicSR's logs of this experiment, oldest first (a resumed run adds a new file beside the old ones)."""
    files = glob.glob(os.path.join(path, f'train_{glob.escape(name)}_*.log'))
    return sorted(files or glob.glob(os.path.join(path, 'train_*.log')))


# --------------------------------------------------------------------------------- TensorBoard events
def event_dirs(path: str, name: str) -> List[str]:
    """Where BasicSR writes this experiment's events: ``<root>/tb_logger/<name>`` beside ``<root>/experiments``;
    a ``tb_logger`` folder inside the experiment folder is read too."""
    candidates = [
        os.path.join(path, 'tb_logger'),
        os.path.join(path, 'tb_logger', name),
        os.path.join(os.path.dirname(os.path.dirname(path)), 'tb_logger', name),
    ]
    found = []
    for candidate in candidates:
        if glob.glob(os.path.join(candidate, 'events.out.tfevents.*')):
            found.append(os.path.normpath(candidate))
    return list(OrderedDict.fromkeys(found))


def read_events(directory: str) -> Dict[str, Dict[int, float]]:
    """All scalars of one TensorBoard run folder, ``{tag: {step: value}}`` (a later event at a step wins)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
    accumulator = EventAccumulator(directory, size_guidance={SCALARS: 0})
    accumulator.Reload()
    return {
        tag: {event.step: event.value for event in accumulator.Scalars(tag)}
        for tag in accumulator.Tags().get(SCALARS, [])
    }


# ------------------------------------------------------------------------------------- option file
def read_options(path: str, name: str) -> dict:
    """The option file BasicSR copied into the experiment folder (the one whose ``name`` is this experiment)."""
    fallback = {}
    for file in sorted(glob.glob(os.path.join(path, '*.yml')) + glob.glob(os.path.join(path, '*.yaml'))):
        try:
            with open(file) as handle:
                options = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(options, dict):
            continue
        if options.get('name') == name:
            return options
        fallback = fallback or options
    return fallback


# -------------------------------------------------------------------------------------- checkpoint
def last_checkpoint(path: str) -> Optional[str]:
    models = os.path.join(path, 'models')
    latest = os.path.join(models, 'net_g_latest.pth')
    if os.path.isfile(latest):
        return latest
    numbered = []
    for file in glob.glob(os.path.join(models, 'net_g_*.pth')):
        match = re.search(r'net_g_(\d+)\.pth$', file)
        if match:
            numbered.append((int(match.group(1)), file))
    return max(numbered)[1] if numbered else None


def prunable_weight_names(options: dict, state: dict) -> Tuple[List[str], List[str]]:
    """(every Conv2d/Linear weight of the network, in module order; those the run prunes).

    The network is built from ``network_g`` (on the CPU, RNG set aside) and the pruning core's layer rule
    applied; when that is not possible, every 2-D or 4-D ``*.weight`` of the checkpoint is taken instead.
    """
    try:
        import torch
        from basicsr.utils.registry import ARCH_REGISTRY

        from ..sparsity import prunable_layers
        net_opt = dict(options['network_g'])
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # e.g. SwinIR's meshgrid warning: noise in a report
            net = ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)
        every = [f'{name}.weight' for name, _ in prunable_layers(net, ())]
        exclude = ((options.get('train') or {}).get('sparsity') or {}).get('exclude') or ()
        pruned = [f'{name}.weight' for name, _ in prunable_layers(net, tuple(exclude))]
        if all(name in state for name in every):
            return every, pruned
    except Exception:  # noqa: BLE001  any failure to rebuild falls back to the shape rule below
        pass
    every = [k for k, v in state.items() if k.endswith('.weight') and getattr(v, 'ndim', 0) in (2, 4)]
    return every, every


def read_checkpoint(file: str, options: dict):
    """Per-layer fraction of exact zeros of the evaluated weights (``params_ema`` when saved, else ``params``),
    and the overall fraction over the layers the run prunes."""
    import torch
    checkpoint = torch.load(file, map_location='cpu', weights_only=True)
    state = checkpoint
    if isinstance(checkpoint, dict):
        for key in ('params_ema', 'params'):
            if isinstance(checkpoint.get(key), dict):
                state = checkpoint[key]
                break
    every, pruned = prunable_weight_names(options, state)
    layers = OrderedDict()
    for name in every:
        weight = state[name]
        layers[name[:-len('.weight')]] = float((weight == 0).sum()) / weight.numel()
    total = sum(state[name].numel() for name in pruned)
    zeros = sum(int((state[name] == 0).sum()) for name in pruned)
    return layers, (zeros / total if total else None)


# ------------------------------------------------------------------------------------------ loading
def load_experiment(path: str, read_weights: bool = True) -> Experiment:
    """Everything that can be read about the experiment in folder ``path`` (``experiments/<name>``)."""
    path = os.path.normpath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f'{path}: no such experiment folder')
    name = os.path.basename(path)
    experiment = Experiment(name=name, path=path, options=read_options(path, name))
    if experiment.options.get('name'):
        experiment.name = experiment.options['name']

    series, final = {}, {}
    files = log_files(path, experiment.name)
    for file in files:
        with open(file, errors='replace') as handle:
            _, _, info = parse_log(handle, series, final)
        experiment.final_sparsity = info.get('final_sparsity', experiment.final_sparsity)
        experiment.train_time = info.get('train_time', experiment.train_time)
        experiment.sources.append(file)
    for directory in event_dirs(path, experiment.name):
        try:
            events = read_events(directory)
        except ImportError:
            experiment.notes.append(f'{experiment.name}: tensorboard is not installed; events in {directory} not read')
            continue
        for tag, values in events.items():
            series.setdefault(tag, {}).update(values)
        experiment.sources.append(directory)
    experiment.series, experiment.final = series, final

    checkpoint = last_checkpoint(path) if read_weights else None
    if checkpoint:
        try:
            experiment.layer_sparsity, experiment.checkpoint_sparsity = read_checkpoint(checkpoint, experiment.options)
            experiment.sources.append(checkpoint)
        except Exception as error:  # noqa: BLE001  a damaged checkpoint costs one figure, not the report
            experiment.notes.append(f'{experiment.name}: could not read {checkpoint} ({type(error).__name__})')
    if not experiment.sources:
        raise FileNotFoundError(f'{path}: no training log (train_*.log), TensorBoard events or checkpoint found')
    return experiment
