"""The whole-file checks of a BasicSR option file: everything around the ``train: sparsity:`` block.

Each check appends one line per problem to ``problems`` (naming the key path, e.g. ``train:optim_g:lr``, and the
fix) and, for settings BasicSR ignores, one line to ``notes``. :func:`issp_basicsr.options.validate_options` runs
them all and raises one :class:`OptionProblems` with every line, before any folder is made. What BasicSR itself
accepts is accepted: integral floats (``total_iter: !!float 3e5``), ``meta_info_file`` beside an LMDB backend,
names found through the registry's ``_basicsr`` suffix fallback.

The checks use BasicSR's own code where it exists: its registries, ``FileClient``'s backends, the path builders
of ``PairedImageDataset``, the model class's ``get_optimizer`` and ``setup_schedulers`` run on a dummy parameter.
"""
import ast
import copy
import difflib
import inspect
import math
import os
import re
import textwrap
import types

import torch
import yaml

from .errors import OptionError

# ------------------------------------------------------------------------------------------------- helpers


class OptionProblems(OptionError):
    """Every problem found in an option file, one line each (``problems``); ``str`` is the lines joined."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__('\n'.join(self.problems))


def registered(registry, name):
    """True when BasicSR's ``registry.get(name)`` finds ``name``: directly or through its ``_basicsr`` suffix."""
    return isinstance(name, str) and (name in registry or f'{name}_basicsr' in registry)


def resolve(registry, name):
    """``registry.get(name)`` without its print of the suffix fallback."""
    return registry._obj_map.get(name) or registry._obj_map.get(f'{name}_basicsr')


def known_names(registry):
    """The names a user writes: ``X_basicsr`` is listed as ``X``."""
    return sorted({n[:-len('_basicsr')] if n.endswith('_basicsr') else n for n in registry.keys()})


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _mapping(value):
    return isinstance(value, dict)


def _suggest(name, candidates):
    close = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return f' (did you mean {close[0]}?)' if close else ''


def _unknown_type(key, name, candidates, what):
    return (f'{key}: {name!r} is not a {what}{_suggest(name, candidates)}; known: {", ".join(candidates)}')


# ------------------------------------------------------------------------------------------------- the file


def read_option_file(path):
    """The option file as BasicSR reads it (its ordered loader); a missing file or a YAML error is one line
    naming the file, line and column."""
    from basicsr.utils.options import ordered_yaml
    if not os.path.isfile(path):
        raise OptionError(f'-opt {path}: no such file')
    try:
        with open(path) as f:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f'{path}:{mark.line + 1}:{mark.column + 1}' if mark else path
        what = ' '.join(part for part in (error.context, error.problem) if part)
        raise OptionError(f'{where}: YAML syntax error: {what}') from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise OptionError(f'{path}: not a readable YAML file ({str(error).splitlines()[0]})') from None
    if not _mapping(opt):
        raise OptionError(f'{path}: an option file is a mapping of keys to values, got {type(opt).__name__}')
    return opt


def apply_force_yml(opt, entries):
    """Check ``--force_yml KEY=VALUE`` entries the way BasicSR applies them (one ``=``, every key but the last
    already there, the value read by BasicSR's parser) and apply them to ``opt``; returns the problems."""
    from basicsr.utils.options import _postprocess_yml_value
    problems = []
    for entry in entries or []:
        if entry.count('=') != 1 or not entry.split('=')[0].strip():
            problems.append(f'--force_yml {entry}: write KEY:SUBKEY=VALUE (one "=", e.g. train:ema_decay=0.999)')
            continue
        keys, value = (part.strip() for part in entry.split('='))
        try:
            value = _postprocess_yml_value(value)
        except Exception as error:  # BasicSR eval()s a value that starts with '['
            problems.append(f'--force_yml {entry}: cannot read the value {value!r} ({type(error).__name__}: '
                            f'{str(error).splitlines()[0] if str(error) else ""})')
            continue
        node, parts = opt, keys.split(':')
        for depth, key in enumerate(parts[:-1]):
            if not _mapping(node) or key not in node:
                problems.append(f'--force_yml {entry}: {":".join(parts[:depth + 1])} is not in the option file '
                                '(--force_yml changes existing keys only)')
                break
            node = node[key]
        else:
            if not _mapping(node):
                problems.append(f'--force_yml {entry}: {":".join(parts[:-1])} is not a mapping')
            else:
                node[parts[-1]] = value
    return problems


