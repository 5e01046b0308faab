"""The ``train: sparsity:`` option block: its keys, their defaults and their validation.

The keys are a public contract shared by the YAML block and :func:`build_sparsifier`, so both go through
:meth:`SparsityConfig.from_dict`, which rejects anything it does not know with a message naming the key.

Every method gets the same stage keys (``prune_iter``, ``hold_lr_during_pruning``), so that all runs of a
comparison share one learning-rate schedule; the selection keys are shared by every method that prunes, and a
few keys belong to one method only (``METHOD_KEYS``). A key that does not apply to the chosen method is an error.
"""
import math
import re
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Optional, Tuple

from ..errors import SparsityConfigError

OPTION_PREFIX = 'train:sparsity'

# keys every method accepts: the stage boundary, so that every method of a comparison has the same LR schedule
COMMON_KEYS = ('method', 'prune_iter', 'hold_lr_during_pruning')
# keys every pruning method accepts: how many weights are removed, where, and in which layout
SELECTION_KEYS = ('ratio', 'exclude', 'scope', 'pattern', 'ratios')
_REG_KEYS = ('reg_step', 'reg_interval', 'reg_max')

# method -> the keys it accepts beyond COMMON_KEYS
METHOD_KEYS = {
    'issp': SELECTION_KEYS + ('alpha', 'interval'),
    'iht': SELECTION_KEYS + ('interval', ),
    'issr': SELECTION_KEYS + ('interval', ) + _REG_KEYS,
    'greg': SELECTION_KEYS + _REG_KEYS,
    'l1': SELECTION_KEYS,
    'scratch': SELECTION_KEYS + ('seed', ),
    'dense': (),
}
# kept for callers of the first version: keys not tied to one method
SHARED_KEYS = COMMON_KEYS + SELECTION_KEYS + ('interval', )
ALL_KEYS = COMMON_KEYS + tuple(sorted({k for keys in METHOD_KEYS.values() for k in keys}))

SCOPES = ('layer', 'global')
_NM = re.compile(r'^\s*(\d+)\s*:\s*(\d+)\s*$')


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


def _positive_number(key, value):
    if not _is_number(value) or not 0 < value < math.inf:
        raise SparsityConfigError(f'{OPTION_PREFIX}:{key} must be a number > 0, got {value!r}')
    return float(value)


def pruned_count(ratio, numel):
    """ceil(ratio * numel), computed on the decimal the user wrote (0.95 * 7200 is 6840, not 6841)."""
    return min(numel, math.ceil(Fraction(repr(float(ratio))) * numel))


def parse_pattern(value):
    """``'unstructured'`` -> None; ``'N:M'`` -> (N, M) with 1 <= N < M."""
    if value == 'unstructured':
        return None
    match = _NM.match(value) if isinstance(value, str) else None
    if match is None:
        hint = ''
        if _is_int(value):  # YAML 1.1 reads an unquoted 2:4 as the base-60 number 124
            hint = ' (quote it: YAML reads an unquoted N:M as a base-60 number)'
        raise SparsityConfigError(f'{OPTION_PREFIX}:pattern must be unstructured or "N:M" with 1 <= N < M, '
                                  f'got {value!r}{hint}')
    n, m = int(match.group(1)), int(match.group(2))
    if not 1 <= n < m:
        raise SparsityConfigError(f'{OPTION_PREFIX}:pattern must be unstructured or "N:M" with 1 <= N < M, '
                                  f'got {value!r}')
    return n, m


