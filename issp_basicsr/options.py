"""Checks of a parsed BasicSR option dict that must fail before any directory is made or any training starts.

Each error is one line that names the offending key (``datasets:train:dataroot_gt``) or file.
"""
import os

import torch
from basicsr.utils.registry import ARCH_REGISTRY

from .errors import InputError, OptionError, SparsityConfigError, keys_under
from .models.factory import resolve_arch, resolve_model_type
from .models.sparse_model import (SPARSITY_KEY, check_networks_in_options, check_weights_are_parameters,
                                  configs_per_network, network_option_key, split_block)
from .option_checks import (OptionProblems, apply_force_yml, check_counts, check_dataset_files, check_networks,
                            check_number_strings, check_numbers, check_optimizers, check_path_keys,
                            check_phases, check_pretrained,
                            check_structure, check_type_names, normalize_integers, read_option_file)
from .sparsity import SparsityConfig, check_layers, prunable_layers

# model types that require train:sparsity (any other registered type may carry it)
SPARSE_MODELS = ('ISSPSRModel', )


def _check_path(key, path, lmdb):
    if not os.path.exists(path):
        raise OptionError(f'{key}: {path} does not exist')
    if lmdb:
        if not path.endswith('.lmdb'):
            raise OptionError(f'{key}: {path} must be a folder ending in .lmdb for io_backend lmdb')
        for name in ('data.mdb', 'meta_info.txt'):
            if not os.path.isfile(os.path.join(path, name)):
                raise OptionError(f'{key}: {os.path.join(path, name)} is missing (not an LMDB made by BasicSR)')
        _check_lmdb_is_whole(key, path)


def _check_lmdb_is_whole(key, path):
    """Open the LMDB read-only, as BasicSR's reader does, and check it is whole: LMDB maps data.mdb into memory,
    so a file cut short would kill the data loader with a bus error mid-epoch instead of an error message."""
    import lmdb
    data = os.path.join(path, 'data.mdb')
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as error:
        reason = str(error)[len(path) + 2:] if str(error).startswith(f'{path}: ') else str(error)
        raise OptionError(f'{key}: {data} is not a readable LMDB ({reason})') from None
    try:
        needed = (env.info()['last_pgno'] + 1) * env.stat()['psize']  # both read from the meta pages only
        size = os.path.getsize(data)
        if size < needed:
            raise OptionError(f'{key}: {data} is truncated ({size:,} of {needed:,} bytes)')
        with open(os.path.join(path, 'meta_info.txt')) as f:
            listed = sum(1 for line in f if line.strip())
        entries = env.stat()['entries']
        if entries != listed:
            raise OptionError(f'{key}: {data} holds {entries} images but meta_info.txt lists {listed}')
    finally:
        env.close()


def check_datasets(opt):
    """The dataset part of :func:`validate_options` alone: roots, LMDBs, LQ/GT pairs (all problems at once)."""
    problems = check_dataset_files(opt, [])
    if problems:
        raise OptionProblems(problems)


def check_model(opt):
    """``model_type`` and every ``network_*:type`` are registered (installed plugins such as realesrgan are
    imported for a name BasicSR does not know; BasicSR's own ``<name>_basicsr`` copies count, as its registry
    falls back to them)."""
    resolve_model_type(opt.get('model_type'))
    for key in [k for k in opt if k.startswith('network_')] or ['network_g']:
        net_type = (opt.get(key) or {}).get('type')
        if resolve_arch(net_type) is None:
            raise OptionError(f'{key}:type: {net_type!r} is not a registered BasicSR architecture')


# model classes that skip the generator's optimizer step on some iterations (net_d_iters, net_d_init_iters)
_GAN_CLASSES = ('SRGANModel', 'VideoRecurrentGANModel', 'HiFaceGANModel')