def check_structure(opt, is_train):
    """The keys BasicSR's ``parse_options`` and pipelines index without a default: checked on the raw file, so
    that parsing it cannot fail with a KeyError."""
    problems = []
    if not isinstance(opt.get('name'), str) or not opt.get('name'):
        problems.append('name: required, the experiment name (a string)')
    if 'num_gpu' not in opt:
        problems.append('num_gpu: required (0 for the CPU, auto for every visible GPU)')
    datasets = opt.get('datasets')
    if not _mapping(datasets) or not datasets:
        problems.append('datasets: required, a mapping of phases (train, val_1, test_1, ...) to dataset options')
    else:
        for phase, dataset in datasets.items():
            if not _mapping(dataset):
                problems.append(f'datasets:{phase}: must be a mapping of dataset options, got {dataset!r}')
    path = opt.get('path')
    if not _mapping(path):
        problems.append('path: required, a mapping (pretrain_network_g, strict_load_g, resume_state)')
    else:
        for key, value in path.items():
            if ('resume_state' in key or 'pretrain_network' in key) and value is not None \
                    and not isinstance(value, str):
                problems.append(f'path:{key}: must be a file path or ~, got {value!r}')
    if is_train:
        if not _mapping(opt.get('train')):
            problems.append('train: required by basicsr train (optimizer, scheduler, losses, total_iter)')
        if not _mapping(opt.get('logger')):
            problems.append('logger: required by basicsr train (print_freq, save_checkpoint_freq)')
    elif not _mapping(opt.get('val')):
        problems.append('val: required by basicsr test (save_img, metrics)')
    for key in ('val', 'logger', 'network_g', 'network_d'):
        if key in opt and opt[key] is not None and not _mapping(opt[key]):
            problems.append(f'{key}: must be a mapping, got {opt[key]!r}')
    return problems


# ------------------------------------------------------------------------------------------------- numbers

# YAML 1.2 numbers that YAML 1.1 (PyYAML) leaves as strings: an exponent without a dot or without a sign
_NUMBER = re.compile(r'^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$')
_TEXT_KEYS = ('name', 'type', 'filename_tmpl', 'upsampler', 'resi_connection', 'reduction', 'pattern', 'scope',
              'method', 'prefetch_mode', 'color', 'input_order', 'convert_to', 'backend')


def _yaml11_spelling(text):
    """2e-4 -> 2.0e-4, 1e5 -> 1.0e+5: the same number as YAML 1.1 reads it."""
    mantissa, _, exponent = text.lower().partition('e')
    if '.' not in mantissa:
        mantissa += '.0'
    if exponent and exponent[0] not in '+-':
        exponent = '+' + exponent
    return mantissa + (f'e{exponent}' if exponent else '')


def check_number_strings(opt):
    """Every string in the file that is a number to YAML 1.2 but a string to PyYAML, named by its key path."""
    problems = []

    def visit(value, key):
        if _mapping(value):
            for child, item in value.items():
                if key == '' and child == 'path':
                    continue  # file paths
                name = str(child)
                if name in _TEXT_KEYS or any(w in name for w in ('root', 'path', 'file', 'dir')):
                    continue
                visit(item, f'{key}:{child}' if key else str(child))
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item, key)
        elif isinstance(value, str) and _NUMBER.match(value.strip()):
            text = value.strip()
            if 'e' in text.lower():
                problems.append(f'{key}: YAML 1.1 reads {text} as a string: write {_yaml11_spelling(text)} or '
                                f'!!float {text}')
            else:
                problems.append(f'{key}: {value!r} is a string, not a number: write it without quotes')

    visit(opt, '')
    return problems


def normalize_integers(opt):
    """Iteration counts written as integral floats (``!!float 3e5``), which BasicSR casts with ``int()``, become
    ints in ``opt``, so our own checks and the sparsity block see the count BasicSR uses. Returns the problems
    (a count that is not a whole number)."""
    problems = []
    train = opt.get('train') if _mapping(opt.get('train')) else {}
    scheduler = train.get('scheduler') if _mapping(train.get('scheduler')) else {}
    places = [(train, 'total_iter', 'train'), (train, 'warmup_iter', 'train')]
    for section in ('logger', 'val'):
        if _mapping(opt.get(section)):
            places += [(opt[section], key, section) for key in ('print_freq', 'save_checkpoint_freq', 'val_freq')]
    for node, key, prefix in places:
        value = node.get(key)
        if isinstance(value, float) and math.isfinite(value):
            if value.is_integer():
                node[key] = int(value)
            else:
                problems.append(f'{prefix}:{key} must be a whole number of iterations, got {value!r}')
    for key in ('milestones', 'periods'):
        values = scheduler.get(key)
        if isinstance(values, list) and all(_is_number(v) for v in values):
            if all(float(v).is_integer() for v in values):
                scheduler[key] = [int(v) for v in values]
    return problems


