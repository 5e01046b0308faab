"""LayerGroup selection: every path (threshold check, partial and full re-rank) equals a brute-force ranking."""
import math

import pytest
import torch
from reference_selection import smallest
from torch import nn

from issp_basicsr.sparsity.config import pruned_count
from issp_basicsr.sparsity.selection import group_layers


def reference(weights, k):
    """The brute-force selection of every layer, one row each."""
    return torch.stack([smallest(weight, k).reshape(-1) for weight in weights])


def make_group(shapes, k, dtype=torch.float32, seed=0, values=None):
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        data = torch.randn(shape, generator=generator) * 0.05 if values is None else values(shape, generator)
        params.append(nn.Parameter(data.to(dtype)))
    groups = group_layers([(f'layer{i}', p) for i, p in enumerate(params)], [k] * len(params))
    assert len(groups) == 1
    return groups[0], params


def drift(params, generator, size=2e-4):
    """About one Adam step: every weight moves by up to ``size`` in a random direction."""
    with torch.no_grad():
        for p in params:
            step = torch.rand(p.shape, generator=generator) * size
            sign = torch.randint(0, 2, p.shape, generator=generator) * 2 - 1
            p.add_((step * sign).to(p.dtype))


def check(group, params):
    expected = reference(params, group.k)
    assert torch.equal(group.selected, expected)
    assert group.selected.sum(dim=1).tolist() == [group.k] * len(params)


