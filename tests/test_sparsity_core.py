"""The pruning core on its own: which weights each step touches, by how much, and exact counts."""
import ast
import copy
import math
import pathlib

import pytest
import torch
from reference_selection import smallest
from torch import nn

from issp_basicsr.sparsity import (
    SparsityConfig,
    SparsityConfigError,
    SparsityStateError,
    build_sparsifier,
    prunable_layers,
    pruned_count,
)


class Tiny(nn.Module):

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.tail = nn.Conv2d(8, 3, 3, padding=1, bias=False)

    def forward(self, x):
        x = self.head(x).permute(0, 2, 3, 1)
        x = self.body(self.norm(x)).permute(0, 3, 1, 2)
        return self.tail(x)


def make_model(seed=0):
    torch.manual_seed(seed)
    return Tiny()


def smallest_at(weight, ratio):
    return smallest(weight, pruned_count(ratio, weight.numel()))


PRUNED = ['head', 'body.0', 'body.2', 'tail']


def test_pruned_count_uses_the_written_decimal():
    assert pruned_count(0.95, 7200) == 6840  # float 0.95 * 7200 is 6840.000000000001
    assert pruned_count(0.9, 10) == 9
    assert pruned_count(0.95, 10) == 10
    assert pruned_count(0.99, 1620) == math.ceil(0.99 * 1620)


def test_prunable_layers_are_conv_and_linear_only():
    assert [name for name, _ in prunable_layers(make_model())] == PRUNED


@pytest.mark.parametrize('method,factor', [('issp', 0.8), ('iht', 0.0)])
def test_shrink_step_touches_exactly_the_smallest(method, factor):
    model = make_model()
    block = dict(method=method, ratio=0.75, prune_iter=10)
    if method == 'issp':
        block['alpha'] = factor
    sparsifier = build_sparsifier(model, **block)
    before = copy.deepcopy(model.state_dict())
    sparsifier.step(1)
    after = model.state_dict()
    for name in PRUNED:
        w0, w1 = before[f'{name}.weight'], after[f'{name}.weight']
        expected = smallest_at(w0, 0.75)
        assert int(expected.sum()) == pruned_count(0.75, w0.numel())
        assert torch.equal(w1[expected], w0[expected] * factor)
        assert torch.equal(w1[~expected], w0[~expected])
    for key in ('head.bias', 'norm.weight', 'norm.bias', 'body.0.bias', 'body.2.bias'):
        assert torch.equal(before[key], after[key]), key
    assert not sparsifier.frozen


def test_selection_is_redone_every_step():
    model = make_model()
    sparsifier = build_sparsifier(model, method='issp', ratio=0.5, alpha=0.5, prune_iter=100)
    sparsifier.step(1)
    with torch.no_grad():  # make a previously unimportant weight the largest of its layer
        weight = model.body[0].weight
        moved = smallest_at(weight, 0.5).reshape(-1).nonzero()[0, 0]
        weight.view(-1)[moved] = 10.0
    w0 = weight.detach().clone()
    sparsifier.step(2)
    assert weight.view(-1)[moved] == 10.0
    expected = smallest_at(w0, 0.5)
    assert torch.equal(weight.detach()[expected], w0[expected] * 0.5)