# where BasicSR reads a number (a list of numbers): key -> kind
_TRAIN_NUMBERS = {'total_iter': 'int', 'warmup_iter': 'int', 'ema_decay': 'number'}
_OPTIM_NUMBERS = {'lr': 'number', 'weight_decay': 'number', 'eps': 'number', 'momentum': 'number',
                  'betas': 'numbers', 'alpha': 'number', 'lr_decay': 'number', 'dampening': 'number'}
_LOSS_NUMBERS = {'loss_weight': 'number', 'eps': 'number', 'perceptual_weight': 'number', 'style_weight': 'number',
                 'real_label_val': 'number', 'fake_label_val': 'number'}
_SCHEDULER_NUMBERS = {'gamma': 'number', 'eta_min': 'number', 'restart_weights': 'numbers'}


def check_numbers(opt):
    """The numbers of ``train:`` have the right type (a string here was already reported by the scan)."""
    problems = []
    train = opt.get('train')
    if not _mapping(train):
        return problems

    def check(node, table, prefix):
        for key, kind in table.items():
            if key not in node or node[key] is None or isinstance(node[key], str):
                continue
            value = node[key]
            if kind == 'int' and not _is_int(value) and not isinstance(value, float):  # floats: normalize_integers
                problems.append(f'{prefix}:{key} must be a whole number, got {value!r}')
            elif kind == 'number' and not _is_number(value):
                problems.append(f'{prefix}:{key} must be a number, got {value!r}')
            elif kind == 'numbers' and (not isinstance(value, list) or
                                        not all(_is_number(v) or isinstance(v, str) for v in value)):
                problems.append(f'{prefix}:{key} must be a list of numbers, got {value!r}')

    check(train, _TRAIN_NUMBERS, 'train')
    if _is_number(train.get('ema_decay')) and not 0 <= train['ema_decay'] < 1:
        problems.append(f'train:ema_decay must be in [0, 1) (0: no EMA), got {train["ema_decay"]!r}')
    if _is_int(train.get('total_iter')) and train['total_iter'] < 1:
        problems.append(f'train:total_iter must be >= 1, got {train["total_iter"]}')
    for key, node in train.items():
        if not _mapping(node):
            continue
        if key.startswith('optim_'):
            check(node, _OPTIM_NUMBERS, f'train:{key}')
        elif key.endswith('_opt'):
            check(node, _LOSS_NUMBERS, f'train:{key}')
        elif key == 'scheduler':
            check(node, _SCHEDULER_NUMBERS, 'train:scheduler')
    scheduler = train.get('scheduler')
    if _mapping(scheduler):
        for key in ('milestones', 'periods'):
            if key in scheduler:
                values = scheduler[key]
                if not isinstance(values, list) or not all(_is_int(v) and v >= 0 for v in values):
                    if not (isinstance(values, list) and any(isinstance(v, str) for v in values)):
                        problems.append(f'train:scheduler:{key} must be a list of iteration counts, e.g. '
                                        f'[250000, 400000], got {values!r}')
    return problems


# ------------------------------------------------------------------------------------------------- frequencies


def _at_least(node, key, prefix, minimum, required=True):
    value = node.get(key)
    if value is None:
        return [f'{prefix}:{key} is required (an integer >= {minimum})'] if required else []
    if isinstance(value, str):
        return []  # reported by the number scan when it looks like a number
    if not _is_int(value) or value < minimum:
        return [f'{prefix}:{key} must be an integer >= {minimum}, got {value!r}']
    return []