def run_steps(group, params, steps, factor=0.95, size=2e-4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        drift(params, generator, size)
        group.select()
        check(group, params)
        group.shrink(factor)


@pytest.mark.parametrize('factor', [0.95, 0.0])
def test_threshold_check_equals_brute_force_under_drift(factor):
    group, params = make_group([(60, 120)] * 6, pruned_count(0.95, 7200))
    run_steps(group, params, 40, factor=factor)
    # after the first full ranking, most layer selections are settled by the count alone
    assert group.checked_rows > 30 * len(params)


def test_large_moves_re_rank_and_stay_exact():
    group, params = make_group([(30, 40)] * 8, pruned_count(0.9, 1200), seed=3)
    run_steps(group, params, 5)
    ranked = group.ranked_rows
    run_steps(group, params, 10, size=0.1, seed=4)  # moves far beyond the gap the shrink opened
    assert group.ranked_rows > ranked + 10


def test_set_changing_completely_falls_back_to_a_full_rank():
    group, params = make_group([(50, 50)] * 4, pruned_count(0.95, 2500), seed=5)
    run_steps(group, params, 3)
    ranked = group.ranked_rows
    with torch.no_grad():
        for p in params:  # the unimportant set is now mostly important and vice versa
            p.copy_(1.0 / (p.abs() + 1e-3))
    group.select()
    check(group, params)
    assert group.ranked_rows == ranked + len(params)


def test_one_layer_re_ranked_alone():
    group, params = make_group([(40, 40)] * 5, pruned_count(0.95, 1600), seed=6)
    run_steps(group, params, 3)
    ranked, checked = group.ranked_rows, group.checked_rows
    with torch.no_grad():
        params[2].copy_(torch.randn(params[2].shape) * 0.05)
    group.select()
    check(group, params)
    assert group.ranked_rows == ranked + 1
    assert group.checked_rows == checked + 4


def few_magnitudes(shape, generator):
    """Many exact ties, zeros included: magnitudes from {0, 0.25, 0.5, 0.75} with random signs."""
    levels = torch.randint(0, 4, shape, generator=generator).float() * 0.25
    return levels * (torch.randint(0, 2, shape, generator=generator) * 2 - 1)


@pytest.mark.parametrize('ratio', [0.3, 0.5, 0.9])
def test_ties_go_to_the_lower_position(ratio):
    group, params = make_group([(8, 25)] * 4, pruned_count(ratio, 200), values=few_magnitudes)
    generator = torch.Generator().manual_seed(2)
    for step in range(12):
        if step % 3 == 2:  # moves that keep the magnitudes on the grid, so ties persist
            with torch.no_grad():
                for p in params:
                    p.copy_(few_magnitudes(p.shape, generator))
        group.select()
        check(group, params)
        group.shrink(0.5)


def test_exact_zeros_of_hard_thresholding():
    """IHT zeroes the set; a drift that leaves some of them at exactly 0 keeps ties at the bottom."""
    group, params = make_group([(20, 20)] * 3, pruned_count(0.9, 400), seed=7)
    generator = torch.Generator().manual_seed(8)
    for _ in range(15):
        group.select()
        check(group, params)
        group.shrink(0.0)
        with torch.no_grad():
            for p in params:
                moved = torch.rand(p.shape, generator=generator) < 0.5
                p.add_(torch.where(moved, torch.randn(p.shape, generator=generator) * 1e-3, torch.zeros(())))
    assert group.checked_rows > 0


def test_more_zeros_than_the_set_selects_the_first_positions():
    group, params = make_group([(10, 10)] * 2, 50, seed=9)
    with torch.no_grad():
        params[0][:8].zero_()  # 80 zeros, 50 to select
    for _ in range(3):
        group.select()
        check(group, params)
        assert group.selected[0].nonzero().view(-1).tolist() == list(range(50))
        group.shrink(0.95)


@pytest.mark.parametrize('numel', range(1, 11))
def test_tiny_layers_every_count(numel):
    for k in range(1, numel + 1):
        group, params = make_group([(numel, )] * 3, k, seed=numel * 100 + k)
        run_steps(group, params, 4, size=0.02, seed=k)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_weights(dtype):
    group, params = make_group([(30, 30)] * 4, pruned_count(0.95, 900), dtype=dtype, seed=10)
    run_steps(group, params, 20, size=2e-3)
    assert group.checked_rows > 0
    tied, _ = make_group([(10, 20)] * 2, 120, dtype=dtype, values=few_magnitudes)
    tied.select()
    check(tied, _)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('factor', [0.95, 0.5, 0.0, -0.5])
def test_shrink_multiplies_the_set_by_exactly_the_factor(dtype, factor):
    group, params = make_group([(6, 7)] * 3, 30, dtype=dtype, seed=11)
    before = [p.detach().clone() for p in params]
    group.select()
    group.shrink(factor)
    for old, new, mask in zip(before, params, group.selected):
        mask = mask.view_as(old)
        assert torch.equal(new[mask], old[mask] * factor)
        assert torch.equal(new[~mask], old[~mask])


def test_bogus_thresholds_never_give_a_wrong_set():
    group, params = make_group([(15, 15)] * 3, pruned_count(0.8, 225), seed=12)
    group.select()
    for below, above in [(0.0, 0.0), (math.inf, math.inf), (math.nan, 1.0), (-1.0, -3.0), (1e-9, 1e9)]:
        group.below.fill_(below)
        group.above.fill_(above)
        group.select()
        check(group, params)


def test_replaced_storage_is_picked_up():
    """``.data =`` (as ``module.to()`` does) gives new storage: select and shrink must follow it."""
    group, params = make_group([(12, 12)] * 2, 100, seed=13)
    group.select()
    group.shrink(0.5)
    params[1].data = torch.randn(12, 12) * 0.05
    params[0].data = params[0].data.t().contiguous().t()  # non-contiguous from now on
    before = [p.detach().clone() for p in params]
    group.select()
    check(group, params)
    group.shrink(0.5)
    for old, new, mask in zip(before, params, group.selected):
        mask = mask.view_as(old)
        assert torch.equal(new[mask], old[mask] * 0.5)
        assert torch.equal(new[~mask], old[~mask])


def test_exact_ranking_alone_as_on_cuda():
    """Non-CPU tensors skip the threshold check; that path must equal the reference on its own too."""
    group, params = make_group([(25, 25)] * 3, pruned_count(0.95, 625), seed=14)
    group.incremental = False
    run_steps(group, params, 5)
    assert group.checked_rows == 0 and group.ranked_rows == 5 * len(params)
    tied, tied_params = make_group([(10, 20)] * 2, 150, values=few_magnitudes)
    tied.incremental = False
    tied.select()
    check(tied, tied_params)
