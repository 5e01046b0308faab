"""The sparsity options: their keys, their defaults and their validation.

The keys are a public contract shared by BasicSR's ``train: sparsity:`` block and :func:`build_sparsifier`, so
both go through :meth:`SparsityConfig.from_dict`, which rejects anything it does not know with a message that
starts with the key (``ratio must be ...``); the BasicSR adapter puts ``train:sparsity:`` in front.

Which keys a method takes comes from its definition in ``methods.py``: every method gets the stage keys
(``prune_iter``, ``hold_lr_during_pruning``), so that all runs of a comparison share one learning-rate schedule;
every pruning method the selection keys; a few keys belong to some methods only. A key that does not apply to
the chosen method is an error.
"""
import math
import re
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Optional, Tuple

from ..errors import SparsityConfigError
from .methods import METHODS, PruningMethod, all_keys, get_method

SCOPES = ('layer', 'global')
NM_LAYOUTS = ('input', 'flat')
GRANULARITIES = ('weight', 'channel')
_NM = re.compile(r'^\s*(\d+)\s*:\s*(\d+)\s*$')


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _open_unit(key, value):
    if not _is_number(value) or not 0 < value < 1:
        raise SparsityConfigError(f'{key} must be a number with 0 < {key} < 1, got {value!r}', key)
    return float(value)


def _positive_int(key, value):
    if not _is_int(value) or value < 1:
        raise SparsityConfigError(f'{key} must be an integer >= 1, got {value!r}', key)
    return value


def _positive_number(key, value):
    if not _is_number(value) or not 0 < value < math.inf:
        raise SparsityConfigError(f'{key} must be a number > 0, got {value!r}', key)
    return float(value)


def pruned_count(ratio, numel):
    """ceil(ratio * numel), computed on the decimal the user wrote (0.95 * 7200 is 6840, not 6841)."""
    return min(numel, math.ceil(Fraction(repr(float(ratio))) * numel))


def parse_pattern(value):
    """``'unstructured'`` -> None; ``'N:M'`` -> (N, M) with 1 <= N < M."""
    if value == 'unstructured':
        return None
    match = _NM.match(value) if isinstance(value, str) else None
    expected = f'pattern must be unstructured or "N:M" with 1 <= N < M, got {value!r}'
    if match is None:
        hint = ''
        if _is_int(value):  # YAML 1.1 reads an unquoted 2:4 as the base-60 number 124
            hint = ' (quote it: YAML reads an unquoted N:M as a base-60 number)'
        raise SparsityConfigError(expected + hint, 'pattern')
    n, m = int(match.group(1)), int(match.group(2))
    if not 1 <= n < m:
        raise SparsityConfigError(expected, 'pattern')
    return n, m


