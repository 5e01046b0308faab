"""Channel granularity: coupled channel groups found by Torch-Pruning's dependency graph, and a selection unit.

A *coupled group* is the set of weight slices that must go together when one channel is removed: the output rows
of the layer that produces it and of every layer added to it (a residual stream), and the input columns of every
layer that reads it (through concatenations, too). Torch-Pruning's ``DependencyGraph`` finds them by tracing one
forward pass; we only read its groups. In EDSR/RCAN every block's residual stream is one group across the body.

Kept whole (listed at start): groups whose channels feed a PixelShuffle/PixelUnshuffle (the channel order there
means space), reach the network output, contain a layer named by ``exclude``, or pass through an operation that
mixes channels in a way removal would change (LayerNorm, reshapes/permutes into heads, matrix products,
grouped convolutions). What is left is removable exactly: zeroing a channel's rows and columns and removing the
channel give the same output (``deploy/slim.py`` checks it on every export).

:class:`ChannelGroups` has the ``SelectionUnit`` surface, so the sparsifier treats it like a ``LayerGroup``: its
``selected`` are per-layer weight-shaped masks that are whole rows (output channels) and whole columns (input
channels). Importance of a channel = the sum of squares of all its weights in every coupled layer (the L2 norm,
squared: same order). ``torch_pruning`` is imported only here, so ``import issp_basicsr.sparsity`` does not need it.
"""
import logging
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import List, Optional

import torch
from torch import nn

from ..errors import SparsityConfigError
from .config import pruned_count
from .layers import ancestors
from .selection import BITS_DTYPE

_LARGEST_KEY = torch.iinfo(torch.int64).max
# grad_fn names (Torch-Pruning's element-wise fallback) that mix or reorder channels
_MIXING = ('PixelShuffle', 'PixelUnshuffle', 'Permute', 'Transpose', 'View', 'Reshape', 'Softmax', 'Mm', 'Matmul',
           'Norm', 'Unfold', 'Fold', 'Roll', 'Gather', 'Index', 'Select', 'Stack', 'Unsqueeze', 'Squeeze')
_PER_CHANNEL = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.PReLU)


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:  # pragma: no cover - it is in install_requires
        raise SparsityConfigError('granularity channel needs torch-pruning (pip install torch-pruning==1.6.1)',
                                  'granularity') from None
    return torch_pruning


@dataclass
class Member:
    """One weight slice of a coupled group: ``layer``'s dim ``dim`` (0 = output rows, 1 = input columns) at
    ``layer_index``; ``root_index`` is the group channel each of them belongs to."""
    layer: str
    dim: int
    layer_index: List[int]
    root_index: List[int]


@dataclass
class CoupledGroup:
    root: str  # the layer whose output channels define the group (Torch-Pruning's root)
    channels: int
    members: List[Member]
    others: List[str] = field(default_factory=list)  # non-weight nodes (norms, element-wise ops), for the record
    kept: Optional[str] = None  # why the group is kept whole, None when it is pruned

    @property
    def layers(self):
        return sorted({m.layer for m in self.members})

    @property
    def producers(self):
        """The layers whose output channels these are (a layer that only reads them does not name the group)."""
        return sorted({m.layer for m in self.members if m.dim == 0})

    def describe(self):
        rows = [m.layer for m in self.members if m.dim == 0]
        cols = [m.layer for m in self.members if m.dim == 1]
        return f'{self.root}: {self.channels} channels, out of {len(rows)} layers, into {len(cols)} layers'


