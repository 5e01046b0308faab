"""Exact per-layer selection of the unimportant set, batched over layers of the same size.

The unimportant set of a layer is its ``k`` weights of smallest magnitude, ties broken by position (the lower
flat index counts as smaller). Both ways below yield exactly that set, so the result never depends on the path
taken, the device, the run or the DDP rank, and nothing is random.

* Exact ranking (any device, no host sync): an int64 key per weight, ``(bits of |w| << 32) | position``
  (for non-negative floats the bit pattern orders like the value; the position makes keys distinct), one
  ``kthvalue`` per stacked group of layers, then ``keys <= kth``.
* Threshold check (CPU tensors only, from the second selection on): under soft shrinkage the unimportant set
  barely changes between iterations and a gap opens between it and the kept weights, so one threshold ``t``
  per layer inside that gap separates them. If exactly ``k`` magnitudes are ``< t``, they are strictly smaller
  than all the others, hence exactly the ``k`` smallest whatever the ties: one count proves the selection.
  Layers whose count is not ``k`` are ranked exactly. Branching on the counts reads them on the host, which
  is free for CPU tensors but would be a sync on a GPU, so CUDA (any non-CPU) tensors always rank exactly.

A layer's threshold is a guess (a bad one costs a re-rank, never a wrong selection): the midpoint between
``below``, the largest selected magnitude at its last exact ranking times every shrink factor applied since,
and ``above``, the smallest kept magnitude at that ranking.

Magnitudes are compared as integers (bit patterns with the sign cleared): that is the order the keys use,
it makes a NaN rank above +inf on both paths, and integer ops are several times faster than float
comparisons producing booleans on a CPU.
"""
from typing import List, Protocol

import torch

# weight dtype -> same-size integer dtype (magnitudes and shrink factors are handled as bit patterns)
BITS_DTYPE = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
_POSITION_BITS = 32
_LARGEST_KEY = torch.iinfo(torch.int64).max


class SelectionUnit(Protocol):
    """What the sparsifier needs of a set of layers ranked together (``LayerGroup`` here, ``RankedLayers`` in
    ``patterns.py``): all its buffers are allocated once, a step only writes into them."""
    names: List[str]
    params: List[torch.Tensor]
    selected: object  # per layer, a flat bool view of its unimportant set (True = unimportant / pruned)
    flat_selected: torch.Tensor  # the whole selection as one bool tensor (``selected`` are views into it)

    def select(self) -> None:
        """Re-choose the unimportant set from the live weights."""

    def shrink(self, factor: float) -> None:
        """Multiply the unimportant weights by ``factor``; the rest is untouched."""

    def zero_selected(self, params=None) -> None:
        """Set the selected weights of ``params`` (default: the live weights) to exactly 0."""

    def num_pruned(self) -> int:
        """How many weights the selection holds (fixed at construction)."""