@dataclass(frozen=True)
class SparsityConfig:
    """The validated sparsity options (see the docs' key reference for each key's meaning).

    Args:
        method: a name registered in ``methods.py`` (issp, iht, issr, greg, l1, scratch, dense).
        ratio: fraction of each pruned layer's weights removed, 0 < ratio < 1 (``ceil(ratio * n)`` per layer).
        alpha: issp's shrink factor for the unimportant weights, 0 < alpha < 1.
        prune_iter: K_p, the 1-based iteration at which the mask freezes.
        interval: re-select (and shrink) every ``interval`` iterations of the pruning stage.
        exclude: fnmatch patterns of module names left dense.
        hold_lr_during_pruning: the learning rate is held until ``prune_iter``; the training loop applies it
            (the BasicSR adapter does; a plain loop asks :meth:`lr_held`).
        scope: ``layer`` (a count per layer) or ``global`` (one threshold over all layers).
        pattern: ``unstructured`` or ``"N:M"`` (at least N of every M consecutive weights).
        nm_layout: where an N:M group's M weights lie: ``input`` (along the input channels, the sparse tensor
            core layout) or ``flat`` (consecutive in the flattened weight, the reference code's ``min_19:20``).
        ratios: ``((pattern, ratio), ...)`` per-layer overrides of ``ratio``, first match wins.
        reg_step, reg_interval, reg_max: the growing L2 penalty of issr/greg.
        seed: scratch's mask seed (None: the caller fills it in, 0 if none does).
        granularity: ``weight`` (single weights) or ``channel`` (whole coupled channel groups, ``channels.py``).
    """
    method: str = 'issp'
    ratio: float = 0.95
    alpha: float = 0.95
    prune_iter: int = 100000
    interval: int = 1
    exclude: Tuple[str, ...] = field(default_factory=tuple)
    hold_lr_during_pruning: bool = False
    scope: str = 'layer'
    pattern: str = 'unstructured'
    nm_layout: str = 'input'
    ratios: Tuple[Tuple[str, float], ...] = field(default_factory=tuple)
    reg_step: float = 1e-4
    reg_interval: int = 20
    reg_max: float = 0.5
    seed: Optional[int] = None
    granularity: str = 'weight'

    @classmethod
    def from_dict(cls, block: Optional[dict], total_iter: Optional[int] = None) -> 'SparsityConfig':
        """Validate a sparsity block (a dict as read from YAML) and return the config it describes.

        Args:
            block: the keys and values; None or ``{}`` gives the defaults.
            total_iter: the run's length, when known, so that a ``prune_iter`` past it is refused.
        """
        if block is None:
            block = {}
        if not isinstance(block, dict):
            raise SparsityConfigError(f'the sparsity options must be a mapping of keys to values, got {block!r}')
        block = dict(block)
        method = block.get('method', cls.method)
        if method not in METHODS:
            raise SparsityConfigError(f'method must be one of {", ".join(METHODS)}, got {method!r}', 'method')
        accepted = get_method(method).accepted_keys
        for key in block:
            if key not in all_keys():
                raise SparsityConfigError(f'{key} is not a known key (known: {", ".join(all_keys())})', key)
            if key not in accepted:
                raise SparsityConfigError(f'{key} does not apply to method {method!r}', key)

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
                raise SparsityConfigError(f'exclude must be a list of module-name patterns, got {block["exclude"]!r}',
                                          'exclude')
            values['exclude'] = tuple(exclude)
        if 'hold_lr_during_pruning' in block:
            if not isinstance(block['hold_lr_during_pruning'], bool):
                raise SparsityConfigError('hold_lr_during_pruning must be true or false, got '
                                          f'{block["hold_lr_during_pruning"]!r}', 'hold_lr_during_pruning')
            values['hold_lr_during_pruning'] = block['hold_lr_during_pruning']
        if 'scope' in block:
            if block['scope'] not in SCOPES:
                raise SparsityConfigError(f'scope must be layer or global, got {block["scope"]!r}', 'scope')
            values['scope'] = block['scope']
        if 'pattern' in block:
            nm = parse_pattern(block['pattern'])
            values['pattern'] = 'unstructured' if nm is None else f'{nm[0]}:{nm[1]}'
        if 'nm_layout' in block:
            if block['nm_layout'] not in NM_LAYOUTS:
                raise SparsityConfigError(f'nm_layout must be input or flat, got {block["nm_layout"]!r}', 'nm_layout')
            if values.get('pattern', cls.pattern) == 'unstructured':
                raise SparsityConfigError('nm_layout applies to an N:M pattern only (pattern is unstructured)',
                                          'nm_layout')
            values['nm_layout'] = block['nm_layout']
        if 'ratios' in block:
            ratios = block['ratios'] if block['ratios'] is not None else {}
            if not isinstance(ratios, dict) or not all(isinstance(p, str) and p for p in ratios):
                raise SparsityConfigError('ratios must be a mapping of module-name patterns to ratios, got '
                                          f'{block["ratios"]!r}', 'ratios')
            values['ratios'] = tuple((p, _open_unit(f'ratios:{p}', r)) for p, r in ratios.items())
        if 'seed' in block and block['seed'] is not None:
            if not _is_int(block['seed']) or block['seed'] < 0:
                raise SparsityConfigError(f'seed must be an integer >= 0, got {block["seed"]!r}', 'seed')
            values['seed'] = block['seed']
        if 'granularity' in block:
            if block['granularity'] not in GRANULARITIES:
                raise SparsityConfigError(f'granularity must be weight or channel, got {block["granularity"]!r}',
                                          'granularity')
            values['granularity'] = block['granularity']
        definition = get_method(method)
        if definition.channel_only and values.get('granularity') != 'channel':
            raise SparsityConfigError(f'granularity must be channel for method {method!r} (it prunes whole '
                                      'channels only)', 'granularity')
        if values.get('granularity') == 'channel' and 'pattern' in block:
            raise SparsityConfigError(f'pattern ({block["pattern"]!r}) does not apply to granularity channel (a '
                                      'channel is removed whole)', 'pattern')
        config = cls(**values)
        config._check_combinations(total_iter)
        return config

    def _check_combinations(self, total_iter):
        # dense prunes nothing: its prune_iter (default 100000) matters only to hold the LR through a "stage"
        stage = self.prunes or self.hold_lr_during_pruning
        if stage and total_iter is not None and self.prune_iter > total_iter:
            raise SparsityConfigError(f'prune_iter ({self.prune_iter}) is past the total_iter ({total_iter}) of '
                                      'the run', 'prune_iter')
        if self.reg_max < self.reg_step:
            raise SparsityConfigError(f'reg_max ({self.reg_max}) is below reg_step ({self.reg_step})', 'reg_max')
        if self.nm is not None:
            n, m = self.nm
            for key, ratio in (('ratio', self.ratio), ) + tuple((f'ratios:{p}', r) for p, r in self.ratios):
                if Fraction(repr(ratio)) < Fraction(n, m):
                    raise SparsityConfigError(f'{key} ({ratio}) is below the {n}/{m} that pattern {self.pattern} '
                                              'removes at least', key)

    @property
    def method_definition(self) -> PruningMethod:
        """The registered definition of ``method``."""
        return get_method(self.method)

    @property
    def nm(self) -> Optional[Tuple[int, int]]:
        """(N, M) for an N:M pattern, None for unstructured."""
        return parse_pattern(self.pattern)

    @property
    def prunes(self) -> bool:
        """False for ``dense``: the reference run with the same model class and schedule, and no pruning."""
        return self.method_definition.prunes

    @property
    def shrink_factor(self) -> Optional[float]:
        """What an unimportant weight is multiplied by at a shrink step: alpha (ISS-P), 0 (IHT), None (others)."""
        return self.method_definition.shrink_factor(self)

    def lr_held(self, current_iter: int) -> bool:
        """Whether the learning-rate schedule waits at ``current_iter`` (``hold_lr_during_pruning``: until
        ``prune_iter``, so the scheduler's milestones count from there)."""
        return self.hold_lr_during_pruning and current_iter <= self.prune_iter

    def penalty_at(self, current_iter: int) -> float:
        """The L2 coefficient of ``issr``/``greg`` at an iteration: reg_step more every reg_interval, up to reg_max."""
        return min(self.reg_max, self.reg_step * (current_iter // self.reg_interval))

    def to_dict(self) -> dict:
        values = asdict(self)
        values['exclude'] = list(self.exclude)
        values['ratios'] = dict(self.ratios)
        return values
