"""Exact per-layer selection of the unimportant set, batched over layers of the same size.

Ranking uses an int64 key per weight, ``(bits of |w| << 32) | position``: for non-negative floats the bit
pattern orders like the value, and the position breaks ties, so the k smallest keys are exactly
``ceil(ratio * n)`` weights on every rank and every run, with no random tie-breaking and no host sync.
"""
import torch

_BITS_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


class LayerGroup:
    """Layers with the same size, dtype and device, stacked into one buffer so one kthvalue ranks them all.

    ``selected`` holds the current unimportant set (True = unimportant); after the freeze it is the mask of
    pruned weights. All buffers are allocated once; a step only writes into them.
    """

    def __init__(self, names, params, k):
        first = params[0]
        self.names = list(names)
        self.params = list(params)
        self.numel = first.numel()
        self.k = k
        rows, device = len(self.params), first.device
        if first.dtype not in _BITS_VIEW:
            raise TypeError(f'cannot prune {self.names[0]}: weights of dtype {first.dtype} are not supported '
                            '(float32, float16 or bfloat16 expected)')
        self.values = torch.empty(rows, self.numel, dtype=first.dtype, device=device)
        self.keys = torch.empty(rows, self.numel, dtype=torch.int64, device=device)
        self.position = torch.arange(self.numel, dtype=torch.int64, device=device)
        self.selected = torch.zeros(rows, self.numel, dtype=torch.bool, device=device)
        self.kth = torch.empty(rows, 1, dtype=torch.int64, device=device)
        self.kth_index = torch.empty(rows, 1, dtype=torch.int64, device=device)

    def weights(self):
        """Detached views of the live weights (taken each time: ``module.to()`` may have replaced them)."""
        return [p.detach() for p in self.params]

    def select(self):
        """Mark the k weights of smallest magnitude in each layer as unimportant."""
        torch.stack([w.reshape(-1) for w in self.weights()], out=self.values)
        self.values.abs_()
        self.keys.copy_(self.values.view(_BITS_VIEW[self.values.dtype]))
        self.keys.bitwise_left_shift_(32).bitwise_or_(self.position)
        torch.kthvalue(self.keys, self.k, dim=1, keepdim=True, out=(self.kth, self.kth_index))
        torch.le(self.keys, self.kth, out=self.selected)

    def shrink(self, factor):
        """Multiply the unimportant weights by ``factor`` (alpha for ISS-P, 0 for IHT); the rest is untouched."""
        self.values.fill_(1).masked_fill_(self.selected, factor)
        weights = self.weights()
        torch._foreach_mul_(weights, [row.view_as(w) for row, w in zip(self.values, weights)])

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