def check_counts(opt, is_train):
    """num_gpu against the devices present; batch sizes, workers and frequencies."""
    import torch.cuda
    problems = []
    num_gpu = opt.get('num_gpu')
    if not _is_int(num_gpu) or num_gpu < 0:
        problems.append(f'num_gpu must be an integer >= 0 or auto, got {num_gpu!r}')
    elif num_gpu > torch.cuda.device_count():
        present = torch.cuda.device_count()
        problems.append(f'num_gpu: {num_gpu} but {present or "no"} CUDA device{"" if present == 1 else "s"} '
                        f'{"is" if present == 1 else "are"} visible: set num_gpu: {present} (0 for the CPU) or auto')
    for phase, dataset in (opt.get('datasets') or {}).items():
        if not _mapping(dataset) or dataset.get('phase', phase.split('_')[0]) != 'train':
            continue
        problems += _at_least(dataset, 'batch_size_per_gpu', f'datasets:{phase}', 1)
        problems += _at_least(dataset, 'num_worker_per_gpu', f'datasets:{phase}', 0, required=False)
        ratio = dataset.get('dataset_enlarge_ratio')
        if ratio is not None and (not _is_number(ratio) or ratio < 1):
            problems.append(f'datasets:{phase}:dataset_enlarge_ratio must be a number >= 1, got {ratio!r}')
    if is_train:
        logger = opt.get('logger') or {}
        for key in ('print_freq', 'save_checkpoint_freq'):
            problems += _at_least(logger, key, 'logger', 1)
        if _mapping(opt.get('val')):
            problems += _at_least(opt['val'], 'val_freq', 'val', 1)
    return problems


# ------------------------------------------------------------------------------------------------- types


# path keys parse_options sets; make_exp_dirs creates a folder for every other key but these patterns
_GENERATED_PATHS = ('experiments_root', 'models', 'training_states', 'log', 'visualization', 'results_root')
_PATH_KEYS = ('pretrain_network_g', 'strict_load_g', 'param_key_g', 'resume_state', 'pretrain_network_d',
              'strict_load_d', 'param_key_d', 'ignore_resume_networks')


def check_path_keys(opt):
    """``path:`` keys BasicSR does not read: make_exp_dirs would make a folder of each (or fail on ``~``)."""
    problems = []
    for key, value in (opt.get('path') or {}).items():
        if key in _GENERATED_PATHS or any(w in key for w in ('strict_load', 'pretrain_network', 'resume',
                                                            'param_key')):
            continue
        problems.append(f'path:{key} is not read by BasicSR 1.4.2{_suggest(key, _PATH_KEYS)} (make_exp_dirs would '
                        f'create a folder named by its value {value!r}); its keys: {", ".join(_PATH_KEYS)}')
    return problems


def check_phases(opt, is_train):
    problems = []
    phases = [phase for phase in (opt.get('datasets') or {})]
    if is_train:
        if 'train' not in phases:
            problems.append('datasets:train is required by basicsr train')
        for phase in phases:
            if phase != 'train' and phase.split('_')[0] != 'val':
                problems.append(f'datasets:{phase}: basicsr train reads the phases train and val, val_1, ...; '
                                f'not {phase!r}')
    return problems


def check_type_names(opt, is_train):
    """Dataset, io backend, arch, loss and metric types against BasicSR's registries (``_basicsr`` included)."""
    from basicsr.utils.file_client import FileClient
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY
    problems = []
    backends = list(FileClient._backends)
    for phase, dataset in (opt.get('datasets') or {}).items():
        if not _mapping(dataset):
            continue
        if not registered(DATASET_REGISTRY, dataset.get('type')):
            problems.append(_unknown_type(f'datasets:{phase}:type', dataset.get('type'),
                                          known_names(DATASET_REGISTRY), 'BasicSR dataset'))
        backend = dataset.get('io_backend')
        if backend is None:
            problems.append(f'datasets:{phase}:io_backend is required (e.g. io_backend: {{type: disk}})')
        elif not _mapping(backend) or backend.get('type') not in backends:
            name = backend.get('type') if _mapping(backend) else backend
            problems.append(_unknown_type(f'datasets:{phase}:io_backend:type', name, backends, 'BasicSR io backend'))
    for key in ('network_g', 'network_d'):
        net = opt.get(key)
        if _mapping(net) and key != 'network_g' and not registered(ARCH_REGISTRY, net.get('type')):
            problems.append(_unknown_type(f'{key}:type', net.get('type'), known_names(ARCH_REGISTRY),
                                          'registered BasicSR architecture'))
    train = opt.get('train') if is_train and _mapping(opt.get('train')) else {}
    for key, loss in train.items():
        if not key.endswith('_opt') or not _mapping(loss):
            continue
        cls = resolve(LOSS_REGISTRY, loss.get('type'))
        if cls is None:
            problems.append(_unknown_type(f'train:{key}:type', loss.get('type'), known_names(LOSS_REGISTRY),
                                          'BasicSR loss'))
        else:
            problems += _check_arguments(f'train:{key}', cls, {k: v for k, v in loss.items() if k != 'type'})
    metrics = (opt.get('val') or {}).get('metrics') if _mapping(opt.get('val')) else None
    if metrics is not None and not _mapping(metrics):
        problems.append(f'val:metrics must be a mapping of names to metric options, got {metrics!r}')
    for name, metric in (metrics or {}).items():
        if not _mapping(metric):
            problems.append(f'val:metrics:{name} must be a mapping (type, crop_border, ...), got {metric!r}')
            continue
        function = resolve(METRIC_REGISTRY, metric.get('type'))
        if function is None:
            problems.append(_unknown_type(f'val:metrics:{name}:type', metric.get('type'),
                                          known_names(METRIC_REGISTRY), 'BasicSR metric'))
            continue
        given = set(metric) | {'img', 'img2'}
        missing = [p.name for p in inspect.signature(function).parameters.values()
                   if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in given]
        if missing:
            problems.append(f'val:metrics:{name}:{missing[0]} is required by {metric["type"]}')
    if is_train and 'scheduler' not in train and train:
        problems.append('train:scheduler is required (e.g. type: MultiStepLR, milestones: [...], gamma: 0.5)')
    if is_train and train and not train.get('pixel_opt') and not train.get('perceptual_opt') \
            and opt.get('model_type') in ('SRModel', 'ISSPSRModel', 'SwinIRModel'):
        problems.append('train:pixel_opt: a loss is required (e.g. pixel_opt: {type: L1Loss, loss_weight: 1.0})')
    return problems