def default_example_input(model, size=16):
    """A small input for tracing: the first Conv2d's (or Linear's) input channels, the window multiple."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    channels = 3 if first is None else (first.in_channels if isinstance(first, nn.Conv2d) else first.in_features)
    windows = [m.window_size for m in model.modules() if isinstance(getattr(m, 'window_size', None), int)]
    if windows:
        size = max(windows)
    param = next(model.parameters())
    return torch.rand(1, channels, size, size, device=param.device, dtype=param.dtype)


def dependency_graph(model, example_input=None):
    """Torch-Pruning's dependency graph of ``model``, traced in eval mode (no BatchNorm statistics updated);
    the training flags are restored."""
    tp = _torch_pruning()
    if example_input is None:
        example_input = default_example_input(model)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    finally:
        for module, mode in modes.items():
            module.training = mode
    return graph


def _excluded(name, exclude):
    return any(fnmatchcase(part, pattern) for part in ancestors(name) for pattern in exclude)


def coupled_groups(model, example_input=None, exclude=(), graph=None):
    """All coupled channel groups of ``model`` (rooted at Conv2d/Linear output channels), each with ``kept`` set
    to the reason it is kept whole or None. Returns ``(groups, graph)``."""
    tp = _torch_pruning()
    graph = graph if graph is not None else dependency_graph(model, example_input)
    names = {module: name for name, module in model.named_modules()}
    groups = []
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        root_module = group[0].dep.target.module
        members, others, kept = [], [], None
        for item in group.items:
            dep, idxs = item.dep, list(item.idxs)
            module = dep.target.module
            name = names.get(module)
            if isinstance(module, (nn.Conv2d, nn.Linear)) and name is not None:
                if isinstance(module, nn.Conv2d) and module.groups != 1:
                    kept = kept or f'grouped convolution {name}'
                dim = 0 if graph.is_out_channel_pruning_fn(dep.handler) else 1
                if dim == 0 and not dep.target.outputs:  # nothing reads it: its output is the network's
                    kept = kept or 'reaches the network output'

                members.append(Member(name, dim, [int(i) for i in idxs], [int(i) for i in item.root_idxs]))
                continue
            label = name or repr(module)
            others.append(label)
            if isinstance(module, tp.ops._OutputOp):
                kept = kept or 'reaches the network output'
            elif isinstance(module, tp.ops._ElementWiseOp):
                op = str(module._grad_fn)
                if 'PixelShuffle' in op or 'PixelUnshuffle' in op:
                    kept = kept or 'feeds a PixelShuffle'
                elif any(word in op for word in _MIXING):
                    kept = kept or f'passes through {op}'
            elif isinstance(module, (tp.ops._ConcatOp, tp.ops._SplitOp, tp.ops._ReshapeOp)):
                pass  # index-mapped by Torch-Pruning; a reshape into heads is caught by what follows it
            elif isinstance(module, nn.Module) and not isinstance(module, _PER_CHANNEL):
                kept = kept or f'passes through {type(module).__name__} {label}'
            elif not isinstance(module, nn.Module):
                kept = kept or f'touches the parameter {label}'
        if not members:
            continue
        channels = len(group[0].idxs)
        coupled = CoupledGroup(names[root_module], channels, members, others, kept)
        if coupled.kept is None:
            hit = [layer for layer in coupled.layers if _excluded(layer, exclude)]
            if hit:
                coupled.kept = f'exclude names {hit[0]}'
        groups.append(coupled)
    return groups, graph


def group_ratios(groups, config, model_name='the model'):
    """Per pruned group, the ratio of the first ``ratios`` pattern (written order) that names one of the layers
    producing its channels, else ``ratio``: ``{body.0.conv1: 0.25}`` sets how many of body.0.conv1's output
    channels go, not those of the residual stream it reads. A pattern naming no such layer is an error."""
    def named(pattern, group):
        return any(fnmatchcase(part, pattern) for layer in group.producers for part in ancestors(layer))

    for pattern, _ in config.ratios:
        if not any(named(pattern, g) for g in groups):
            raise SparsityConfigError(f'ratios pattern {pattern!r} names no layer whose output channels are pruned '
                                      f'in {model_name}', 'ratios')
    return [next((r for p, r in config.ratios if named(p, g)), config.ratio) for g in groups]


def _log(lines):
    logger = logging.getLogger('basicsr')
    if logger.handlers:
        for line in lines:
            logger.info(line)
    else:
        for line in lines:
            print(line)


class ChannelGroups:
    """The selection unit of channel granularity: every prunable layer of the model, one mask each.

    Args:
        names, params: the prunable layers (module order) and their weights.
        groups: the pruned coupled groups (``kept`` None); layers outside them keep every weight.
        counts: channels selected per group (``scope: layer``), or None with ``total`` for ``scope: global``.
    """

    def __init__(self, names, params, groups, counts=None, total=None):
        self.names = list(names)
        self.params = list(params)
        self.groups = list(groups)
        index = {name: i for i, name in enumerate(self.names)}
        first = self.params[0]
        device = first.device
        for name, param in zip(self.names, self.params):
            if param.dtype not in BITS_DTYPE or param.device != device:
                raise SparsityConfigError(f'granularity channel needs every pruned layer on one device in float32/'
                                          f'16: {name} is {param.dtype} on {param.device}', 'granularity')
        self.sizes = [p.numel() for p in self.params]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.flat_selected = torch.zeros(sum(self.sizes), dtype=torch.bool, device=device)
        self.selected = [self.flat_selected[o:o + n] for o, n in zip(self.offsets, self.sizes)]
        self.factors = torch.empty(sum(self.sizes), dtype=torch.float32, device=device)
        self.channel_offsets = [sum(g.channels for g in self.groups[:i]) for i in range(len(self.groups))]
        self.total_channels = sum(g.channels for g in self.groups)
        sentinel = self.total_channels  # one extra slot: channels of no pruned group, always kept
        # per layer, for its output rows and input columns, the slot of each channel in the channel vector
        out_slots = [torch.full((p.shape[0], ), sentinel, dtype=torch.int64) for p in self.params]
        in_slots = [torch.full((p.shape[1], ), sentinel, dtype=torch.int64) for p in self.params]
        group_id = torch.empty(self.total_channels, dtype=torch.int64)
        for g, (group, offset) in enumerate(zip(self.groups, self.channel_offsets)):
            group_id[offset:offset + group.channels] = g
            for member in group.members:
                if member.layer not in index:
                    raise SparsityConfigError(f'channel group {group.root} includes {member.layer}, which is not '
                                              'pruned (exclude it whole or not at all)', 'exclude')
                slots = (out_slots if member.dim == 0 else in_slots)[index[member.layer]]
                slots[torch.tensor(member.layer_index)] = offset + torch.tensor(member.root_index)
        self.out_slots = [s.to(device) for s in out_slots]
        self.in_slots = [s.to(device) for s in in_slots]
        self.layer_in_group = [bool((o < sentinel).any() or (i < sentinel).any())
                               for o, i in zip(out_slots, in_slots)]
        self.group_id = group_id.to(device)
        self.importance = torch.zeros(self.total_channels + 1, dtype=torch.float32, device=device)
        self.channel_selected = torch.zeros(self.total_channels + 1, dtype=torch.bool, device=device)
        self.counts = counts
        self.total = total
        self.position = torch.arange(self.total_channels, dtype=torch.int64, device=device)
        self.keys = torch.empty(self.total_channels, dtype=torch.int64, device=device)

    def num_pruned(self):
        """Weights in the current selection (a weight in a chosen row and a chosen column counts once; this syncs,
        the sparsifier reads it at log time only)."""
        return int(self.flat_selected.sum())

    def num_channels(self):
        return sum(self.counts) if self.counts is not None else self.total

    def weights(self):
        return [p.detach() for p in self.params]

    def _importance(self):
        imp = self.importance.zero_()
        for weight, out_slot, in_slot, used in zip(self.weights(), self.out_slots, self.in_slots, self.layer_in_group):
            if not used:
                continue
            square = weight.float().square()
            rows = square.sum(dim=tuple(range(1, square.dim())))
            cols = square.sum(dim=(0, ) + tuple(range(2, square.dim())))
            imp.index_add_(0, out_slot, rows).index_add_(0, in_slot, cols)
        return imp[:self.total_channels]

    def select(self):
        """Choose the least important channels and write the weight masks (rows | columns)."""
        imp = self._importance()
        keys = self.keys
        keys.copy_(imp.view(torch.int32)).bitwise_left_shift_(32).bitwise_or_(self.position)
        chosen = self.channel_selected[:self.total_channels]
        if self.counts is not None:
            for k, offset, group in zip(self.counts, self.channel_offsets, self.groups):
                segment = keys[offset:offset + group.channels]
                if k > 0:
                    kth = torch.kthvalue(segment, k).values
                    torch.le(segment, kth, out=chosen[offset:offset + group.channels])
                else:
                    chosen[offset:offset + group.channels].fill_(False)
        else:
            # the most important channel of every group is never chosen, so no group loses all its channels
            best = torch.full((len(self.groups), ), -1, dtype=torch.int64, device=keys.device)
            best.scatter_reduce_(0, self.group_id, keys, reduce='amax')
            keys.masked_fill_(keys.eq(best[self.group_id]), _LARGEST_KEY)
            kth = torch.kthvalue(keys, self.total).values
            torch.le(keys, kth, out=chosen)
        self._write_masks()

    def _write_masks(self):
        channel = self.channel_selected
        for selected, weight, out_slot, in_slot, used in zip(self.selected, self.params, self.out_slots,
                                                             self.in_slots, self.layer_in_group):
            if not used:
                continue
            shape = (-1, ) + (1, ) * (weight.dim() - 1)
            rows = channel[out_slot].view(shape)
            cols = channel[in_slot].view((1, -1) + (1, ) * (weight.dim() - 2))
            selected.view(weight.shape).copy_(torch.logical_or(rows, cols).expand(weight.shape))

    def shrink(self, factor):
        """Multiply every weight in a chosen row or column by ``factor`` (once, also where both cross)."""
        self.factors.fill_(1).masked_fill_(self.flat_selected, factor)
        weights = self.weights()
        torch._foreach_mul_(weights, [self.factors[o:o + n].view_as(w)
                                      for o, n, w in zip(self.offsets, self.sizes, weights)])

    def zero_selected(self, params=None):
        weights = self.weights() if params is None else [p.detach() for p in params]
        for weight, pruned in zip(weights, self.selected):
            weight.masked_fill_(pruned.view_as(weight), 0)

    def removed_channels(self):
        """Per pruned group (root layer name), the sorted channel indices of the current selection (syncs)."""
        out = {}
        for offset, group in zip(self.channel_offsets, self.groups):
            out[group.root] = self.channel_selected[offset:offset + group.channels].nonzero().view(-1).tolist()
        return out


def build_channel_unit(model, names, params, config, model_name='the model', example_input=None, report=True):
    """The :class:`ChannelGroups` unit for ``config`` (granularity channel); logs the kept-whole groups."""
    groups, _ = coupled_groups(model, example_input, config.exclude)
    pruned = [g for g in groups if g.kept is None]
    if report:
        lines = [f'granularity channel: {len(pruned)} coupled channel groups pruned, {len(groups) - len(pruned)} '
                 'kept whole:']
        lines += [f'  kept whole: {g.describe()} ({g.kept})' for g in groups if g.kept is not None]
        _log(lines)
    if not pruned:
        raise SparsityConfigError(f'granularity channel: no coupled channel group of {model_name} can be pruned',
                                  'granularity')
    ratios = group_ratios(pruned, config, model_name)
    if config.scope == 'global' and not config.ratios:
        total_channels = sum(g.channels for g in pruned)
        total = min(pruned_count(config.ratio, total_channels), total_channels - len(pruned))
        return ChannelGroups(names, params, pruned, total=total)
    if config.scope == 'global':
        raise SparsityConfigError('ratios does not apply with scope global at granularity channel', 'ratios')
    counts = [min(pruned_count(r, g.channels), g.channels - 1) for r, g in zip(ratios, pruned)]
    return ChannelGroups(names, params, pruned, counts=counts)
