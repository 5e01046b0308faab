"""Selection variants beyond per-layer unstructured magnitude: one global threshold, N:M layouts, random scores.

:class:`RankedLayers` has the surface of ``selection.LayerGroup`` (``names``, ``params``, ``selected``,
``select()``, ``shrink()``, ``zero_selected()``), so the sparsifier treats both alike. It ranks int64 keys
``(bits of the score << 32) | position`` like ``LayerGroup``, so counts are exact and ties deterministic; two
additions give the variants:

* ``scope='global'``: every layer of the unit is one row, ranked against one threshold, so the total count is
  exact and the per-layer counts follow the magnitudes;
* ``nm=(N, M)``: scores are laid out with the input-channel dimension last (Linear ``[out, in]`` as is, Conv2d
  ``[out, in, kh, kw]`` as ``[out, kh, kw, in]``), so every M consecutive keys are one group; the N smallest keys
  of each group are set to -1 and so are always selected, and the rest of the count goes by magnitude.
"""
from fnmatch import fnmatchcase

import torch

from ..errors import SparsityConfigError
from .config import pruned_count
from .layers import ancestors
from .selection import BITS_DTYPE, group_layers


def layer_overrides(names, config, model_name='the model'):
    """Per layer, the ratio of the first ``ratios`` pattern (in written order) that matches its name or the name
    of a module containing it, or None. A pattern that matches no pruned layer is an error (a typo would
    otherwise leave a layer at the wrong ratio without a word)."""
    def matches(pattern, name):
        return any(fnmatchcase(part, pattern) for part in ancestors(name))

    for pattern, _ in config.ratios:
        if not any(matches(pattern, name) for name in names):
            raise SparsityConfigError(f'ratios pattern {pattern!r} matches no pruned layer of {model_name}', 'ratios')
    return [next((r for p, r in config.ratios if matches(p, name)), None) for name in names]


def check_nm(names, params, nm, layout='input'):
    """Every layer pruned N:M needs an input size (dim 1 of its weight), or with ``nm_layout: flat`` a size, that
    is a multiple of M."""
    n, m = nm
    for name, param in zip(names, params):
        if layout == 'flat':
            if param.numel() % m:
                raise SparsityConfigError(f'pattern {n}:{m} (nm_layout flat): layer {name} has {param.numel()} '
                                          f'weights, not a multiple of {m} (add it to exclude)', 'pattern')
        elif param.dim() < 2 or param.shape[1] % m:
            size = param.shape[1] if param.dim() >= 2 else param.numel()
            raise SparsityConfigError(f'pattern {n}:{m}: layer {name} has input size {size}, not a multiple of {m} '
                                      '(add it to exclude)', 'pattern')


def per_layer_counts(names, params, config, overrides):
    """(per layer, how many weights are pruned: ``ceil(ratio_i * n_i)`` but at least one weight kept; the names
    of the layers that cap kept from being removed whole). The reference code caps at int(0.995 n) instead."""
    counts, capped = [], []
    for name, ratio, param in zip(names, overrides, params):
        count = pruned_count(config.ratio if ratio is None else ratio, param.numel())
        if count >= param.numel():
            count = param.numel() - 1
            capped.append(name)
        counts.append(count)
    return counts, capped


def grouped(tensor):
    """A view of a weight-shaped tensor with the input-channel dimension last (no copy)."""
    if tensor.dim() <= 2:
        return tensor
    return tensor.permute(0, *range(2, tensor.dim()), 1)


def _is_identity_layout(shape):
    return len(shape) <= 2 or all(s == 1 for s in shape[2:])