def _constructor_names(cls):
    """``(names, open)``: the argument names ``cls(...)`` reads, and whether it takes more than it names (its
    ``**kwargs`` are passed on). For a ``**kwargs`` constructor the names it reads from ``kwargs`` count."""
    init = cls.__init__ if inspect.isclass(cls) else cls
    parameters = inspect.signature(init).parameters
    names = [n for n, p in parameters.items() if n != 'self' and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    var_kw = next((n for n, p in parameters.items() if p.kind == p.VAR_KEYWORD), None)
    if var_kw is None:
        return names, False
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    except (OSError, TypeError, SyntaxError):
        return names, True
    followed = set()  # the kwargs Name nodes whose use names a key: kwargs['x'], kwargs.get('x'), kwargs.pop('x')
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == var_kw \
                and isinstance(node.slice, ast.Constant):
            names.append(node.slice.value)
            followed.add(id(node.value))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == var_kw \
                and node.func.attr in ('get', 'pop', 'setdefault') and node.args \
                and isinstance(node.args[0], ast.Constant):
            names.append(node.args[0].value)
            followed.add(id(node.func.value))
    # any other use (passed on as **kwargs, stored, iterated) reads names we cannot list: accept any key
    open_ = any(isinstance(node, ast.Name) and node.id == var_kw and id(node) not in followed
                for node in ast.walk(tree))
    return list(dict.fromkeys(names)), open_


def _check_arguments(prefix, cls, given):
    problems = []
    names, open_ = _constructor_names(cls)
    name = getattr(cls, '__name__', str(cls))
    if not open_:
        for key in given:
            if key not in names:
                problems.append(f'{prefix}:{key} is not an argument of {name}{_suggest(key, names)}; '
                                f'{name} takes: {", ".join(names)}')
    init = cls.__init__ if inspect.isclass(cls) else cls
    for p in inspect.signature(init).parameters.values():
        if p.name != 'self' and p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) \
                and p.name not in given:
            problems.append(f'{prefix}:{p.name} is required by {name}')
    return problems


def check_networks(opt):
    """``network_g``/``network_d`` keys against the constructor; then network_g built once on the CPU (the RNG
    state set aside) so that a bad combination (num_heads not dividing embed_dim, ...) is one line. Returns
    ``(problems, net or None)``."""
    from basicsr.utils.registry import ARCH_REGISTRY
    problems, built = [], None
    for key in ('network_g', 'network_d'):
        net_opt = opt.get(key)
        if not _mapping(net_opt):
            continue
        cls = resolve(ARCH_REGISTRY, net_opt.get('type'))
        if cls is None:
            continue  # reported by check_model / check_type_names
        arguments = _check_arguments(key, cls, {k: v for k, v in net_opt.items() if k != 'type'})
        arguments += _check_heads(key, net_opt)
        problems += arguments
        if key == 'network_g' and _is_int(net_opt.get('upscale')) and _is_int(opt.get('scale')) \
                and net_opt['upscale'] != opt['scale']:
            problems.append(f'network_g:upscale ({net_opt["upscale"]}) differs from scale ({opt["scale"]}), the '
                            'factor of the data: the output would not match the GT images')
        if key == 'network_g' and not arguments:
            kwargs = copy.deepcopy({k: v for k, v in net_opt.items() if k != 'type'})
            try:
                with torch.random.fork_rng(devices=[]):
                    built = cls(**kwargs)
            except FileNotFoundError as error:  # a pretrained part (BasicVSR's SpyNet) that is not on this machine
                problems.append(f'network_g: {net_opt.get("type")} needs {error.filename}, which does not exist')
                continue
            except Exception as error:  # the architecture's own assertion or shape error, as one line
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ''
                problems.append(f'network_g: {net_opt.get("type")} cannot be built from these settings '
                                f'({type(error).__name__}{": " + reason if reason else ""})')
    return problems, built


