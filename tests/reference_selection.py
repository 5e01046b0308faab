"""The brute-force selection every test compares the pruning core against, written once.

A stable sort of |w|: the ``count`` smallest magnitudes, ties to the lower flat position (the core's order).
"""
import torch


def smallest(weight, count):
    """Bool mask shaped like ``weight``: True on its ``count`` smallest |w| (stable sort)."""
    flat = weight.detach().reshape(-1).abs()
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[torch.sort(flat, stable=True).indices[:count]] = True
    return mask.view_as(weight)


def nm_smallest(weight, n, m=4):
    """Per group of ``m`` consecutive weights along the inputs (Linear rows; Conv2d per output channel and kernel
    position, over in_channels), the ``n`` smallest |w| (stable), in the weight's layout."""
    grouped = (weight if weight.dim() == 2 else weight.permute(0, 2, 3, 1)).detach().abs().reshape(-1, m)
    mask = torch.zeros_like(grouped, dtype=torch.bool)
    mask.scatter_(1, torch.sort(grouped, dim=1, stable=True).indices[:, :n], True)
    if weight.dim() == 2:
        return mask.view_as(weight)
    out, cin, kh, kw = weight.shape
    return mask.view(out, kh, kw, cin).permute(0, 3, 1, 2)
