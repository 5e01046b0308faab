"""The pruning methods, one definition each, in a registry: what the option check, the sparsifier, the option-file
generator and the comparison benchmark all read.

A method is a record of choices, not code: which keys it takes, what ranks the weights, when the unimportant set
is chosen, what happens to it before and after an optimizer step, and whether the mask is fixed from the start.
:class:`~issp_basicsr.sparsity.sparsifier.Sparsifier` carries the choices out, so a method written here behaves
the same in every training loop. Adding a method means adding one :func:`register_method` call.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# keys every method accepts: the stage boundary, so that every method of a comparison has the same LR schedule
COMMON_KEYS = ('method', 'prune_iter', 'hold_lr_during_pruning')
# keys every pruning method accepts: how many weights are removed, where, and in which layout
SELECTION_KEYS = ('ratio', 'exclude', 'scope', 'pattern', 'nm_layout', 'ratios')
PENALTY_KEYS = ('reg_step', 'reg_interval', 'reg_max')


@dataclass(frozen=True)
class PruningMethod:
    """One pruning method.

    Args:
        name: the value of ``method:`` in the block.
        summary: one line for option files, logs and docs.
        keys: the method's own keys, beyond ``COMMON_KEYS`` and (for a method that prunes) ``SELECTION_KEYS``.
        prunes: False for ``dense``, the reference run that prunes nothing.
        scores: what ranks the weights: ``'magnitude'`` (|w|) or ``'random'`` (a seeded draw).
        choose: when the unimportant set is chosen during the pruning stage: ``'every_interval'`` (re-chosen
            after every ``interval``-th optimizer step) or ``'at_start'`` (once, from the starting weights).
        shrink: ``'alpha'`` multiplies the set by ``alpha`` after each re-selection, ``'zero'`` sets it to 0,
            None leaves the weights alone.
        penalty: before each optimizer step, add the gradient of a growing L2 penalty on the set.
        frozen_at_start: the set is the frozen mask from the first iteration (no pruning stage).
        reinitialize: the network is trained from fresh weights even when a checkpoint was loaded.
        channel: the method has a channel version (it accepts ``granularity``; see ``channels.py``).
        channel_only: the method exists at channel granularity only (``assl``).
    """
    name: str
    summary: str
    keys: Tuple[str, ...] = ()
    prunes: bool = True
    scores: str = 'magnitude'
    choose: str = 'every_interval'
    shrink: Optional[str] = None
    penalty: bool = False
    frozen_at_start: bool = False
    reinitialize: bool = False
    channel: bool = False
    channel_only: bool = False

    @property
    def accepted_keys(self) -> Tuple[str, ...]:
        """Every key the block may hold with this method, in a stable order."""
        return COMMON_KEYS + (SELECTION_KEYS if self.prunes else ()) + self.keys + (
            ('granularity', ) if self.channel else ())

    @property
    def reselects(self) -> bool:
        return self.prunes and not self.frozen_at_start and self.choose == 'every_interval'

    @property
    def selects_at_start(self) -> bool:
        """The set is first chosen when the sparsifier is built, from the weights the run starts with (also for a
        penalty, which needs a set before the first optimizer step)."""
        return self.prunes and (self.choose == 'at_start' or self.penalty)

    def shrink_factor(self, config) -> Optional[float]:
        """What an unimportant weight is multiplied by after a re-selection, or None."""
        return {'alpha': config.alpha, 'zero': 0.0, None: None}[self.shrink]


METHODS: Dict[str, PruningMethod] = {}


def register_method(method: PruningMethod) -> PruningMethod:
    if method.name in METHODS:
        raise KeyError(f'pruning method {method.name!r} is already registered')
    if method.scores not in ('magnitude', 'random') or method.choose not in ('every_interval', 'at_start'):
        raise ValueError(f'pruning method {method.name!r}: scores must be magnitude/random, choose '
                         'every_interval/at_start')
    METHODS[method.name] = method
    return method


def get_method(name: str) -> PruningMethod:
    return METHODS[name]


def all_keys() -> Tuple[str, ...]:
    """Every key some method accepts: COMMON_KEYS first, then the rest sorted."""
    rest = {key for method in METHODS.values() for key in method.accepted_keys} - set(COMMON_KEYS)
    return COMMON_KEYS + tuple(sorted(rest))


register_method(PruningMethod(
    'issp', 'ISS-P: the unimportant set is re-selected and multiplied by alpha every interval; frozen at prune_iter',
    keys=('alpha', 'interval'), shrink='alpha', channel=True))
register_method(PruningMethod(
    'iht', 'IHT: the unimportant set is re-selected and set to 0 every interval; frozen at prune_iter',
    keys=('interval', ), shrink='zero', channel=True))
register_method(PruningMethod(
    'issr', 'ISS-R: re-selected like ISS-P, shrunk by an L2 penalty growing to reg_max; frozen at prune_iter',
    keys=('interval', ) + PENALTY_KEYS, penalty=True))
register_method(PruningMethod(
    'greg', 'SRP-style growing L2 penalty on the set chosen at the start; that set is masked at prune_iter',
    keys=PENALTY_KEYS, choose='at_start', penalty=True))
register_method(PruningMethod(
    'l1', 'L1-norm: one-shot magnitude mask of the starting weights',
    choose='at_start', frozen_at_start=True, channel=True))
register_method(PruningMethod(
    'scratch', 'fixed random mask, same per-layer counts, seed = manual_seed; weights re-initialised',
    keys=('seed', ), scores='random', choose='at_start', frozen_at_start=True, reinitialize=True))
register_method(PruningMethod(
    'dense', 'dense reference: no pruning, same model class and learning-rate schedule', prunes=False, channel=True))
register_method(PruningMethod(
    'assl', 'ASSL/SRP-style (channels only): growing L2 penalty on the least important channels chosen at the start; '
    'masked at prune_iter', keys=PENALTY_KEYS, choose='at_start', penalty=True, channel=True, channel_only=True))