def _check_heads(key, net_opt):
    """Attention splits the embedding into ``num_heads`` parts (SwinIR and its kind): each count must divide
    ``embed_dim``, else the first forward pass fails (the constructor does not check it)."""
    embed, heads = net_opt.get('embed_dim'), net_opt.get('num_heads')
    heads = [heads] if _is_int(heads) else heads
    if not _is_int(embed) or not isinstance(heads, (list, tuple)):
        return []
    bad = [h for h in heads if not _is_int(h) or h < 1 or embed % h]
    if bad:
        return [f'{key}:num_heads {list(heads)}: every head count must divide {key}:embed_dim ({embed}); '
                f'{bad[0]} does not']
    return []


def _model_class(opt):
    from basicsr.utils.registry import MODEL_REGISTRY
    return resolve(MODEL_REGISTRY, opt.get('model_type'))


def check_optimizers(opt):
    """Every ``train:optim_*`` built by the model class's own ``get_optimizer`` on a dummy parameter, and the
    scheduler by its ``setup_schedulers`` on that optimizer: an unknown type or a bad argument is one line."""
    problems = []
    train = opt.get('train')
    cls = _model_class(opt)
    if not _mapping(train) or cls is None:
        return problems
    optimizers = []
    for key, node in train.items():
        if not key.startswith('optim_') or not _mapping(node):
            continue
        kwargs = copy.deepcopy({k: v for k, v in node.items() if k != 'type'})
        if any(_has_string(v) for v in kwargs.values()):
            continue  # already reported (a number written as a string)
        optimizer, error = _try_optimizer(cls, node.get('type'), kwargs)
        if isinstance(error, NotImplementedError):
            known = [name for name in _optimizer_candidates()
                     if not isinstance(_try_optimizer(cls, name, {'lr': 1e-3})[1], NotImplementedError)]
            problems.append(_unknown_type(f'train:{key}:type', node.get('type'), known,
                                          f'optimizer {cls.__name__}.get_optimizer supports'))
        elif error is not None:
            problems.append(f'train:{key}: {node.get("type")} rejects these settings ({_short(error)})')
        else:
            optimizers.append(optimizer)
    scheduler = train.get('scheduler')
    if _mapping(scheduler) and optimizers and not any(_has_string(v) for k, v in scheduler.items() if k != 'type'):
        error = _try_scheduler(cls, scheduler, optimizers[0])
        if isinstance(error, NotImplementedError):
            known = [name for name in _scheduler_candidates()
                     if not isinstance(_try_scheduler(cls, {'type': name}, optimizers[0]), NotImplementedError)]
            problems.append(_unknown_type('train:scheduler:type', scheduler.get('type'), known,
                                          f'scheduler {cls.__name__}.setup_schedulers supports'))
        elif error is not None:
            problems.append(f'train:scheduler: {scheduler.get("type")} rejects these settings ({_short(error)})')
    return problems


def _has_string(value):
    if isinstance(value, (list, tuple)):
        return any(_has_string(v) for v in value)
    return isinstance(value, str)


def _short(error):
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r'^\w+\.__init__\(\) ', '', text)
    return text


def _try_optimizer(cls, name, kwargs):
    param = torch.nn.Parameter(torch.zeros(1))
    try:
        return cls.get_optimizer(types.SimpleNamespace(), name, [param], **kwargs), None
    except Exception as error:
        return None, error


def _try_scheduler(cls, scheduler, optimizer):
    dummy = types.SimpleNamespace(opt={'train': {'scheduler': copy.deepcopy(scheduler)}}, optimizers=[optimizer],
                                  schedulers=[])
    state = optimizer.state_dict()
    try:
        cls.setup_schedulers(dummy)
    except Exception as error:
        return error
    finally:
        optimizer.load_state_dict(state)
    return None


def _optimizer_candidates():
    return sorted(name for name, obj in vars(torch.optim).items()
                  if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer)
                  and obj is not torch.optim.Optimizer)