def test_interval_skips_the_iterations_in_between():
    model = make_model()
    sparsifier = build_sparsifier(model, method='issp', ratio=0.5, alpha=0.5, prune_iter=100, interval=3)
    before = copy.deepcopy(model.state_dict())
    sparsifier.step(1)
    sparsifier.step(2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    sparsifier.step(3)
    assert not torch.equal(before['tail.weight'], model.tail.weight.detach())


def test_freeze_at_prune_iter_zeroes_the_last_selection_and_keeps_it():
    model = make_model()
    sparsifier = build_sparsifier(model, method='issp', ratio=0.75, alpha=0.9, prune_iter=3)
    sparsifier.step(1)
    sparsifier.step(2)
    last = {name: smallest_at(model.get_submodule(name).weight, 0.75) for name in PRUNED}
    sparsifier.step(3)
    assert sparsifier.frozen and sparsifier.phase == 'finetune'
    for name in PRUNED:
        weight = model.get_submodule(name).weight.detach()
        assert int((weight == 0).sum()) == pruned_count(0.75, weight.numel())
        assert torch.equal(weight == 0, last[name])
        assert torch.equal(sparsifier.masks()[name], last[name])
    # an optimizer step moves every weight; the next step puts the same zeros back and nothing else changes
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    moved = {name: model.get_submodule(name).weight.detach().clone() for name in PRUNED}
    sparsifier.step(4)
    for name in PRUNED:
        weight = model.get_submodule(name).weight.detach()
        assert torch.equal(weight == 0, last[name])
        assert torch.equal(weight[~last[name]], moved[name][~last[name]])
    expected = sum(pruned_count(0.75, model.get_submodule(n).weight.numel()) for n in PRUNED)
    assert sparsifier.num_pruned() == expected
    assert sparsifier.sparsity() == pytest.approx(expected / sparsifier.num_weights())


def test_ties_are_broken_by_position_and_counts_stay_exact():
    model = make_model()
    with torch.no_grad():
        model.body[0].weight.fill_(0.5)
        model.body[2].weight.zero_()
    sparsifier = build_sparsifier(model, method='iht', ratio=0.3, prune_iter=1)
    sparsifier.step(1)
    masks = sparsifier.masks()
    k = pruned_count(0.3, 128)
    assert int(masks['body.0'].sum()) == k
    assert masks['body.0'].reshape(-1)[:k].all() and not masks['body.0'].reshape(-1)[k:].any()
    assert int(masks['body.2'].sum()) == k


def test_exclude_by_name_and_by_ancestor():
    model = make_model()
    sparsifier = build_sparsifier(model, method='iht', ratio=0.5, prune_iter=1, exclude=['head', 'body'])
    assert sparsifier.layer_names == ['tail']
    before = copy.deepcopy(model.state_dict())
    sparsifier.step(1)
    for key in ('head.weight', 'body.0.weight', 'body.2.weight'):
        assert torch.equal(before[key], model.state_dict()[key])
    assert int((model.tail.weight == 0).sum()) == pruned_count(0.5, model.tail.weight.numel())
    assert build_sparsifier(make_model(), exclude=['body.*']).layer_names == ['head', 'tail']


@pytest.mark.parametrize(
    'block,message',
    [
        (dict(ratio=1.0), 'ratio must be a number with 0 < ratio < 1, got 1.0'),
        (dict(ratio='0.9'), 'ratio'),
        (dict(alpha=0), 'alpha must be a number with 0 < alpha < 1, got 0'),
        (dict(method='iht', alpha=0.9), "alpha does not apply to method 'iht'"),
        (dict(method='magic'), 'method must be one of'),
        (dict(prune_iter=0), 'prune_iter must be an integer >= 1, got 0'),
        (dict(prune_iter=2.5), 'prune_iter must be an integer >= 1'),
        (dict(interval=True), 'interval must be an integer >= 1'),
        (dict(exclude='head'), 'exclude must be a list'),
        (dict(ratoi=0.9), 'ratoi is not a known key'),
        (dict(hold_lr_during_pruning='yes'), 'hold_lr_during_pruning must be true or false'),
    ])
def test_bad_values_name_the_key(block, message):
    with pytest.raises(SparsityConfigError) as error:
        build_sparsifier(make_model(), **block)
    assert message in str(error.value)


def test_prune_iter_past_total_iter_and_unmatched_exclude():
    with pytest.raises(SparsityConfigError, match=r'prune_iter \(500\) is past the total_iter \(100\)'):
        SparsityConfig.from_dict({'prune_iter': 500}, total_iter=100)
    with pytest.raises(SparsityConfigError, match="exclude pattern 'upsampler' matches no module"):
        build_sparsifier(make_model(), exclude=['upsampler'])


def test_apply_masks_to_an_ema_copy():
    model = make_model()
    ema = copy.deepcopy(model)
    sparsifier = build_sparsifier(model, method='issp', ratio=0.5, prune_iter=1)
    sparsifier.step(1)
    sparsifier.apply_masks(ema)
    for name, mask in sparsifier.masks().items():
        assert torch.equal(ema.get_submodule(name).weight.detach() == 0, mask)


def test_state_dict_round_trip_in_both_phases():
    for steps, frozen in ((2, False), (4, True)):
        model = make_model()
        sparsifier = build_sparsifier(model, method='issp', ratio=0.75, prune_iter=3)
        for it in range(1, steps + 1):
            sparsifier.step(it)
        state = sparsifier.state_dict()
        restored_model = copy.deepcopy(model)
        with torch.no_grad():  # a resumed model whose weights a stray update touched
            for p in restored_model.parameters():
                p.add_(1.0)
        restored = build_sparsifier(restored_model, method='issp', ratio=0.75, prune_iter=3)
        restored.load_state_dict(state)
        assert restored.frozen == frozen and restored.last_step == steps
        for name, mask in sparsifier.masks().items():
            assert torch.equal(restored.masks()[name], mask)
            if frozen:
                assert torch.equal(restored_model.get_submodule(name).weight.detach() == 0, mask)


def test_state_dict_mismatch_is_refused():
    model = make_model()
    sparsifier = build_sparsifier(model, ratio=0.75, prune_iter=3)
    sparsifier.step(3)
    state = sparsifier.state_dict()
    with pytest.raises(SparsityStateError, match='ratio is 0.5 but the saved state was trained with 0.75'):
        build_sparsifier(make_model(), ratio=0.5, prune_iter=3).load_state_dict(state)
    with pytest.raises(SparsityStateError, match='does not match the model'):
        other = make_model()
        other.tail = nn.Conv2d(8, 4, 3)
        build_sparsifier(other, ratio=0.75, prune_iter=3).load_state_dict(state)
    with pytest.raises(SparsityStateError, match='not a sparsifier state'):
        build_sparsifier(make_model()).load_state_dict({'params': {}})


def test_statistics_report_change_and_gradient_norms():
    model = make_model()
    sparsifier = build_sparsifier(model, method='issp', ratio=0.5, alpha=0.5, prune_iter=100)
    sparsifier.step(1)
    model(torch.randn(1, 3, 4, 4)).square().sum().backward()
    stats = sparsifier.statistics()
    assert stats['sparsity/zeros'] == 0
    assert stats['sparsity/mask_change'] == 0
    grads = torch.cat([model.get_submodule(n).weight.grad.reshape(-1) for n in PRUNED])
    masks = torch.cat([sparsifier.masks()[n].reshape(-1) for n in PRUNED])
    assert stats['sparsity/grad_unimportant'] == pytest.approx(float(grads[masks].double().norm()), rel=1e-6)
    assert stats['sparsity/grad_kept'] == pytest.approx(float(grads[~masks].double().norm()), rel=1e-6)
    # swap one unimportant weight of a layer with an important one: 1 of the set changed in that layer
    with torch.no_grad():
        weight = model.tail.weight.view(-1)
        mask = sparsifier.masks()['tail'].reshape(-1)
        weight[mask.nonzero()[0, 0]] = 100.0
    sparsifier.step(2)
    assert sparsifier.statistics()['sparsity/mask_change'] == pytest.approx(1 / sparsifier.num_pruned())


def test_pruning_core_does_not_import_basicsr():
    core = pathlib.Path(__file__).resolve().parents[1] / 'issp_basicsr' / 'sparsity'
    for path in core.glob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split('.')[0] == 'basicsr' for n in names), path
