"""Checks of a parsed BasicSR option dict that must fail before any directory is made or any training starts.

Each error is one line that names the offending key (``datasets:train:dataroot_gt``) or file.
"""
import os

import torch
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

from .errors import OptionError, SparsityConfigError, keys_under
from .sparsity import SparsityConfig, check_layers

SPARSE_MODELS = ('ISSPSRModel', )
SPARSITY_KEY = 'train:sparsity'  # where the block sits in a BasicSR option file: the prefix of its error messages


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
    for phase, dataset in opt.get('datasets', {}).items():
        lmdb = (dataset.get('io_backend') or {}).get('type') == 'lmdb'
        for key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file'):
            if dataset.get(key) is not None:
                _check_path(f'datasets:{phase}:{key}', dataset[key], lmdb and key != 'meta_info_file')


def check_model(opt):
    model_type = opt.get('model_type')
    if model_type not in MODEL_REGISTRY:
        raise OptionError(f'model_type: {model_type!r} is not a registered BasicSR model')
    net_type = (opt.get('network_g') or {}).get('type')
    if net_type not in ARCH_REGISTRY:
        raise OptionError(f'network_g:type: {net_type!r} is not a registered BasicSR architecture')


def check_sparsity(opt):
    """Validate ``train: sparsity:`` and its exclude patterns against the architecture, built once on the CPU
    with the RNG state set aside, so the real model gets the same initial weights as without this check."""
    train_opt = opt.get('train') or {}
    if opt.get('model_type') not in SPARSE_MODELS:
        if 'sparsity' in train_opt:
            raise OptionError(f'train:sparsity is only read by model_type {" or ".join(SPARSE_MODELS)}, '
                              f'not {opt.get("model_type")}')
        return None
    total_iter = train_opt.get('total_iter')
    if not isinstance(total_iter, int) or isinstance(total_iter, bool) or total_iter < 1:
        raise OptionError(f'train:total_iter must be an integer >= 1, got {total_iter!r}')
    if train_opt.get('sparsity') is None:
        raise SparsityConfigError(f'train:sparsity is required by model_type {opt["model_type"]}')
    with keys_under(SPARSITY_KEY):
        config = SparsityConfig.from_dict(train_opt['sparsity'], total_iter)
        net_opt = dict(opt['network_g'])
        # ARCH_REGISTRY directly, not build_network: its log call would set up BasicSR's logger before the log file.
        with torch.random.fork_rng(devices=[]):
            net = ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)
        check_layers(net, config)
    return config


def validate_options(opt, is_train=True):
    check_model(opt)
    if is_train:
        check_sparsity(opt)
    check_datasets(opt)