class LayerGroup:
    """Layers with the same size, dtype and device, stacked into one buffer so one op ranks them all.

    ``selected`` holds the current unimportant set (True = unimportant); after the freeze it is the mask of
    pruned weights. All full-size buffers are allocated once; a step only writes into them.
    """

    def __init__(self, names, params, k):
        first = params[0]
        self.names = list(names)
        self.params = list(params)
        self.numel = first.numel()
        self.k = k
        rows, device = len(self.params), first.device
        if first.dtype not in BITS_DTYPE:
            raise TypeError(f'cannot prune {self.names[0]}: weights of dtype {first.dtype} are not supported '
                            '(float32, float16 or bfloat16 expected)')
        bits_dtype = BITS_DTYPE[first.dtype]
        self._bits_dtype = bits_dtype
        self._sign_shift = torch.iinfo(bits_dtype).bits - 1
        self._magnitude_mask = torch.iinfo(bits_dtype).max  # every bit but the sign
        # |w| of every layer, one row each; shrink() reuses it for float32 weights' factors
        self.values = torch.empty(rows, self.numel, dtype=first.dtype, device=device)
        self.keys = torch.empty(rows, self.numel, dtype=torch.int64, device=device)
        self.position = torch.arange(self.numel, dtype=torch.int64, device=device)
        self.selected = torch.zeros(rows, self.numel, dtype=torch.bool, device=device)
        self.kth = torch.empty(rows, 1, dtype=torch.int64, device=device)
        self.kth_index = torch.empty(rows, 1, dtype=torch.int64, device=device)
        self._value_bits = self.values.view(bits_dtype)
        # shrink factors: float32 even for half weights, so w * factor rounds once, as ``w * alpha`` does
        self._factors = self.values if first.dtype == torch.float32 else torch.empty(
            rows, self.numel, dtype=torch.float32, device=device)
        self._factor_rows = [row.view_as(p) for row, p in zip(self._factors, self.params)]
        self._factor_bits = {}
        self._weights_key = None
        # threshold check (CPU only, see the module docstring); its scratch is the first half of keys
        self.incremental = device.type == 'cpu' and 0 < k < self.numel
        self.has_threshold = False
        self.below = torch.zeros(rows, 1, dtype=torch.float32, device=device)
        self.above = torch.zeros(rows, 1, dtype=torch.float32, device=device)
        self.midpoint = torch.zeros(rows, 1, dtype=torch.float32, device=device)
        self.threshold = torch.zeros(rows, 1, dtype=first.dtype, device=device)
        self.count = torch.zeros(rows, dtype=torch.int32, device=device)
        self._minus_k = torch.full((rows, ), -k, dtype=torch.int32, device=device)
        self._below_threshold = self.keys.view(-1).view(bits_dtype)[:rows * self.numel].view(rows, self.numel)
        # layer selections settled by the threshold check / ranked exactly (read by the benchmark)
        self.checked_rows = 0
        self.ranked_rows = 0

    @property
    def flat_selected(self):
        return self.selected.view(-1)

    def num_pruned(self):
        return self.k * len(self.params)

    def weights(self):
        """Detached views of the live weights (taken each time: ``module.to()`` may have replaced them)."""
        return [p.detach() for p in self.params]

    def _live(self):
        """(weights, flat views to stack), cached while no parameter got new storage (``.to()``, ``.data =``).

        A cached view keeps the old storage alive, so an unchanged data_ptr means unchanged storage.
        """
        key = tuple(p.data_ptr() for p in self.params)
        if key != self._weights_key:
            weights = self.weights()
            contiguous = all(w.is_contiguous() for w in weights)
            flat = [w.view(-1) for w in weights] if contiguous else None
            self._weights_key, self._weights, self._flat = (key if contiguous else None), weights, flat
        flat = self._flat if self._flat is not None else [w.reshape(-1) for w in self._weights]
        return self._weights, flat

    def select(self):
        """Mark the k weights of smallest magnitude in each layer as unimportant."""
        if self.k <= 0 or self.k >= self.numel:
            self.selected.fill_(self.k > 0)
            return
        torch.stack(self._live()[1], out=self.values)
        self._value_bits.bitwise_and_(self._magnitude_mask)
        if self.incremental and self.has_threshold:
            self._select_below_threshold()
        else:
            self._rank(None)

    def _select_below_threshold(self):
        """Take ``|w| < t`` in every layer where that is exactly k weights; rank the other layers exactly."""
        torch.add(self.below, self.above, out=self.midpoint).mul_(0.5)
        threshold_bits = self.threshold.copy_(self.midpoint).view(self._bits_dtype)
        threshold_bits.bitwise_and_(self._magnitude_mask)  # both sides in [0, max]: the difference cannot wrap
        # sign of bits(|w|) - bits(t), shifted down: -1 where |w| < t, else 0
        below = torch.sub(self._value_bits, threshold_bits, out=self._below_threshold)
        below.bitwise_right_shift_(self._sign_shift)
        self.selected.copy_(below)
        torch.sum(below, dim=1, dtype=torch.int32, out=self.count)  # minus the number below t
        if torch.equal(self.count, self._minus_k):
            self.checked_rows += len(self.params)
            return
        wrong = self.count.ne(-self.k)
        failed = int(wrong.sum())
        self.checked_rows += len(self.params) - failed
        if failed * 2 > len(self.params):
            self._rank(None)
        elif failed:
            self._rank(wrong.nonzero().view(-1))

    def _rank(self, rows):
        """Exact ranking by (|w|, position) of every layer (rows None) or of the layers at index tensor rows."""
        if rows is None:
            count = len(self.params)
            values, keys, selected = self.values, self.keys, self.selected
        else:
            count = rows.numel()
            values, keys = self.values.index_select(0, rows), self.keys[:count]
            selected = torch.empty_like(self.selected[:count])
        self.ranked_rows += count
        kth = self.kth[:count]
        keys.copy_(values.view(self._bits_dtype))
        keys.bitwise_left_shift_(_POSITION_BITS).bitwise_or_(self.position)
        torch.kthvalue(keys, self.k, dim=1, keepdim=True, out=(kth, self.kth_index[:count]))
        torch.le(keys, kth, out=selected)
        if rows is not None:
            self.selected.index_copy_(0, rows, selected)
        if self.incremental:
            below = self._magnitude(kth)
            above = self._magnitude(keys.masked_fill_(selected, _LARGEST_KEY).amin(dim=1, keepdim=True))
            if rows is None:
                self.below.copy_(below)
                self.above.copy_(above)
            else:
                self.below.index_copy_(0, rows, below)
                self.above.index_copy_(0, rows, above)
            self.has_threshold = True

    def _magnitude(self, keys):
        """The magnitudes (as float32) that keys were built from."""
        bits = keys.bitwise_right_shift(_POSITION_BITS).to(self._bits_dtype)
        return bits.view(self.values.dtype).float()

    def shrink(self, factor):
        """Multiply the unimportant weights by ``factor`` (alpha for ISS-P, 0 for IHT); the rest is untouched.

        The float32 factors are built as bit patterns, ``bits(1) + selected * (bits(factor) - bits(1))``:
        exactly ``factor`` or 1, without the slow bool-to-float conversion of a CPU.
        """
        if factor not in self._factor_bits:
            one, scaled = torch.tensor([1.0, factor], dtype=torch.float32).view(torch.int32).tolist()
            fits = torch.iinfo(torch.int32).min <= scaled - one  # false for a negative factor
            self._factor_bits[factor] = (one, scaled - one) if fits else None
        if self._factor_bits[factor] is None:
            self._factors.fill_(1).masked_fill_(self.selected, factor)
        else:
            one, step = self._factor_bits[factor]
            self._factors.view(torch.int32).copy_(self.selected).mul_(step).add_(one)
        torch._foreach_mul_(self._live()[0], self._factor_rows)
        self.below.mul_(factor)

    def zero_selected(self, params=None):
        """Set the selected weights of ``params`` (default: the live weights) to exactly 0."""
        weights = self.weights() if params is None else [p.detach() for p in params]
        for weight, pruned in zip(weights, self.selected):
            weight.masked_fill_(pruned.view_as(weight), 0)


def group_layers(named_params, counts):
    """Group ``[(name, param)]`` by (numel, k, dtype, device), keeping module order inside each group."""
    groups = {}
    for (name, param), k in zip(named_params, counts):
        key = (param.numel(), k, param.dtype, param.device)
        groups.setdefault(key, []).append((name, param))
    return [
        LayerGroup([n for n, _ in members], [p for _, p in members], key[1]) for key, members in groups.items()
    ]