def _check_generator_steps(opt, config, networks, total_iter):
    """A GAN class steps optimizer_g only when ``iter % net_d_iters == 0 and iter > net_d_init_iters``; the mask
    of net_g freezes at its first step at or after prune_iter, which must come by total_iter."""
    _, cls = resolve_model_type(opt.get('model_type'))
    if 'net_g' not in networks or not config.prunes or not any(c.__name__ in _GAN_CLASSES for c in cls.__mro__):
        return
    train_opt = opt['train']
    every, after = train_opt.get('net_d_iters', 1), train_opt.get('net_d_init_iters', 0)
    first = max(config.prune_iter, after + 1)
    first = -(-first // every) * every
    if first > total_iter:
        raise SparsityConfigError(f'train:sparsity:prune_iter ({config.prune_iter}): {cls.__name__} steps net_g\'s '
                                  f'optimizer next at iteration {first} (train:net_d_iters {every}, '
                                  f'train:net_d_init_iters {after}), past train:total_iter ({total_iter}), so the '
                                  'mask of net_g would never freeze')


def check_sparsity(opt):
    """Validate ``train: sparsity:`` and its exclude patterns against the architectures it prunes, built once on
    the CPU with the RNG state set aside, so the real model gets the same initial weights as without this check.

    Any registered model type may carry the block (it then trains ``Sparse<model_type>``); the types of
    ``SPARSE_MODELS`` require it. Returns the config, or None for a run without the block."""
    train_opt = opt.get('train') or {}
    model_type = opt.get('model_type')
    required = model_type in SPARSE_MODELS
    if 'sparsity' not in train_opt and not required:
        return None
    total_iter = train_opt.get('total_iter')
    if not isinstance(total_iter, int) or isinstance(total_iter, bool) or total_iter < 1:
        raise OptionError(f'train:total_iter must be an integer >= 1, got {total_iter!r}')
    if train_opt.get('sparsity') is None:
        if required:
            raise SparsityConfigError(f'train:sparsity is required by model_type {model_type}')
        raise SparsityConfigError('train:sparsity is empty: give its keys (at least method), or remove it to train '
                                  'dense')
    networks, block = split_block(train_opt['sparsity'])
    check_networks_in_options(opt, networks)
    with keys_under(SPARSITY_KEY):
        config = SparsityConfig.from_dict(block, total_iter)
    nets = {}
    # ARCH_REGISTRY directly, not build_network: its log call would set up BasicSR's logger before the log file.
    with torch.random.fork_rng(devices=[]):
        for name in networks:
            key = network_option_key(name)
            net_opt = dict(opt[key])
            arch = resolve_arch(net_opt.pop('type', None))
            if arch is None:
                raise OptionError(f'{key}:type: {opt[key].get("type")!r} is not a registered BasicSR architecture')
            try:
                nets[name] = ARCH_REGISTRY.get(arch)(**net_opt)
            except FileNotFoundError as error:  # e.g. a pretrained SpyNet (spynet_path) that is not there
                raise OptionError(f'{key}: {error.filename}: no such file (needed to build {arch})') from None
    for name, net_config in configs_per_network(config, nets).items():
        with keys_under(SPARSITY_KEY):
            check_layers(nets[name], net_config)
        if net_config.prunes:
            pruned = [layer for layer, _ in prunable_layers(nets[name], net_config.exclude)]
            check_weights_are_parameters(name, nets[name], pruned)
    _check_generator_steps(opt, config, networks, total_iter)
    return config


def _first_line(error):
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def check_raw_file(path, force_yml, is_train):
    """Before BasicSR's ``parse_options`` reads the file: it is YAML (else one line with file, line, column),
    the ``--force_yml`` entries apply, and the keys parse_options indexes are there. Raises OptionProblems."""
    opt = read_option_file(path)
    problems = apply_force_yml(opt, force_yml)
    problems += check_structure(opt, is_train)
    if problems:
        raise OptionProblems(problems)
    return opt


def validate_options(opt, is_train=True):
    """Check the whole parsed option dict; raise one :class:`OptionProblems` listing every problem (one line
    each, naming the key), else return the notes to log (settings BasicSR ignores). Iteration counts written as
    integral floats become ints in ``opt``, as BasicSR's ``int()`` reads them."""
    problems, notes = [], []
    problems += normalize_integers(opt)
    problems += check_number_strings(opt)
    problems += check_numbers(opt)
    problems += check_phases(opt, is_train)
    problems += check_path_keys(opt)
    problems += check_counts(opt, is_train)
    model_ok = True
    try:
        check_model(opt)
    except InputError as error:
        problems.append(_first_line(error))
        model_ok = False
    problems += check_type_names(opt, is_train)
    network_problems, net = check_networks(opt) if model_ok else ([], None)
    problems += network_problems
    if is_train and model_ok:
        problems += check_optimizers(opt)
    # the sparsity block is checked against the network, so only once the network and total_iter are sound
    blocked = any(p.startswith(('train:sparsity', 'train:total_iter')) for p in problems)
    if is_train and model_ok and not network_problems and not blocked:
        try:
            check_sparsity(opt)
        except InputError as error:
            problems.append(_first_line(error))
    problems += check_dataset_files(opt, notes)
    if model_ok and not network_problems:
        problems += check_pretrained(opt, is_train, net)
    if problems:
        raise OptionProblems(list(dict.fromkeys(problems)))
    return notes