def _scheduler_candidates():
    from basicsr.models import lr_scheduler
    names = {name for name, obj in vars(lr_scheduler).items() if inspect.isclass(obj) and name.endswith('LR')}
    names |= {name for name, obj in vars(torch.optim.lr_scheduler).items()
              if inspect.isclass(obj) and name.endswith('LR')}
    return sorted(names)


# ------------------------------------------------------------------------------------------------- data


def check_dataset_files(opt, notes):
    """Roots exist; for PairedImageDataset the LQ/GT lists agree (BasicSR's own path builders) and one pair,
    read with BasicSR's FileClient, has the scale of the file and fits ``gt_size``."""
    from .options import _check_path
    problems = []
    for phase, dataset in (opt.get('datasets') or {}).items():
        if not _mapping(dataset) or not _mapping(dataset.get('io_backend')):
            continue
        lmdb = dataset['io_backend'].get('type') == 'lmdb'
        bad_root = False
        for key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file'):
            if dataset.get(key) is None:
                continue
            if not isinstance(dataset[key], str):
                problems.append(f'datasets:{phase}:{key} must be a path, got {dataset[key]!r}')
                bad_root = True
                continue
            if key == 'meta_info_file' and lmdb:
                notes.append(f'datasets:{phase}:meta_info_file is ignored with io_backend lmdb (BasicSR reads '
                             'the meta_info.txt inside each LMDB)')
                continue
            try:
                _check_path(f'datasets:{phase}:{key}', dataset[key], lmdb and key != 'meta_info_file')
            except OptionError as error:
                problems.append(str(error))
                bad_root = True
        from basicsr.utils.file_client import FileClient
        if not bad_root and dataset.get('type') == 'PairedImageDataset' \
                and dataset['io_backend'].get('type') in FileClient._backends:
            problems += _check_pairs(opt, phase, dataset, lmdb)
    return problems


_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def _check_pairs(opt, phase, dataset, lmdb):
    from basicsr.data.data_util import paired_paths_from_folder, paired_paths_from_lmdb, \
        paired_paths_from_meta_info_file
    prefix = f'datasets:{phase}'
    for key in ('dataroot_gt', 'dataroot_lq'):
        if dataset.get(key) is None:
            return [f'{prefix}:{key} is required by PairedImageDataset']
    if not _is_int(opt.get('scale')) or opt['scale'] < 1:
        return [f'scale: required by PairedImageDataset, an integer >= 1, got {opt.get("scale")!r}']
    scale = opt['scale']
    gt_root, lq_root = dataset['dataroot_gt'], dataset['dataroot_lq']
    template = dataset.get('filename_tmpl', '{}')
    problems = []
    if not lmdb and not dataset.get('meta_info_file'):
        if not os.path.isdir(gt_root) or not os.path.isdir(lq_root):
            return [f'{prefix}: dataroot_gt and dataroot_lq must be folders of images for io_backend disk']
        counts = [sum(1 for n in os.listdir(root) if not n.startswith('.')) for root in (lq_root, gt_root)]
        if counts[0] != counts[1]:
            return [f'{prefix}: dataroot_lq holds {counts[0]} files but dataroot_gt {counts[1]} ({lq_root}, '
                    f'{gt_root}): every GT image needs its LQ image of the same name']
        if counts[1] == 0:
            return [f'{prefix}:dataroot_gt: {gt_root} holds no images']
    try:
        if lmdb:
            paths = paired_paths_from_lmdb([lq_root, gt_root], ['lq', 'gt'])
        elif dataset.get('meta_info_file'):
            paths = paired_paths_from_meta_info_file([lq_root, gt_root], ['lq', 'gt'], dataset['meta_info_file'],
                                                     template)
        else:
            paths = paired_paths_from_folder([lq_root, gt_root], ['lq', 'gt'], template)
    except (AssertionError, ValueError, OSError, IndexError) as error:
        return [f'{prefix}: the LQ and GT images do not pair up ({_short(error)})']
    if not paths:
        return [f'{prefix}: no image pairs found in {gt_root}']
    pair = paths[0]
    try:
        gt, lq = _read_pair(dataset, pair, lmdb)
    except Exception as error:
        return [f'{prefix}: cannot read {pair["gt_path"]} / {pair["lq_path"]} ({_short(error)})']
    (h, w), (lh, lw) = gt.shape[:2], lq.shape[:2]
    if (h, w) != (lh * scale, lw * scale):
        problems.append(f'{prefix}: {pair["gt_path"]} is {h}x{w} but {pair["lq_path"]} is {lh}x{lw}, not scale '
                        f'{scale} (scale: {scale}); set scale to the data\'s factor or point dataroot_lq at the '
                        f'x{scale} images')
    if dataset.get('phase', phase.split('_')[0]) == 'train':
        for key, old in (('use_hflip', 'use_flip'), ('use_rot', None)):
            if key not in dataset:
                hint = f' ({old} is not read by BasicSR 1.4.2: write {key})' if old and old in dataset else ''
                problems.append(f'{prefix}:{key} is required by PairedImageDataset for training (true or '
                                f'false){hint}')
        gt_size = dataset.get('gt_size')
        if isinstance(gt_size, str):
            pass  # reported by the number scan
        elif not _is_int(gt_size) or gt_size < 1:
            problems.append(f'{prefix}:gt_size must be an integer >= 1 (the GT patch size), got {gt_size!r}')
        else:
            if gt_size % scale:
                problems.append(f'{prefix}:gt_size ({gt_size}) must be a multiple of scale ({scale}): e.g. '
                                f'{gt_size - gt_size % scale or scale}')
            if gt_size > min(h, w):
                problems.append(f'{prefix}:gt_size ({gt_size}) is larger than {pair["gt_path"]} ({h}x{w})')
    return problems


