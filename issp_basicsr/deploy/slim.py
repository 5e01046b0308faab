"""``export --slim``: remove the pruned channels physically and save a ``torch.export`` program.

A channel is removed when every weight of its coupled group (its output rows and input columns in every coupled
layer, see ``issp_basicsr.sparsity.channels``) is exactly zero, as the frozen mask of ``granularity: channel``
leaves it. Torch-Pruning removes it from every coupled layer (weights, biases, norms). The smaller network is
checked against the masked dense one (allclose 1e-4) and saved with ``torch.export.save``; it loads with
``torch.export.load(path).module()`` (nothing is unpickled). Works on any ``nn.Module``; no BasicSR import.
"""
import copy

import torch
from torch import nn

from ..errors import OptionError


def _count(model):
    return sum(p.numel() for p in model.parameters())


def count_macs(model, example_input):
    """Multiply-accumulates of one forward pass (``torch.utils.flop_counter``, 2 FLOPs a MAC)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example_input)
    return counter.get_total_flops() // 2


def zero_channels(model, groups):
    """Per pruned group, the root channel indices whose every coupled weight is exactly zero (at most all but one)."""
    removable = []
    for group in groups:
        zero = torch.ones(group.channels, dtype=torch.bool)
        for member in group.members:
            weight = model.get_submodule(member.layer).weight.detach().cpu()
            dims = tuple(d for d in range(weight.dim()) if d != member.dim)
            nonzero = weight.ne(0).any(dim=dims)
            zero[torch.tensor(member.root_index)] &= ~nonzero[torch.tensor(member.layer_index)]
        idxs = zero.nonzero().view(-1).tolist()
        removable.append(idxs[:group.channels - 1])
    return removable


@torch.no_grad()
def slim_network(model, example_input, exclude=()):
    """``(slim copy of model, rows)``: the copy without the all-zero channels, and per Conv2d/Linear layer
    ``(name, channels in/out before, after)``."""
    from ..sparsity.channels import coupled_groups
    slim = copy.deepcopy(model).eval()
    groups, graph = coupled_groups(slim, example_input, exclude)
    groups = [g for g in groups if g.kept is None]
    before = {n: (m.weight.shape[1], m.weight.shape[0]) for n, m in slim.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))}
    for group, idxs in zip(groups, zero_channels(slim, groups)):
        if idxs:
            root = slim.get_submodule(group.root)
            pruner = graph.get_pruner_of_module(root)
            graph.get_pruning_group(root, pruner.prune_out_channels, idxs).prune()
    rows = [(n, before[n], (m.weight.shape[1], m.weight.shape[0])) for n, m in slim.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))]
    return slim, rows


def export_slim(model, path, example_input, exclude=(), atol=1e-4):
    """Slim ``model`` (eval mode, masked weights), check it, save it as a torch.export program at ``path``.
    Returns a summary dict (rows, parameters, MACs, max difference)."""
    model = model.eval()
    slim, rows = slim_network(model, example_input, exclude)
    with torch.no_grad():
        reference, output = model(example_input), slim(example_input)
    difference = float((reference - output).abs().max())
    if not torch.allclose(reference, output, atol=atol, rtol=0):
        raise OptionError(f'--slim: the slim network differs from the masked one by {difference:.2e} (> {atol})')
    program = torch.export.export(slim, (example_input, ))
    torch.export.save(program, path)
    return {'rows': rows, 'params': (_count(model), _count(slim)),
            'macs': (count_macs(model, example_input), count_macs(slim, example_input)), 'difference': difference,
            'slim': slim}


def format_summary(summary, path, example_input):
    lines = [f'{"layer":40s} {"in before->after":>18s} {"out before->after":>18s}']
    for name, (cin, cout), (cin2, cout2) in summary['rows']:
        mark = '' if (cin, cout) == (cin2, cout2) else ' *'
        lines.append(f'{name:40s} {f"{cin}->{cin2}":>18s} {f"{cout}->{cout2}":>18s}{mark}')
    (p0, p1), (m0, m1) = summary['params'], summary['macs']
    lines.append(f'parameters {p0} -> {p1} ({p1 / p0:.3f}); MACs at {list(example_input.shape)} {m0} -> {m1} '
                 f'({m1 / max(m0, 1):.3f}, {m0 / max(m1, 1):.2f}x fewer)')
    lines.append(f'{path}: torch.export program (torch.export.load(path).module()); max |slim - masked| '
                 f'{summary["difference"]:.2e}')
    return '\n'.join(lines)
