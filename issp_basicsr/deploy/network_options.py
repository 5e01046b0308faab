"""Command-line glue: the plain architecture an option file names (``network_g``), built with BasicSR's registry.

The only deploy module that imports BasicSR; the format (``compressed``), sparse execution (``sparse_modules``)
and counting (``efficiency``) modules work on any ``nn.Module``.
"""
import os

import torch
import yaml

from ..errors import OptionError


def read_options(path):
    """The option file as a dict (BasicSR's YAML loader); one-line errors naming the file."""
    from basicsr.utils.options import ordered_yaml
    if not os.path.isfile(path):
        raise OptionError(f'-opt: {path} does not exist')
    with open(path) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    if not isinstance(opt, dict) or not isinstance(opt.get('network_g'), dict):
        raise OptionError(f'{path}: network_g is missing (not a BasicSR option file)')
    return opt


def build_network(opt, path='the option file'):
    """``network_g`` of ``opt``, built on the CPU from BasicSR's ARCH_REGISTRY, in eval mode."""
    from basicsr.utils.registry import ARCH_REGISTRY
    net_opt = dict(opt['network_g'])
    net_type = net_opt.pop('type', None)
    if net_type not in ARCH_REGISTRY:
        raise OptionError(f'network_g:type: {net_type!r} is not a registered BasicSR architecture ({path})')
    try:
        return ARCH_REGISTRY.get(net_type)(**net_opt).eval()
    except TypeError as error:
        raise OptionError(f'network_g: {error} ({path})') from None


def checkpoint_path(opt, given, path='the option file'):
    """``-i`` when given, else ``path:pretrain_network_g`` of the option file."""
    checkpoint = given or (opt.get('path') or {}).get('pretrain_network_g')
    if not checkpoint:
        raise OptionError(f'path:pretrain_network_g is not set in {path}; pass -i CHECKPOINT')
    return checkpoint


def param_key(opt, given):
    return given or (opt.get('path') or {}).get('param_key_g') or 'params'


def window_multiple(net):
    """The size the input must be a multiple of (SwinIR's window), 1 for convolutional networks."""
    sizes = [m.window_size for m in net.modules() if isinstance(getattr(m, 'window_size', None), int)]
    return max(sizes, default=1)


def example_input(net, height, width, in_channels=None):
    """A fixed random LR input (seed 0) padded up to the architecture's window multiple."""
    multiple = window_multiple(net)
    height, width = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    if in_channels is None:
        first = next((m for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
        in_channels = first.in_channels if first is not None else 3
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, in_channels, height, width, generator=generator)
