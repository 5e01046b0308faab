"""The sparsifier: a small pruning API (build, pre_step, step, apply masks, statistics, state_dict) for any loop.

Call :meth:`Sparsifier.pre_step` between ``backward()`` and the optimizer step (it only does work for the
regularising methods) and :meth:`Sparsifier.step` after the optimizer step, both with the 1-based iteration.
Every method has the same stage boundary ``prune_iter``; what happens before and at it depends on the method:

=========  ==========================================================  ============================================
method     iterations 1 .. prune_iter - 1 (pruning stage)               at prune_iter, then after every step
=========  ==========================================================  ============================================
issp       every ``interval``: re-select the unimportant set, * alpha   last set -> frozen mask, zeroed; re-applied
iht        every ``interval``: re-select, set to 0                      same
issr       every ``interval``: re-select; every step: L2 penalty on     same
           the set (gradient ``penalty * w``), growing by ``reg_step``
           every ``reg_interval`` up to ``reg_max``
greg       the set chosen at the start stays; the same growing penalty  that set -> frozen mask, zeroed
l1         mask chosen from the weights at the start, zeroed, frozen    re-applied
scratch    random mask with the same per-layer counts, seeded, frozen   re-applied
dense      nothing                                                      nothing
=========  ==========================================================  ============================================

Each method is one definition in ``methods.py``; this class carries out what the definition says. The selection
(how many, where, in which layout) is shared by all methods: ``ratio``, ``ratios`` overrides, ``scope``
layer/global and ``pattern`` unstructured/N:M (see ``patterns.py``).

In a plain PyTorch loop::

    sparsifier = build_sparsifier(model, method='issp', ratio=0.9, prune_iter=1000)
    sparsifier.attach(optimizer)      # pre_step/step run inside optimizer.step(), iterations counted there
    for batch in data: loss(model(batch)).backward(); optimizer.step(); optimizer.zero_grad()
"""
import torch
from torch import nn

from ..errors import SparsityStateError
from .config import SparsityConfig
from .layers import prunable_layers
from .patterns import build_units, check_nm, layer_overrides

STATE_FORMAT = 'issp_basicsr.sparsifier/1'

# keys that must match between a saved state and the options it is resumed with (they decide the masks)
STATE_KEYS = ('method', 'ratio', 'exclude', 'scope', 'pattern', 'nm_layout', 'ratios', 'granularity')


def _rows(group, tensor):
    """Per-layer views of a tensor holding one value per weight of the group, shaped like each weight."""
    flat = tensor.reshape(-1)
    return [row.view_as(p) for row, p in zip(torch.split(flat, [p.numel() for p in group.params]), group.params)]


def check_layers(model: nn.Module, config: SparsityConfig):
    """The checks that need the model's layers (exclude, ratios patterns, N:M input sizes), without building
    any buffer: for option validation before a run starts."""
    if not config.prunes:
        return
    layers = prunable_layers(model, config.exclude)
    names, params = [n for n, _ in layers], [m.weight for _, m in layers]
    if config.granularity == 'channel':
        from .channels import coupled_groups, group_ratios
        groups, _ = coupled_groups(model, exclude=config.exclude)
        group_ratios([g for g in groups if g.kept is None], config, type(model).__name__)
        return
    layer_overrides(names, config, type(model).__name__)
    if config.nm is not None:
        check_nm(names, params, config.nm, config.nm_layout)


class _OptimizerHooks:
    """The two hooks :meth:`Sparsifier.attach` put on an optimizer; ``remove()`` takes both off."""

    def __init__(self, handles):
        self.handles = handles

    def remove(self):
        for handle in self.handles:
            handle.remove()