@dataclass(frozen=True)
class SparsityConfig:
    method: str = 'issp'
    ratio: float = 0.95
    alpha: float = 0.95
    prune_iter: int = 100000
    interval: int = 1
    exclude: Tuple[str, ...] = field(default_factory=tuple)
    hold_lr_during_pruning: bool = False
    scope: str = 'layer'
    pattern: str = 'unstructured'
    ratios: Tuple[Tuple[str, float], ...] = field(default_factory=tuple)
    reg_step: float = 1e-4
    reg_interval: int = 20
    reg_max: float = 0.5
    seed: Optional[int] = None

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
        for key in block:
            if key not in ALL_KEYS:
                raise SparsityConfigError(f'{OPTION_PREFIX}:{key} is not a known key (known: {", ".join(ALL_KEYS)})')
            if key not in COMMON_KEYS and key not in METHOD_KEYS[method]:
                raise SparsityConfigError(f'{OPTION_PREFIX}:{key} does not apply to method {method!r}')

        values = {'method': method}
        for key in ('ratio', 'alpha'):
            if key in block:
                values[key] = _open_unit(key, block[key])
        for key in ('prune_iter', 'interval', 'reg_interval'):
            if key in block:
                values[key] = _positive_int(key, block[key])
        for key in ('reg_step', 'reg_max'):
            if key in block:
                values[key] = _positive_number(key, block[key])
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
        if 'scope' in block:
            if block['scope'] not in SCOPES:
                raise SparsityConfigError(f'{OPTION_PREFIX}:scope must be layer or global, got {block["scope"]!r}')
            values['scope'] = block['scope']
        if 'pattern' in block:
            nm = parse_pattern(block['pattern'])
            values['pattern'] = 'unstructured' if nm is None else f'{nm[0]}:{nm[1]}'
        if 'ratios' in block:
            ratios = block['ratios'] if block['ratios'] is not None else {}
            if not isinstance(ratios, dict) or not all(isinstance(p, str) and p for p in ratios):
                raise SparsityConfigError(f'{OPTION_PREFIX}:ratios must be a mapping of module-name patterns to '
                                          f'ratios, got {block["ratios"]!r}')
            values['ratios'] = tuple((p, _open_unit(f'ratios:{p}', r)) for p, r in ratios.items())
        if 'seed' in block and block['seed'] is not None:
            if not _is_int(block['seed']) or block['seed'] < 0:
                raise SparsityConfigError(f'{OPTION_PREFIX}:seed must be an integer >= 0, got {block["seed"]!r}')
            values['seed'] = block['seed']
        config = cls(**values)
        config._check_combinations(total_iter)
        return config

    def _check_combinations(self, total_iter):
        # dense prunes nothing: its prune_iter (default 100000) matters only to hold the LR through a "stage"
        stage = self.prunes or self.hold_lr_during_pruning
        if stage and total_iter is not None and self.prune_iter > total_iter:
            raise SparsityConfigError(f'{OPTION_PREFIX}:prune_iter ({self.prune_iter}) is past '
                                      f'train:total_iter ({total_iter})')
        if self.reg_max < self.reg_step:
            raise SparsityConfigError(f'{OPTION_PREFIX}:reg_max ({self.reg_max}) is below reg_step ({self.reg_step})')
        if self.nm is not None:
            n, m = self.nm
            for key, ratio in (('ratio', self.ratio), ) + tuple((f'ratios:{p}', r) for p, r in self.ratios):
                if Fraction(repr(ratio)) < Fraction(n, m):
                    raise SparsityConfigError(f'{OPTION_PREFIX}:{key} ({ratio}) is below the {n}/{m} that pattern '
                                              f'{self.pattern} removes at least')

    @property
    def nm(self) -> Optional[Tuple[int, int]]:
        """(N, M) for an N:M pattern, None for unstructured."""
        return parse_pattern(self.pattern)

    @property
    def prunes(self) -> bool:
        """False for ``dense``: the reference run with the same model class and schedule, and no pruning."""
        return self.method != 'dense'

    @property
    def shrink_factor(self) -> Optional[float]:
        """What an unimportant weight is multiplied by at a shrink step: alpha (ISS-P), 0 (IHT), None (others)."""
        return {'issp': self.alpha, 'iht': 0.0}.get(self.method)

    def penalty_at(self, current_iter: int) -> float:
        """The L2 coefficient of ``issr``/``greg`` at an iteration: reg_step more every reg_interval, up to reg_max."""
        return min(self.reg_max, self.reg_step * (current_iter // self.reg_interval))

    def to_dict(self) -> dict:
        values = asdict(self)
        values['exclude'] = list(self.exclude)
        values['ratios'] = dict(self.ratios)
        return values