class RankedLayers:
    """Layers ranked together: per row (``scope='layer'``, layers of equal size, ``k`` each) or against one
    threshold (``scope='global'``, ``k`` in total), optionally under an N:M constraint.

    ``selected`` is a list of per-layer flat bool views (True = unimportant / pruned) into ``flat_selected``.
    Buffers are allocated once; :meth:`select` only writes into them.
    """

    def __init__(self, names, params, k, scope='layer', nm=None, layout='input'):
        first = params[0]
        self.names = list(names)
        self.params = list(params)
        self.shapes = [tuple(p.shape) for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.k = k
        self.scope = scope
        self.nm = nm
        if first.dtype not in BITS_DTYPE:
            raise TypeError(f'cannot prune {self.names[0]}: weights of dtype {first.dtype} are not supported '
                            '(float32, float16 or bfloat16 expected)')
        for name, param in zip(self.names, self.params):
            if param.dtype != first.dtype or param.device != first.device:
                raise SparsityConfigError(f'scope global needs every pruned layer on one device with one dtype: '
                                          f'{name} is {param.dtype} on {param.device}, {self.names[0]} is '
                                          f'{first.dtype} on {first.device}', 'scope')
        if scope == 'layer' and len(set(self.sizes)) != 1:
            raise ValueError('RankedLayers with scope layer needs layers of equal size')
        total = sum(self.sizes)
        if total >= 2**32:
            raise ValueError('too many weights to rank in one unit (positions need 32 bits)')
        self.rows = len(self.params) if scope == 'layer' else 1
        self.numel = self.sizes[0] if scope == 'layer' else total
        device = first.device
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.values = torch.empty(total, dtype=first.dtype, device=device)
        self.keys = torch.empty(total, dtype=torch.int64, device=device)
        self.position = torch.arange(self.numel, dtype=torch.int64, device=device)
        self.flat_selected = torch.zeros(total, dtype=torch.bool, device=device)
        self.selected = self._segments(self.flat_selected)
        self.kth = torch.empty(self.rows, 1, dtype=torch.int64, device=device)
        self.kth_index = torch.empty(self.rows, 1, dtype=torch.int64, device=device)
        # N:M: keys and selection are computed in the grouped layout; layers whose layout differs get copied back
        self.permuted = [nm is not None and layout == 'input' and not _is_identity_layout(s) for s in self.shapes]
        self.grouped_shapes = [grouped(torch.empty(s, device='meta')).shape if p else s
                               for s, p in zip(self.shapes, self.permuted)]
        self.grouped_selected = (torch.zeros_like(self.flat_selected) if any(self.permuted) else self.flat_selected)
        self.factors = torch.empty_like(self.values) if any(self.permuted) else self.values
        self.only_forced = nm is not None and k * nm[1] == self.numel * nm[0]
        if nm is not None:
            groups = total // nm[1]
            self.group_values = torch.empty(groups, nm[0], dtype=torch.int64, device=device)
            self.group_index = torch.empty(groups, nm[0], dtype=torch.int64, device=device)

    def _segments(self, flat):
        return [flat[o:o + n] for o, n in zip(self.offsets, self.sizes)]

    def _grouped_segments(self, flat):
        """Per layer, the segment of ``flat`` viewed in the grouped layout's shape."""
        return [segment.view(shape) for segment, shape in zip(self._segments(flat), self.grouped_shapes)]

    def weights(self):
        """Detached views of the live weights (taken each time: ``module.to()`` may have replaced them)."""
        return [p.detach() for p in self.params]

    def num_pruned(self):
        return self.k * self.rows

    def select(self, scores=None):
        """Mark the unimportant weights: the smallest ``scores`` (default: |w|), exactly ``k`` per row."""
        sources = self.weights() if scores is None else list(scores)
        for view, source, permuted in zip(self._grouped_segments(self.values), sources, self.permuted):
            view.copy_(grouped(source) if permuted else source)
        self.values.abs_()
        keys = self.keys
        keys.copy_(self.values.view(BITS_DTYPE[self.values.dtype]))
        keys.bitwise_left_shift_(32)
        keys.view(self.rows, -1).bitwise_or_(self.position)
        if self.nm is not None:
            n, m = self.nm
            by_group = keys.view(-1, m)
            torch.topk(by_group, n, dim=1, largest=False, sorted=False, out=(self.group_values, self.group_index))
            by_group.scatter_(1, self.group_index, -1)
        if self.only_forced:  # ratio == N/M: the forced weights are the whole selection
            torch.eq(keys, -1, out=self.grouped_selected)
        else:
            torch.kthvalue(keys.view(self.rows, -1), self.k, dim=1, keepdim=True, out=(self.kth, self.kth_index))
            torch.le(keys.view(self.rows, -1), self.kth, out=self.grouped_selected.view(self.rows, -1))
        if self.grouped_selected is not self.flat_selected:
            for target, source, shape, permuted in zip(self.selected, self._grouped_segments(self.grouped_selected),
                                                       self.shapes, self.permuted):
                if permuted:
                    grouped(target.view(shape)).copy_(source)
                else:
                    target.copy_(source.reshape(-1))

    def shrink(self, factor):
        """Multiply the unimportant weights by ``factor``; the rest is untouched."""
        self.factors.fill_(1).masked_fill_(self.flat_selected, factor)
        weights = self.weights()
        torch._foreach_mul_(weights, [f.view_as(w) for f, w in zip(self._segments(self.factors), weights)])

    def zero_selected(self, params=None):
        """Set the selected weights of ``params`` (default: the live weights) to exactly 0."""
        weights = self.weights() if params is None else [p.detach() for p in params]
        for weight, pruned in zip(weights, self.selected):
            weight.masked_fill_(pruned.view_as(weight), 0)


def build_units(names, params, config, model_name='the model', counts=None, random=False):
    """The selection units for ``config``'s scope, pattern and ratios.

    Per-layer unstructured magnitude selection uses ``selection.group_layers`` (``LayerGroup``); every other
    variant uses :class:`RankedLayers`. ``counts`` fixes the per-layer counts (``scratch`` copies them from the
    magnitude selection); ``random`` asks for units that rank given scores (all of them ``RankedLayers``).
    Returns ``(units, names of the layers whose count was capped to keep one weight)``.
    """
    nm, layout = config.nm, config.nm_layout
    if nm is not None:
        check_nm(names, params, nm, layout)
    overrides = layer_overrides(names, config, model_name)
    units, per_layer, capped = [], [], []
    if counts is not None:
        per_layer = list(range(len(names)))
    elif config.scope == 'global':
        shared = [i for i, r in enumerate(overrides) if r is None]
        per_layer = [i for i, r in enumerate(overrides) if r is not None]
        if shared:
            total = sum(params[i].numel() for i in shared)
            units.append(RankedLayers([names[i] for i in shared], [params[i] for i in shared],
                                      pruned_count(config.ratio, total), 'global', nm, layout))
    else:
        per_layer = list(range(len(names)))
    if counts is None:
        counts, capped = per_layer_counts(names, params, config, overrides)
        capped = [name for i, name in enumerate(names) if name in capped and i in per_layer]
    if nm is None and not random:
        units += group_layers([(names[i], params[i]) for i in per_layer], [counts[i] for i in per_layer])
        return units, capped
    buckets = {}
    for i in per_layer:
        key = (params[i].numel(), counts[i], params[i].dtype, params[i].device)
        buckets.setdefault(key, []).append(i)
    for (_, k, _, _), members in buckets.items():
        units.append(RankedLayers([names[i] for i in members], [params[i] for i in members], k, 'layer', nm, layout))
    return units, capped