def _read_pair(dataset, pair, lmdb):
    from basicsr.utils import FileClient, imfrombytes
    backend = dict(dataset['io_backend'])
    kind = backend.pop('type')
    if lmdb:
        backend['db_paths'] = [dataset['dataroot_lq'], dataset['dataroot_gt']]
        backend['client_keys'] = ['lq', 'gt']
    client = FileClient(kind, **backend)
    gt = imfrombytes(client.get(pair['gt_path'], 'gt'), float32=True)
    lq = imfrombytes(client.get(pair['lq_path'], 'lq'), float32=True)
    if gt is None or lq is None:
        raise ValueError('not an image')
    return gt, lq


# ------------------------------------------------------------------------------------------------- checkpoints


def check_pretrained(opt, is_train, net):
    """``basicsr test`` needs ``path:pretrain_network_g``; a written ``param_key_g`` must be in the checkpoint
    (BasicSR would quietly load ``params`` instead); with ``strict_load_g`` the checkpoint must fit network_g
    (checked on the CPU copy built before). A damaged or foreign file is the line that names the file."""
    from .checkpoint import load_network_state, read_checkpoint, read_network
    problems = []
    path_opt = opt.get('path') or {}
    path = path_opt.get('pretrain_network_g')
    if path is None:
        if not is_train:
            problems.append('path:pretrain_network_g: basicsr test needs the checkpoint to evaluate (e.g. '
                            'experiments/NAME/models/net_g_latest.pth)')
        return problems
    key = path_opt.get('param_key_g', 'params')
    try:
        if 'param_key_g' in path_opt and key is not None:
            saved = read_checkpoint(path, 'network checkpoint')
            if _mapping(saved) and key not in saved:
                entries = [k for k, v in saved.items() if _mapping(v)]
                has = f'it holds {", ".join(entries)}' if entries else 'it is a bare state dict: set param_key_g: ~'
                return [f'path:param_key_g: {path} has no {key!r} entry ({has})']
        state = read_network(path, key)
        if net is not None and path_opt.get('strict_load_g', True):
            load_network_state(net, state, True, path)
    except OptionError as error:
        problems.append(str(error).splitlines()[0])
    except RuntimeError as error:
        problems.append(f'{path}: does not fit network_g ({_short(error)})')
    return problems


# ------------------------------------------------------------------------------------------------- outputs


def check_output_file(flag, path):
    """An output file a command will write: its folder exists and it is not a folder itself (one line naming
    the flag, before any work is done)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OptionError(f'{flag} {path}: is a folder; name the file to write')
    if not os.path.isdir(folder):
        what = 'is not a folder' if os.path.exists(folder) else 'does not exist'
        raise OptionError(f'{flag} {path}: the folder {os.path.dirname(path) or folder} {what} (create it first)')
    if not os.access(folder, os.W_OK):
        raise OptionError(f'{flag} {path}: the folder {folder} is not writable')


def check_output_folder(flag, path):
    """An output folder a command creates or fills: not an existing file, and its parent can be created."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OptionError(f'{flag} {path}: is a file, not a folder; name a folder to write into')
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OptionError(f'{flag} {path}: {parent} is a file, not a folder')
    if not os.access(parent, os.W_OK):
        raise OptionError(f'{flag} {path}: {parent} is not writable')
