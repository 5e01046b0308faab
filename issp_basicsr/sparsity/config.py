"""The ``train: sparsity:`` option block: its keys, their defaults and their validation.

The keys are a public contract shared by the YAML block and :func:`build_sparsifier`, so both go through
:meth:`SparsityConfig.from_dict`, which rejects anything it does not know with a message naming the key.
"""
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Optional, Tuple

OPTION_PREFIX = 'train:sparsity'

# method -> keys that only make sense for it (every other key is shared by all methods)
METHOD_KEYS = {
    'issp': ('alpha', ),
    'iht': (),
}
SHARED_KEYS = ('method', 'ratio', 'prune_iter', 'interval', 'exclude', 'hold_lr_during_pruning')


class SparsityConfigError(ValueError):
    """A bad value in the sparsity block; the message names the key."""


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _open_unit(key, value):
    if not _is_number(value) or not 0 < value < 1:
        raise SparsityConfigError(f'{OPTION_PREFIX}:{key} must be a number with 0 < {key} < 1, got {value!r}')
    return float(value)


def _positive_int(key, value):
    if not _is_int(value) or value < 1:
        raise SparsityConfigError(f'{OPTION_PREFIX}:{key} must be an integer >= 1, got {value!r}')
    return value


def pruned_count(ratio, numel):
    """ceil(ratio * numel), computed on the decimal the user wrote (0.95 * 7200 is 6840, not 6841)."""
    return min(numel, math.ceil(Fraction(repr(float(ratio))) * numel))


@dataclass(frozen=True)
class SparsityConfig:
    method: str = 'issp'
    ratio: float = 0.95
    alpha: float = 0.95
    prune_iter: int = 100000
    interval: int = 1
    exclude: Tuple[str, ...] = field(default_factory=tuple)
    hold_lr_during_pruning: bool = False

    @classmethod
    def from_dict(cls, block: Optional[dict], total_iter: Optional[int] = None) -> 'SparsityConfig':
        """Validate a sparsity block (a dict as read from YAML) and return the config it describes."""
        if block is None:
            block = {}
        if not isinstance(block, dict):
            raise SparsityConfigError(f'{OPTION_PREFIX} must be a mapping of keys to values, got {block!r}')
        block = dict(block)
        method = block.get('method', cls.method)
        if method not in METHOD_KEYS:
            raise SparsityConfigError(f'{OPTION_PREFIX}:method must be one of {", ".join(METHOD_KEYS)}, got {method!r}')
        all_method_keys = {k for keys in METHOD_KEYS.values() for k in keys}
        for key in block:
            if key not in SHARED_KEYS and key not in all_method_keys:
                raise SparsityConfigError(f'{OPTION_PREFIX}:{key} is not a known key (known: '
                                          f'{", ".join(SHARED_KEYS + tuple(sorted(all_method_keys)))})')
            if key in all_method_keys and key not in METHOD_KEYS[method]:
                raise SparsityConfigError(f'{OPTION_PREFIX}:{key} does not apply to method {method!r}')

        values = {'method': method}
        if 'ratio' in block:
            values['ratio'] = _open_unit('ratio', block['ratio'])
        if 'alpha' in block:
            values['alpha'] = _open_unit('alpha', block['alpha'])
        if 'prune_iter' in block:
            values['prune_iter'] = _positive_int('prune_iter', block['prune_iter'])
        if 'interval' in block:
            values['interval'] = _positive_int('interval', block['interval'])
        if 'exclude' in block:
            exclude = block['exclude'] if block['exclude'] is not None else []
            if isinstance(exclude, str) or not all(isinstance(p, str) and p for p in exclude):
                raise SparsityConfigError(f'{OPTION_PREFIX}:exclude must be a list of module-name patterns, '
                                          f'got {block["exclude"]!r}')
            values['exclude'] = tuple(exclude)
        if 'hold_lr_during_pruning' in block:
            if not isinstance(block['hold_lr_during_pruning'], bool):
                raise SparsityConfigError(f'{OPTION_PREFIX}:hold_lr_during_pruning must be true or false, '
                                          f'got {block["hold_lr_during_pruning"]!r}')
            values['hold_lr_during_pruning'] = block['hold_lr_during_pruning']
        config = cls(**values)
        if total_iter is not None and config.prune_iter > total_iter:
            raise SparsityConfigError(f'{OPTION_PREFIX}:prune_iter ({config.prune_iter}) is past '
                                      f'train:total_iter ({total_iter})')
        return config

    @property
    def shrink_factor(self) -> float:
        """What an unimportant weight is multiplied by at a shrink step: alpha (soft) or 0 (hard)."""
        return self.alpha if self.method == 'issp' else 0.0

    def to_dict(self) -> dict:
        values = asdict(self)
        values['exclude'] = list(self.exclude)
        return values
