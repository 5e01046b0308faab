"""Rank agreement in distributed ISS-P runs: mask checksums compared across ranks, statistics averaged.

Masks are identical on every rank by construction: DDP averages the gradients, so every rank applies the same
optimizer step to the same weights, and the selection is a deterministic function of the weights (no RNG). The
checksums prove it at the mask freeze, on resume and at every checkpoint, and stop the run if it ever fails.
Every function here works in a single process too (a world of one), so callers need no branches.
"""
import torch
import torch.distributed as dist

from .errors import SparsityStateError

_MULTIPLIER = 2654435761  # Knuth's multiplicative hash: spreads positions over [1, 2^31 - 1]
_MODULUS = 2 ** 31 - 1


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_objects(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` (a collective: every rank must call it)."""
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def mask_checksum(masks):
    """``[layers, 2]`` int64 for ``{name: bool mask}``, layers in name order: the number of set bits and the sum of
    a hash of their flat positions, so a moved bit changes the sum. Exact integer arithmetic, no overflow below
    2^32 weights per layer."""
    rows = []
    for name in sorted(masks):
        bits = masks[name].reshape(-1)
        positions = torch.arange(bits.numel(), dtype=torch.int64, device=bits.device)
        weights = positions.mul_(_MULTIPLIER).remainder_(_MODULUS).add_(1)
        rows.append(torch.stack([bits.sum(dtype=torch.int64), weights.mul_(bits).sum()]))
    if not rows:  # method dense: no masks
        return torch.zeros(0, 2, dtype=torch.int64)
    return torch.stack(rows).cpu()


def check_masks_agree(sparsifier, where):
    """Compare the sparsifier's masks across ranks; raise SparsityStateError naming the first differing layer.
    Returns every rank's checksum (rank order), which the training state keeps as evidence."""
    mine = mask_checksum(sparsifier.masks())
    gathered = all_gather_objects(mine)
    names = sorted(sparsifier.masks())
    for rank, theirs in enumerate(gathered):
        if not torch.equal(theirs, gathered[0]):
            layer = names[int((theirs != gathered[0]).any(dim=1).nonzero()[0])]
            raise SparsityStateError(f'the pruning masks differ between ranks {where}: layer {layer} on rank {rank} '
                                     'is not the one on rank 0, so this run cannot be trusted (were the ranks started '
                                     'from different weights or states?)')
    return gathered


def mean_across_ranks(values, device):
    """``{name: float}`` averaged over the ranks (a collective). Gradients are already averaged by DDP before the
    optimizer step, and weights and masks are identical, so this changes nothing unless a caller breaks that."""
    if world_size() == 1 or not values:
        return values
    names = list(values)  # the same keys in the same order on every rank: the same code made them
    tensor = torch.tensor([float(values[name]) for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= world_size()
    return dict(zip(names, tensor.tolist()))