class Sparsifier:
    """Prunes the Conv2d/Linear weights of one model as ``config.method`` defines.

    Args:
        model: the network whose layers are pruned (the bare module, not a DDP wrapper). Its weights are
            modified in place; their storage may be replaced later (``.to()``), the sparsifier follows.
        config: the validated options (:meth:`SparsityConfig.from_dict`, or :func:`build_sparsifier`).

    Masks: :meth:`masks` is True where a weight is **pruned** (the unimportant set); :meth:`keep_masks` is True
    where a weight is **kept**, the convention of ``torch.ao.pruning`` and NVIDIA's ASP.
    """

    def __init__(self, model: nn.Module, config: SparsityConfig):
        self.config = config
        self.method = config.method_definition
        self.model_name = type(model).__name__
        layers = prunable_layers(model, config.exclude if config.prunes else ())
        self.layer_names = [name for name, _ in layers]
        self.layer_shapes = {name: tuple(module.weight.shape) for name, module in layers}
        self.layer_params = [module.weight for _, module in layers]
        self.frozen = False
        self.last_step = 0
        self.penalty = 0.0
        self._reference = None  # the unimportant set at the last statistics() call, for the change rate
        self._penalty_masks = None
        self.groups = []
        self.capped_layers = []  # layers a ratio would remove whole: one weight is kept (the adapter logs them)
        if not config.prunes:
            return
        method = self.method
        if config.granularity == 'channel':  # whole coupled channel groups (channels.py, needs torch-pruning)
            from .channels import build_channel_unit
            self.groups = [build_channel_unit(model, self.layer_names, self.layer_params, config, self.model_name)]
        elif method.scores == 'random':
            self.groups = self._random_units()
        else:
            self.groups, self.capped_layers = build_units(self.layer_names, self.layer_params, config,
                                                          self.model_name)
        if method.penalty:  # the unimportant set as 0/1 in the weights' dtype, for one fused addcmul
            self._penalty_masks = [torch.zeros(g.flat_selected.shape, dtype=g.params[0].dtype,
                                               device=g.params[0].device) for g in self.groups]
            self._penalty_rows = [_rows(g, mask) for g, mask in zip(self.groups, self._penalty_masks)]
        if method.selects_at_start and method.scores == 'magnitude':
            with torch.no_grad():
                self._select()
        if method.frozen_at_start:
            self.frozen = True
            self.apply_masks()

    @property
    def seed(self) -> int:
        """The seed of a random mask (0 when the block names none and no caller filled it in)."""
        return 0 if self.config.seed is None else self.config.seed

    @torch.no_grad()
    def _random_units(self):
        """Random positions with the per-layer counts the magnitude selection of the same options gives
        (``scope: global`` decides them from the weights the run starts with), drawn from a dedicated CPU
        generator so the mask is the same on every rank and device and the global RNG is left alone."""
        config = self.config
        counts = None
        if config.scope == 'global':
            counts = {}
            for group in build_units(self.layer_names, self.layer_params, config, self.model_name)[0]:
                group.select()
                for name, row in zip(group.names, group.selected):
                    counts[name] = int(row.sum())  # one-off host sync at construction
            counts = [counts[name] for name in self.layer_names]
        units, self.capped_layers = build_units(self.layer_names, self.layer_params, config, self.model_name,
                                                counts=counts, random=True)
        generator = torch.Generator(device='cpu').manual_seed(self.seed)
        scores = {name: torch.rand(shape, generator=generator) for name, shape in self.layer_shapes.items()}
        for unit in units:
            unit.select([scores[name].to(p.device) for name, p in zip(unit.names, unit.params)])
        self._reference = [g.flat_selected.clone() for g in units]
        return units

    # ----------------------------------------------------------------------------------------- the step
    @property
    def phase(self) -> str:
        """``prune`` (before the freeze), ``finetune`` (mask frozen) or ``dense`` (a method that prunes nothing)."""
        if not self.config.prunes:
            return 'dense'
        return 'finetune' if self.frozen else 'prune'

    @torch.no_grad()
    def pre_step(self, current_iter: int):
        """Before the optimizer step of ``current_iter``: for a penalised method (issr, greg), add the gradient of
        the L2 penalty ``penalty/2 * sum(w^2)`` over the unimportant set, i.e. ``grad += penalty * w`` there (with
        plain SGD, a shrink of those weights by ``1 - lr * penalty``). A no-op for the other methods and once
        frozen.

        Args:
            current_iter: the 1-based iteration whose optimizer step follows.
        """
        if self._penalty_masks is None or self.frozen:
            return
        self.penalty = self.config.penalty_at(current_iter)
        if self.penalty == 0:
            return
        grads, weights, masks = [], [], []
        for group, rows in zip(self.groups, self._penalty_rows):
            for param, row in zip(group.params, rows):
                if param.grad is not None:
                    grads.append(param.grad)
                    weights.append(param.detach())
                    masks.append(row)
        if grads:
            torch._foreach_addcmul_(grads, weights, masks, value=self.penalty)

    @torch.no_grad()
    def step(self, current_iter: int):
        """The pruning step of iteration ``current_iter``, right after its optimizer step: re-select and shrink
        (pruning stage, every ``interval``), freeze (at ``prune_iter``), or re-apply the frozen mask (after it).

        Args:
            current_iter: the 1-based iteration whose optimizer step just ran.
        """
        config, method = self.config, self.method
        if self.frozen:
            self.apply_masks()
        elif not config.prunes:
            pass
        elif current_iter >= config.prune_iter:
            if method.reselects:
                self._select()
            self.frozen = True
            self.apply_masks()
        elif method.reselects and current_iter % config.interval == 0:
            self._select()
            factor = config.shrink_factor
            if factor is not None:
                for group in self.groups:
                    group.shrink(factor)
        self.last_step = current_iter

    def attach(self, optimizer: torch.optim.Optimizer, current_iter=None) -> _OptimizerHooks:
        """Run :meth:`pre_step` and :meth:`step` inside every ``optimizer.step()``, as ASP's
        ``init_optimizer_for_pruning`` does, so a plain loop needs no other call.

        Args:
            optimizer: the optimizer of the pruned weights.
            current_iter: a callable returning the loop's 1-based iteration, for loops that do not step the
                optimizer every iteration (GANs); by default every optimizer step is the next iteration,
                counted on from ``last_step`` (so it continues after :meth:`load_state_dict`).

        Returns:
            a handle whose ``remove()`` takes the hooks off again.
        """
        def iteration():
            return current_iter() if current_iter is not None else self.last_step + 1

        pending = []

        def before(*_):
            pending[:] = [iteration()]
            self.pre_step(pending[0])

        def after(*_):
            self.step(pending[0] if pending else iteration())

        return _OptimizerHooks([optimizer.register_step_pre_hook(before), optimizer.register_step_post_hook(after)])

    def _select(self):
        for group in self.groups:
            group.select()
        self._refresh_penalty_masks()
        if self._reference is None:
            self._reference = [group.flat_selected.clone() for group in self.groups]

    def _refresh_penalty_masks(self):
        if self._penalty_masks is not None:
            for group, mask in zip(self.groups, self._penalty_masks):
                mask.copy_(group.flat_selected)

    @torch.no_grad()
    def apply_masks(self, model: nn.Module = None):
        """Zero the pruned weights of the trained model, or of ``model`` (an EMA copy with the same layers).
        Does nothing before the freeze."""
        if not self.frozen:
            return
        for group in self.groups:
            params = None if model is None else [model.get_submodule(name).weight for name in group.names]
            group.zero_selected(params)

    # ---------------------------------------------------------------------------------------- read-outs
    def masks(self) -> dict:
        """``{layer name: bool tensor shaped like its weight}``, **True where a weight is pruned** (before the
        freeze: in the current unimportant set). Views of the live selection: copy them to keep them.
        :meth:`keep_masks` gives the opposite polarity."""
        return {
            name: selected.view(self.layer_shapes[name])
            for group in self.groups for name, selected in zip(group.names, group.selected)
        }

    def keep_masks(self) -> dict:
        """``{layer name: bool tensor shaped like its weight}``, **True where a weight is kept**: the convention of
        ``torch.ao.pruning`` and ASP (a new tensor per layer)."""
        return {name: ~mask for name, mask in self.masks().items()}

    def num_pruned(self) -> int:
        """How many weights the mask removes: the sum over layers of ceil(ratio_i * n_i), or ceil(ratio * total)
        for the layers under one global threshold (0 for ``dense``)."""
        return sum(group.num_pruned() for group in self.groups)

    def num_weights(self) -> int:
        return sum(p.numel() for p in self.layer_params)

    @torch.no_grad()
    def sparsity(self) -> float:
        """Fraction of the pruned layers' weights that are exactly 0 (syncs: for logging, not every step)."""
        zeros = sum(int((p.detach() == 0).sum()) for p in self.layer_params)
        return zeros / self.num_weights()

    @torch.no_grad()
    def statistics(self) -> dict:
        """Sparsity statistics for logging (this syncs: call it at log time, not every step).

        ``sparsity/zeros``: fraction of the pruned layers' weights that are exactly 0.
        ``sparsity/mask_change``: fraction of the unimportant set that changed since the previous call.
        ``sparsity/grad_unimportant`` / ``sparsity/grad_kept``: L2 norm of the last gradient on the unimportant
        and on the kept weights (the paper's trainability curves; for issr/greg it includes the penalty's part).
        ``sparsity/penalty``: the current L2 coefficient (issr, greg).
        ``sparsity/unimportant_abs_mean`` / ``sparsity/unimportant_abs_max``: mean and max |w| over the current
        unimportant set, during the pruning stage only (what soft shrinkage leaves there: the residue that the
        freeze cuts to 0).
        """
        stats = {'sparsity/zeros': self.sparsity()}
        if not self.config.prunes:
            return stats
        changed = 0
        grad_unimportant = torch.zeros((), dtype=torch.float64)
        grad_kept = torch.zeros((), dtype=torch.float64)
        residue_sum = torch.zeros((), dtype=torch.float64)
        residue_max = torch.zeros((), dtype=torch.float64)
        for index, group in enumerate(self.groups):
            for param, selected in zip(group.params, group.selected):
                if not self.frozen:
                    residue = param.detach().reshape(-1).abs().masked_fill(~selected.reshape(-1), 0)
                    residue_sum += residue.sum(dtype=torch.float64).cpu()
                    residue_max = torch.maximum(residue_max, residue.max().double().cpu())
                if param.grad is not None:
                    grad_sq = param.grad.detach().reshape(-1).double().square()
                    unimportant = grad_sq.masked_fill(~selected.reshape(-1), 0).sum().cpu()
                    grad_unimportant += unimportant
                    grad_kept += grad_sq.sum().cpu() - unimportant
            if self._reference is not None:
                current = group.flat_selected
                changed += int((current ^ self._reference[index]).sum()) // 2
                self._reference[index].copy_(current)
        if self._reference is not None:
            stats['sparsity/mask_change'] = changed / max(self.num_pruned(), 1)
        if not self.frozen:
            stats['sparsity/unimportant_abs_mean'] = float(residue_sum) / max(self.num_pruned(), 1)
            stats['sparsity/unimportant_abs_max'] = float(residue_max)
        stats['sparsity/grad_unimportant'] = float(grad_unimportant.sqrt())
        stats['sparsity/grad_kept'] = float(grad_kept.sqrt())
        if self.method.penalty:
            stats['sparsity/penalty'] = self.penalty
        return stats

    # -------------------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Everything a resumed run needs: phase, last step, current selection / frozen mask, penalty, log
        reference (only tensors, numbers and strings, so ``torch.load(weights_only=True)`` reads it)."""
        masks = {name: mask.detach().reshape(-1).cpu().clone() for name, mask in self.masks().items()}
        reference = None
        if self._reference is not None:
            reference = {}
            for group, ref in zip(self.groups, self._reference):
                rows = _rows(group, ref)
                reference.update({name: row.reshape(-1).cpu().clone() for name, row in zip(group.names, rows)})
        return {
            'format': STATE_FORMAT,
            'config': self.config.to_dict(),
            'last_step': self.last_step,
            'frozen': self.frozen,
            'penalty': self.penalty,
            'shapes': {name: list(shape) for name, shape in self.layer_shapes.items()},
            'selected': masks,
            'reference': reference,
        }

    def load_state_dict(self, state: dict):
        """Restore :meth:`state_dict`'s output; the options that decide the masks must be the ones it was saved
        with, and the layers must match (else :class:`SparsityStateError`)."""
        if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
            raise SparsityStateError('not a sparsifier state saved by issp_basicsr')
        saved = state['config']
        current_values, defaults = self.config.to_dict(), SparsityConfig().to_dict()
        keys = STATE_KEYS + (('seed', ) if self.method.scores == 'random' else ())
        for key in keys:
            current = current_values[key]
            before = saved.get(key, defaults[key])
            if key == 'seed':
                current, before = self.seed, 0 if before is None else before
            if before != current:
                raise SparsityStateError(f'{key} is {current!r} but the saved state was trained with {before!r}', key)
        shapes = {name: tuple(shape) for name, shape in state['shapes'].items()}
        if shapes != self.layer_shapes:
            missing = sorted(set(self.layer_shapes) ^ set(shapes))
            wrong = sorted(n for n in set(shapes) & set(self.layer_shapes) if shapes[n] != self.layer_shapes[n])
            detail = f'layers present on one side only: {missing[:5]}' if missing else f'shape differs: {wrong[:5]}'
            raise SparsityStateError(f'saved sparsifier state does not match the model ({detail})')
        for group in self.groups:
            for row, name in zip(group.selected, group.names):
                row.copy_(state['selected'][name].reshape(row.shape))
        self._refresh_penalty_masks()
        if state.get('reference') is not None:
            self._reference = [
                torch.cat([state['reference'][name].reshape(-1) for name in group.names]).view(
                    group.flat_selected.shape).to(group.flat_selected.device) for group in self.groups
            ]
        self.frozen = bool(state['frozen'])
        self.last_step = int(state['last_step'])
        self.penalty = float(state.get('penalty', 0.0))
        self.apply_masks()


def build_sparsifier(model: nn.Module, **block) -> Sparsifier:
    """A sparsifier for ``model`` from the keys of the sparsity block.

    Args:
        model: the network to prune.
        **block: the option keys (``method='issp', ratio=0.9, prune_iter=1000, ...``; see :class:`SparsityConfig`),
            validated as the YAML block is.
    """
    return Sparsifier(model, SparsityConfig.from_dict(block))


__all__ = ['Sparsifier', 'build_sparsifier', 'check_layers']
