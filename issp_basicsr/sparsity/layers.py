"""Which layers are pruned: the weight of every Conv2d and Linear that no exclude pattern names."""
from fnmatch import fnmatchcase

from torch import nn

from ..errors import SparsityConfigError

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def ancestors(name):
    """``'a.b.c'`` -> ``['a', 'a.b', 'a.b.c']``: a pattern naming any of them names the module."""
    parts = name.split('.')
    return ['.'.join(parts[:i]) for i in range(1, len(parts) + 1)]


def prunable_layers(model: nn.Module, exclude=()):
    """Return ``[(name, module)]`` of the layers to prune, in module order.

    A layer is left dense when a pattern matches its name or the name of a module containing it, so
    ``exclude: [upsample]`` keeps a whole upsampler dense. A pattern that names no module at all is an error:
    it is almost always a typo, and a silently dense layer skews every comparison.
    """
    names = [name for name, _ in model.named_modules() if name]
    for pattern in exclude:
        if not any(fnmatchcase(name, pattern) for name in names):
            raise SparsityConfigError(f'exclude pattern {pattern!r} matches no module of {type(model).__name__}',
                                      'exclude')
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES) or module.weight is None:
            continue
        if any(fnmatchcase(part, pattern) for part in ancestors(name) for pattern in exclude):
            continue
        layers.append((name, module))
    if not layers:
        raise SparsityConfigError(f'exclude leaves no Conv2d or Linear layer of {type(model).__name__} to prune',
                                  'exclude')
    return layers
