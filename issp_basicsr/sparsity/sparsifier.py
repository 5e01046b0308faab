"""The sparsifier: a small pruning API (build, step, apply masks, statistics, state_dict) for any training loop.

Call :meth:`Sparsifier.step` after every optimizer step with the 1-based iteration number:

* iterations ``1 .. prune_iter - 1`` (pruning stage): every ``interval`` iterations, re-select the
  ``ceil(ratio * n)`` smallest weights of each layer and multiply them by alpha (ISS-P) or zero them (IHT);
* iteration ``prune_iter``: the last selection becomes the frozen mask and its weights become exactly 0;
* after it (fine-tuning stage): the frozen mask is applied again, so momentum cannot revive a pruned weight.
"""
import torch
from torch import nn

from .config import OPTION_PREFIX, SparsityConfig, SparsityConfigError, pruned_count
from .layers import prunable_layers
from .selection import group_layers

STATE_FORMAT = 'issp_basicsr.sparsifier/1'


class SparsityStateError(ValueError):
    """A saved sparsifier state that does not fit this model or these options."""


class Sparsifier:

    def __init__(self, model: nn.Module, config: SparsityConfig):
        self.config = config
        layers = prunable_layers(model, config.exclude)
        self.layer_names = [name for name, _ in layers]
        self.layer_shapes = {name: tuple(module.weight.shape) for name, module in layers}
        named_params = [(name, module.weight) for name, module in layers]
        counts = [pruned_count(config.ratio, module.weight.numel()) for _, module in layers]
        self.groups = group_layers(named_params, counts)
        self.frozen = False
        self.last_step = 0
        self._reference = None  # the unimportant set at the last statistics() call, for the change rate

    # ----------------------------------------------------------------------------------------- the step
    @property
    def phase(self) -> str:
        return 'finetune' if self.frozen else 'prune'

    @torch.no_grad()
    def step(self, current_iter: int):
        """Run the pruning step of iteration ``current_iter`` (1-based, called after the optimizer step)."""
        config = self.config
        if self.frozen:
            self.apply_masks()
        elif current_iter >= config.prune_iter:
            self._select()
            self.frozen = True
            self.apply_masks()
        elif current_iter % config.interval == 0:
            self._select()
            factor = config.shrink_factor
            for group in self.groups:
                group.shrink(factor)
        self.last_step = current_iter

    def _select(self):
        for group in self.groups:
            group.select()
        if self._reference is None:
            self._reference = [group.selected.clone() for group in self.groups]

    @torch.no_grad()
    def apply_masks(self, model: nn.Module = None):
        """Zero the pruned weights of the trained model, or of ``model`` (an EMA copy with the same layers)."""
        if not self.frozen:
            return
        for group in self.groups:
            params = None if model is None else [model.get_submodule(name).weight for name in group.names]
            group.zero_selected(params)

    # ---------------------------------------------------------------------------------------- read-outs
    def masks(self) -> dict:
        """``{layer name: bool tensor shaped like its weight}``, True where a weight is unimportant/pruned."""
        return {
            name: selected.view(self.layer_shapes[name])
            for group in self.groups for name, selected in zip(group.names, group.selected)
        }

    def num_pruned(self) -> int:
        """How many weights the frozen mask removes: the sum over layers of ceil(ratio * n)."""
        return sum(group.k * len(group.names) for group in self.groups)

    def num_weights(self) -> int:
        return sum(group.numel * len(group.names) for group in self.groups)

    @torch.no_grad()
    def sparsity(self) -> float:
        """Fraction of the pruned layers' weights that are exactly 0 (syncs: for logging, not every step)."""
        zeros = sum(int((p.detach() == 0).sum()) for group in self.groups for p in group.params)
        return zeros / self.num_weights()

    @torch.no_grad()
    def statistics(self) -> dict:
        """Sparsity statistics for logging (this syncs: call it at log time, not every step).

        ``sparsity/zeros``: fraction of the pruned layers' weights that are exactly 0.
        ``sparsity/mask_change``: fraction of the unimportant set that changed since the previous call.
        ``sparsity/grad_unimportant`` / ``sparsity/grad_kept``: L2 norm of the last gradient on the unimportant
        and on the kept weights (the paper's trainability curves).
        """
        changed = 0
        grad_unimportant = torch.zeros((), dtype=torch.float64)
        grad_kept = torch.zeros((), dtype=torch.float64)
        for index, group in enumerate(self.groups):
            for param, selected in zip(group.params, group.selected):
                if param.grad is not None:
                    grad_sq = param.grad.detach().reshape(-1).double().square()
                    unimportant = grad_sq.masked_fill(~selected, 0).sum().cpu()
                    grad_unimportant += unimportant
                    grad_kept += grad_sq.sum().cpu() - unimportant
            if self._reference is not None:
                changed += int((group.selected ^ self._reference[index]).sum()) // 2
                self._reference[index].copy_(group.selected)
        stats = {'sparsity/zeros': self.sparsity()}
        if self._reference is not None:
            stats['sparsity/mask_change'] = changed / self.num_pruned()
        stats['sparsity/grad_unimportant'] = float(grad_unimportant.sqrt())
        stats['sparsity/grad_kept'] = float(grad_kept.sqrt())
        return stats

    # -------------------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Everything a resumed run needs: phase, last step, current selection / frozen mask, log reference."""
        masks = {name: mask.detach().reshape(-1).cpu().clone() for name, mask in self.masks().items()}
        reference = None
        if self._reference is not None:
            reference = {
                name: row.cpu().clone()
                for group, ref in zip(self.groups, self._reference) for name, row in zip(group.names, ref)
            }
        return {
            'format': STATE_FORMAT,
            'config': self.config.to_dict(),
            'last_step': self.last_step,
            'frozen': self.frozen,
            'shapes': {name: list(shape) for name, shape in self.layer_shapes.items()},
            'selected': masks,
            'reference': reference,
        }

    def load_state_dict(self, state: dict):
        if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
            raise SparsityStateError('not a sparsifier state saved by issp_basicsr')
        saved = state['config']
        for key in ('method', 'ratio', 'exclude'):
            current = getattr(self.config, key)
            current = list(current) if key == 'exclude' else current
            if saved.get(key) != current:
                raise SparsityStateError(f'{OPTION_PREFIX}:{key} is {current!r} but the saved state was trained '
                                         f'with {saved.get(key)!r}')
        shapes = {name: tuple(shape) for name, shape in state['shapes'].items()}
        if shapes != self.layer_shapes:
            missing = sorted(set(self.layer_shapes) ^ set(shapes))
            wrong = sorted(n for n in set(shapes) & set(self.layer_shapes) if shapes[n] != self.layer_shapes[n])
            detail = f'layers present on one side only: {missing[:5]}' if missing else f'shape differs: {wrong[:5]}'
            raise SparsityStateError(f'saved sparsifier state does not match the model ({detail})')
        for group in self.groups:
            for row, name in zip(group.selected, group.names):
                row.copy_(state['selected'][name])
        if state.get('reference') is not None:
            self._reference = [
                torch.stack([state['reference'][name] for name in group.names]).to(group.selected.device)
                for group in self.groups
            ]
        self.frozen = bool(state['frozen'])
        self.last_step = int(state['last_step'])
        self.apply_masks()


def build_sparsifier(model: nn.Module, **block) -> Sparsifier:
    """Build a sparsifier from the keys of the ``train: sparsity:`` block (see :class:`SparsityConfig`)."""
    return Sparsifier(model, SparsityConfig.from_dict(block))


__all__ = ['Sparsifier', 'SparsityStateError', 'SparsityConfigError', 'build_sparsifier']
