"""Every method and selection variant, checked from outside: which weights are zero or shrunk, when, and how many."""
import copy
import hashlib
import math
import pathlib
import subprocess
import sys

import pytest
import torch
import yaml
from reference_selection import nm_smallest, smallest
from torch import nn

from issp_basicsr.sparsity import (
    SparsityConfig,
    SparsityConfigError,
    SparsityStateError,
    build_sparsifier,
    pruned_count,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Net(nn.Module):
    """Conv2d and Linear layers whose input sizes are multiples of 4 (for N:M), plus a Conv2d with 3 inputs."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.last = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.conv(self.first(x)).permute(0, 2, 3, 1)
        return self.last(self.body(x).permute(0, 3, 1, 2))


LAYERS = ['first', 'conv', 'body.0', 'body.2', 'last']


def make_net(seed=0):
    torch.manual_seed(seed)
    return Net()


def weights(model):
    return {name: model.get_submodule(name).weight.detach().clone() for name in LAYERS}


def run(model, sparsifier, iters, lr=0.0, zero_loss=False, start=1, optimizer=None):
    """A training loop: backward, pre_step, SGD step, step. ``zero_loss`` gives all-zero gradients."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=lr)
    torch.manual_seed(123)
    for it in range(start, start + iters):
        optimizer.zero_grad()
        out = model(torch.randn(2, 3, 5, 5))
        (out.sum() * 0 if zero_loss else out.square().mean()).backward()
        sparsifier.pre_step(it)
        optimizer.step()
        sparsifier.step(it)
    return optimizer


# ------------------------------------------------------------------------------------------------- methods
@pytest.mark.parametrize('method,factor', [('issp', 0.5), ('iht', 0.0)])
def test_issp_and_iht_shrink_then_freeze_at_prune_iter(method, factor):
    model = make_net()
    block = dict(method=method, ratio=0.75, prune_iter=3)
    if method == 'issp':
        block['alpha'] = factor
    sparsifier = build_sparsifier(model, **block)
    before = weights(model)
    run(model, sparsifier, 1)
    for name, w0 in before.items():
        mask = smallest(w0, pruned_count(0.75, w0.numel()))
        w1 = model.get_submodule(name).weight.detach()
        assert torch.equal(w1[mask], w0[mask] * factor) and torch.equal(w1[~mask], w0[~mask])
    run(model, sparsifier, 1, start=2)
    last = {name: smallest(w, pruned_count(0.75, w.numel())) for name, w in weights(model).items()}
    run(model, sparsifier, 1, start=3)
    assert sparsifier.frozen
    for name, w in weights(model).items():
        assert torch.equal(w == 0, last[name])


def test_issr_penalty_grows_on_the_reselected_set_and_freezes():
    """With plain SGD at lr 0.5 and a zero loss, the penalty alone moves weights: w <- (1 - 0.5 * penalty) w on
    the unimportant set; penalty = min(0.3, 0.1 * (it // 2)), re-selected every iteration, frozen at 8."""
    model = make_net()
    sparsifier = build_sparsifier(model, method='issr', ratio=0.5, prune_iter=8, reg_step=0.1, reg_interval=2,
                                  reg_max=0.3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    assert sparsifier.penalty == 0 and not sparsifier.frozen
    for it in range(1, 8):
        before = weights(model)
        unimportant = {name: mask.clone() for name, mask in sparsifier.masks().items()}
        run(model, sparsifier, 1, zero_loss=True, start=it, optimizer=optimizer)
        penalty = min(0.3, 0.1 * (it // 2))
        assert sparsifier.penalty == pytest.approx(penalty)
        for name, w0 in before.items():
            w1 = model.get_submodule(name).weight.detach()
            mask = unimportant[name]
            assert torch.allclose(w1[mask], w0[mask] * (1 - 0.5 * penalty), rtol=1e-6, atol=1e-8)
            assert torch.equal(w1[~mask], w0[~mask])
            # the set is re-selected after the step, from the current weights
            assert torch.equal(sparsifier.masks()[name], smallest(w1, pruned_count(0.5, w1.numel())))
    assert sparsifier.statistics()['sparsity/penalty'] == pytest.approx(0.3)
    with torch.no_grad():  # a previously unimportant weight becomes the largest: it leaves the set at the freeze
        weight = model.conv.weight.view(-1)
        moved = sparsifier.masks()['conv'].reshape(-1).nonzero()[0, 0]
        weight[moved] = 5.0
    last = {name: smallest(w, pruned_count(0.5, w.numel())) for name, w in weights(model).items()}
    run(model, sparsifier, 1, zero_loss=True, start=8, optimizer=optimizer)
    assert sparsifier.frozen and model.conv.weight.view(-1)[moved] != 0
    for name, w in weights(model).items():
        assert torch.equal(w == 0, last[name])
    frozen = weights(model)
    run(model, sparsifier, 2, zero_loss=True, start=9, optimizer=optimizer)  # no penalty after the freeze
    assert all(torch.equal(w, frozen[name]) for name, w in weights(model).items())


def test_greg_keeps_the_set_chosen_at_the_start_and_masks_it_at_prune_iter():
    model = make_net()
    start = {name: smallest(w, pruned_count(0.5, w.numel())) for name, w in weights(model).items()}
    sparsifier = build_sparsifier(model, method='greg', ratio=0.5, prune_iter=6, reg_step=0.2, reg_interval=1,
                                  reg_max=0.4)
    assert all(torch.equal(sparsifier.masks()[n], start[n]) for n in LAYERS)
    assert sparsifier.sparsity() == 0  # nothing zeroed before prune_iter
    with torch.no_grad():  # move a weight of the set far out: greg does not re-select
        model.body[0].weight.view(-1)[start['body.0'].reshape(-1).nonzero()[0, 0]] = 5.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for it in range(1, 6):
        before = weights(model)
        run(model, sparsifier, 1, zero_loss=True, start=it, optimizer=optimizer)
        factor = 1 - 0.5 * min(0.4, 0.2 * it)
        for name, w0 in before.items():
            w1 = model.get_submodule(name).weight.detach()
            assert torch.allclose(w1[start[name]], w0[start[name]] * factor, rtol=1e-6, atol=1e-8)
            assert torch.equal(w1[~start[name]], w0[~start[name]])
        assert all(torch.equal(sparsifier.masks()[n], start[n]) for n in LAYERS)
    run(model, sparsifier, 1, zero_loss=True, start=6, optimizer=optimizer)
    assert sparsifier.frozen
    for name, w in weights(model).items():
        assert torch.equal(w == 0, start[name])


def test_l1_masks_the_starting_weights_before_the_first_step_and_keeps_the_mask():
    model = make_net()
    start = {name: smallest(w, pruned_count(0.9, w.numel())) for name, w in weights(model).items()}
    before = weights(model)
    sparsifier = build_sparsifier(model, method='l1', ratio=0.9, prune_iter=2)
    assert sparsifier.frozen
    for name, w in weights(model).items():
        assert torch.equal(w == 0, start[name]) and torch.equal(w[~start[name]], before[name][~start[name]])
    run(model, sparsifier, 4, lr=0.1)  # real training: kept weights move, the zeros stay, before and after 2
    for name, w in weights(model).items():
        assert torch.equal(w == 0, start[name])
        assert not torch.equal(w[~start[name]], before[name][~start[name]])


def test_scratch_is_a_seeded_random_mask_with_the_same_per_layer_counts():
    model = make_net()
    rng = torch.get_rng_state()
    sparsifier = build_sparsifier(model, method='scratch', ratio=0.75, prune_iter=5, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)  # a dedicated generator: the global RNG is untouched
    masks = sparsifier.masks()
    for name, w in weights(model).items():
        assert int(masks[name].sum()) == pruned_count(0.75, w.numel())
        assert torch.equal(w == 0, masks[name])
    assert not all(torch.equal(masks[n], smallest(w, pruned_count(0.75, w.numel())))
                   for n, w in weights(make_net()).items())
    other_init = build_sparsifier(make_net(seed=5), method='scratch', ratio=0.75, prune_iter=5, seed=7).masks()
    assert all(torch.equal(masks[n], other_init[n]) for n in LAYERS)  # the mask ignores the weights
    other_seed = build_sparsifier(make_net(), method='scratch', ratio=0.75, prune_iter=5, seed=8).masks()
    assert not all(torch.equal(masks[n], other_seed[n]) for n in LAYERS)
    run(model, sparsifier, 6, lr=0.1)
    assert all(torch.equal(w == 0, masks[n]) for n, w in weights(model).items())


MASK_DIGEST = '''
import hashlib, sys, types, torch
package = types.ModuleType('issp_basicsr')  # the core alone, without the package's BasicSR set-up (fast)
package.__path__ = [{package!r}]
sys.modules['issp_basicsr'] = package
sys.path.insert(0, {tests!r})
from test_methods import make_net
from issp_basicsr.sparsity import build_sparsifier
torch.manual_seed(int(sys.argv[1]))  # BasicSR seeds each rank with seed + rank
net = make_net(seed=int(sys.argv[1]))
masks = build_sparsifier(net, method='scratch', ratio=0.8, seed=11, pattern='2:4', exclude=['first']).masks()
print(hashlib.sha256(b''.join(m.numpy().tobytes() for m in masks.values())).hexdigest())
'''


@pytest.mark.slow
def test_scratch_mask_is_identical_in_two_processes_with_different_global_seeds():
    code = MASK_DIGEST.format(package=str(ROOT / 'issp_basicsr'), tests=str(ROOT / 'tests'))
    digests = [
        subprocess.run([sys.executable, '-c', code, str(rank)], capture_output=True, text=True, check=True,
                       cwd=ROOT).stdout.strip() for rank in (0, 1)
    ]
    masks = build_sparsifier(make_net(), method='scratch', ratio=0.8, seed=11, pattern='2:4',
                             exclude=['first']).masks()
    here = hashlib.sha256(b''.join(m.numpy().tobytes() for m in masks.values())).hexdigest()
    assert digests == [here, here]


def test_dense_changes_nothing_and_still_reports():
    model = make_net()
    sparsifier = build_sparsifier(model, method='dense', prune_iter=2)
    before = copy.deepcopy(model.state_dict())
    run(model, sparsifier, 3, zero_loss=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sparsifier.phase == 'dense' and sparsifier.num_pruned() == 0 and sparsifier.masks() == {}
    assert sparsifier.statistics() == {'sparsity/zeros': 0.0}
    restored = build_sparsifier(make_net(), method='dense', prune_iter=2)
    restored.load_state_dict(sparsifier.state_dict())
    assert restored.last_step == 3


# ----------------------------------------------------------------------------------------- selection variants
def test_global_scope_has_one_threshold_and_an_exact_total():
    model = make_net()
    before = weights(model)
    sparsifier = build_sparsifier(model, method='iht', ratio=0.6, prune_iter=1, scope='global')
    sparsifier.step(1)
    total = sum(w.numel() for w in before.values())
    count = pruned_count(0.6, total)
    assert sparsifier.num_pruned() == count
    flat = torch.cat([before[n].reshape(-1) for n in LAYERS])
    expected = smallest(flat, count)
    got = torch.cat([sparsifier.masks()[n].reshape(-1) for n in LAYERS])
    assert torch.equal(got, expected) and int(got.sum()) == count
    assert torch.equal(torch.cat([w.reshape(-1) for w in weights(model).values()]) == 0, expected)
    per_layer = [int(sparsifier.masks()[n].sum()) for n in LAYERS]
    assert len(set(p / before[n].numel() for p, n in zip(per_layer, LAYERS))) > 1  # counts follow magnitudes


def test_global_scope_breaks_ties_by_position_across_layers():
    model = make_net()
    with torch.no_grad():
        for name in LAYERS:
            model.get_submodule(name).weight.fill_(0.25)
    sparsifier = build_sparsifier(model, method='l1', ratio=0.5, scope='global')
    total = sum(model.get_submodule(n).weight.numel() for n in LAYERS)
    got = torch.cat([sparsifier.masks()[n].reshape(-1) for n in LAYERS])
    count = pruned_count(0.5, total)
    assert got[:count].all() and not got[count:].any()


def test_global_scope_with_a_per_layer_override():
    model = make_net()
    before = weights(model)
    sparsifier = build_sparsifier(model, method='l1', ratio=0.7, scope='global', ratios={'body.0': 0.25})
    masks = sparsifier.masks()
    assert torch.equal(masks['body.0'], smallest(before['body.0'], pruned_count(0.25, 128)))
    rest = [n for n in LAYERS if n != 'body.0']
    flat = torch.cat([before[n].reshape(-1) for n in rest])
    count = pruned_count(0.7, flat.numel())
    assert torch.equal(torch.cat([masks[n].reshape(-1) for n in rest]), smallest(flat, count))
    assert sparsifier.num_pruned() == count + pruned_count(0.25, 128)


def test_per_layer_ratios_first_matching_pattern_wins():
    model = make_net()
    sparsifier = build_sparsifier(model, method='l1', ratio=0.9, ratios={'first': 0.5, 'body.*': 0.6, 'body': 0.1})
    counts = {n: int(m.sum()) for n, m in sparsifier.masks().items()}
    assert counts == {'first': pruned_count(0.5, 216), 'conv': pruned_count(0.9, 576), 'body.0': pruned_count(0.6, 128),
                      'body.2': pruned_count(0.6, 128), 'last': pruned_count(0.9, 32)}
    with pytest.raises(SparsityConfigError, match="ratios pattern 'tail' matches no pruned layer of Net"):
        build_sparsifier(make_net(), method='l1', ratios={'tail': 0.5})
    with pytest.raises(SparsityConfigError, match="ratios pattern 'first' matches no pruned layer"):
        build_sparsifier(make_net(), method='l1', exclude=['first'], ratios={'first': 0.5})


def nm_groups(mask):
    """Groups of 4 consecutive weights along the input dimension: Linear rows, Conv2d per (out, kh, kw)."""
    grouped = mask if mask.dim() == 2 else mask.permute(0, 2, 3, 1)
    return grouped.reshape(-1, 4)


@pytest.mark.parametrize('scope', ['layer', 'global'])
def test_n_m_pattern_at_its_own_ratio_is_exactly_n_per_group_along_the_inputs(scope):
    model = make_net()
    before = weights(model)
    sparsifier = build_sparsifier(model, method='iht', ratio=0.5, prune_iter=1, pattern='2:4', scope=scope,
                                  exclude=['first'])
    sparsifier.step(1)
    for name in LAYERS[1:]:
        mask = sparsifier.masks()[name]
        assert torch.equal(nm_groups(mask).sum(1), torch.full((mask.numel() // 4, ), 2))
        assert torch.equal(mask, nm_smallest(before[name], 2))
        assert torch.equal(model.get_submodule(name).weight.detach() == 0, mask)


@pytest.mark.parametrize('scope', ['layer', 'global'])
def test_n_m_pattern_above_its_ratio_keeps_n_per_group_and_the_exact_count(scope):
    model = make_net()
    before = weights(model)
    sparsifier = build_sparsifier(model, method='l1', ratio=0.8, pattern='1:4', scope=scope, exclude=['first'])
    masks = sparsifier.masks()
    total = 0
    for name in LAYERS[1:]:
        assert (nm_groups(masks[name]).sum(1) >= 1).all()
        assert torch.equal(masks[name] & nm_smallest(before[name], 1), nm_smallest(before[name], 1))
        total += int(masks[name].sum())
        if scope == 'layer':
            assert int(masks[name].sum()) == pruned_count(0.8, masks[name].numel())
            # beyond the forced one per group, the smallest of the rest by magnitude
            rest = before[name].abs().masked_fill(nm_smallest(before[name], 1), -1).reshape(-1)
            expected = torch.zeros_like(rest, dtype=torch.bool)
            expected[torch.sort(rest, stable=True).indices[:pruned_count(0.8, rest.numel())]] = True
            assert torch.equal(masks[name], expected.view_as(masks[name]))
    assert total == sparsifier.num_pruned()
    if scope == 'global':
        assert total == pruned_count(0.8, sum(before[n].numel() for n in LAYERS[1:]))


def test_n_m_pattern_rejects_a_layer_whose_inputs_are_not_a_multiple_of_m():
    with pytest.raises(SparsityConfigError) as error:
        build_sparsifier(make_net(), method='issp', pattern='2:4')
    assert str(error.value) == ('pattern 2:4: layer first has input size 3, not a multiple of 4 '
                                '(add it to exclude)')


def test_every_method_runs_every_variant_with_statistics_and_state():
    variants = [dict(), dict(scope='global'), dict(pattern='2:4', exclude=['first']), dict(ratios={'conv': 0.5})]
    extra = {'issp': dict(alpha=0.9), 'iht': {}, 'issr': dict(reg_step=0.1, reg_interval=1), 'greg': dict(reg_step=0.1),
             'l1': {}, 'scratch': dict(seed=1)}
    for method, keys in extra.items():
        for variant in variants:
            block = dict(method=method, ratio=0.75, prune_iter=3, **keys, **variant)
            model = make_net()
            sparsifier = build_sparsifier(model, **block)
            run(model, sparsifier, 2, lr=0.01)
            state = sparsifier.state_dict()
            assert 'sparsity/grad_kept' in sparsifier.statistics()
            resumed_model = copy.deepcopy(model)
            resumed = build_sparsifier(resumed_model, **block)
            resumed.load_state_dict(state)
            assert resumed.penalty == sparsifier.penalty
            assert all(torch.equal(resumed.masks()[n], m) for n, m in sparsifier.masks().items())
            run(model, sparsifier, 2, lr=0.01, start=3)
            run(resumed_model, resumed, 2, lr=0.01, start=3)
            assert all(torch.equal(resumed.masks()[n], m) for n, m in sparsifier.masks().items()), (method, variant)
            assert sparsifier.frozen and resumed.frozen
            zeros = sum(int((w == 0).sum()) for w in weights(model).values())
            assert zeros == sparsifier.num_pruned(), (method, variant)


def test_resume_keeps_the_penalty_and_refuses_another_seed():
    model = make_net()
    block = dict(method='issr', ratio=0.5, prune_iter=50, reg_step=0.05, reg_interval=2)
    sparsifier = build_sparsifier(model, **block)
    run(model, sparsifier, 5, lr=0.01)
    resumed = build_sparsifier(copy.deepcopy(model), **block)
    resumed.load_state_dict(sparsifier.state_dict())
    assert resumed.penalty == pytest.approx(0.1) and resumed.statistics()['sparsity/penalty'] == pytest.approx(0.1)
    state = build_sparsifier(make_net(), method='scratch', seed=1).state_dict()
    with pytest.raises(SparsityStateError, match='seed is 2 but the saved state was trained with 1'):
        build_sparsifier(make_net(), method='scratch', seed=2).load_state_dict(state)
    state = build_sparsifier(make_net(), method='l1', scope='global').state_dict()
    with pytest.raises(SparsityStateError, match="scope is 'layer' but the saved state was trained "
                       "with 'global'"):
        build_sparsifier(make_net(), method='l1').load_state_dict(state)


# --------------------------------------------------------------------------------------------- option keys
@pytest.mark.parametrize('block,message', [
    (dict(method='iht', alpha=0.9), "alpha does not apply to method 'iht'"),
    (dict(method='issp', reg_step=0.1), "reg_step does not apply to method 'issp'"),
    (dict(method='greg', interval=2), "interval does not apply to method 'greg'"),
    (dict(method='l1', interval=2), "interval does not apply to method 'l1'"),
    (dict(method='l1', seed=1), "seed does not apply to method 'l1'"),
    (dict(method='scratch', alpha=0.9), "alpha does not apply to method 'scratch'"),
    (dict(method='dense', ratio=0.9), "ratio does not apply to method 'dense'"),
    (dict(method='dense', scope='global'), "scope does not apply to method 'dense'"),
    (dict(method='issr', reg_stpe=0.1), 'reg_stpe is not a known key'),
    (dict(method='issr', reg_step=0), 'reg_step must be a number > 0, got 0'),
    (dict(method='greg', reg_interval=0.5), 'reg_interval must be an integer >= 1, got 0.5'),
    (dict(method='issr', reg_step=0.2, reg_max=0.1), 'reg_max (0.1) is below reg_step (0.2)'),
    (dict(method='scratch', seed=-1), 'seed must be an integer >= 0, got -1'),
    (dict(scope='model'), "scope must be layer or global, got 'model'"),
    (dict(pattern='4:2'), "pattern must be unstructured or \"N:M\" with 1 <= N < M, got '4:2'"),
    (dict(pattern=124), 'quote it: YAML reads an unquoted N:M as a base-60 number'),
    (dict(pattern='2:4', ratio=0.4), 'ratio (0.4) is below the 2/4 that pattern 2:4 removes'),
    (dict(pattern='2:4', ratio=0.9, ratios={'conv': 0.25}), 'ratios:conv (0.25) is below the 2/4'),
    (dict(ratios={'conv': 1.5}), 'ratios:conv must be a number with 0 < ratios:conv < 1'),
    (dict(ratios=['conv']), 'ratios must be a mapping of module-name patterns to ratios'),
])
def test_method_keys_are_validated_by_name(block, message):
    with pytest.raises(SparsityConfigError) as error:
        SparsityConfig.from_dict(block)
    assert message in str(error.value)


def test_yaml_reads_an_unquoted_n_m_as_a_number():
    assert yaml.safe_load('pattern: 2:4')['pattern'] == 124
    assert SparsityConfig.from_dict(yaml.safe_load('pattern: "2:4"\nratio: 0.5')).nm == (2, 4)


def test_penalty_schedule():
    config = SparsityConfig.from_dict(dict(method='issr', reg_step=1e-4, reg_interval=20, reg_max=0.5))
    assert [config.penalty_at(i) for i in (1, 19, 20, 39, 40)] == [0, 0, 1e-4, 1e-4, 2e-4]
    assert config.penalty_at(100000) == pytest.approx(0.5) and config.penalty_at(10**7) == 0.5
    assert math.isclose(SparsityConfig().penalty_at(100000), 0.5)  # defaults reach reg_max at the paper's K_p


# ------------------------------------------------------------------------------------ in ISSPSRModel (BasicSR)
def build_model(tmp_path, block, pretrain=None, seed=0):
    from basicsr.models import build_model as basicsr_build_model
    from conftest import tiny_options
    opt = tiny_options(tmp_path)
    opt['train']['sparsity'] = block
    opt['manual_seed'] = seed
    opt['network_g']['drop_path_rate'] = 0.0  # deterministic forward passes
    opt['path']['pretrain_network_g'] = pretrain
    opt.update(dist=False, rank=0, world_size=1, is_train=True, auto_resume=False)
    opt['path'].update(models=str(tmp_path), training_states=str(tmp_path), visualization=str(tmp_path))
    return basicsr_build_model(opt)


def dense_checkpoint(tmp_path):
    """A 'trained dense' checkpoint: the tiny SwinIR's weights, scaled so they differ from any fresh init."""
    model = build_model(tmp_path, dict(method='dense', prune_iter=1))
    params = {k: v * 1.5 for k, v in model.get_bare_model(model.net_g).state_dict().items()}
    path = tmp_path / 'dense.pth'
    torch.save({'params': params}, path)
    return path, params


BATCH = {'lq': torch.rand(1, 3, 8, 8), 'gt': torch.rand(1, 3, 32, 32)}


def test_model_l1_masks_the_dense_checkpoint(tmp_path):
    path, params = dense_checkpoint(tmp_path)
    model = build_model(tmp_path, dict(method='l1', ratio=0.9, prune_iter=5), pretrain=str(path))
    net = model.get_bare_model(model.net_g)
    for name in model.sparsifier.layer_names:
        weight = params[f'{name}.weight']
        mask = smallest(weight, pruned_count(0.9, weight.numel()))
        assert torch.equal(net.get_submodule(name).weight.detach() == 0, mask)
        assert torch.equal(net.get_submodule(name).weight.detach()[~mask], weight[~mask])
        assert torch.equal(model.net_g_ema.get_submodule(name).weight.detach() == 0, mask)


def test_model_scratch_reinitialises_and_masks_the_same_on_every_rank(tmp_path):
    path, params = dense_checkpoint(tmp_path)
    block = dict(method='scratch', ratio=0.9, prune_iter=5)
    models = []
    for rank_seed in (3, 4):  # BasicSR seeds the global RNG with manual_seed + rank
        torch.manual_seed(rank_seed)
        models.append(build_model(tmp_path, block, pretrain=str(path), seed=7))
    first, second = (m.get_bare_model(m.net_g).state_dict() for m in models)
    assert models[0].sparsifier.config.seed == 7
    for key, value in first.items():
        assert torch.equal(value, second[key]), key
    name = models[0].sparsifier.layer_names[0]
    assert not torch.equal(first[f'{name}.weight'], params[f'{name}.weight'])  # not the checkpoint
    for name, mask in models[0].sparsifier.masks().items():
        assert int(mask.sum()) == pruned_count(0.9, mask.numel())
        assert torch.equal(first[f'{name}.weight'] == 0, mask)
        ema = models[0].net_g_ema.get_submodule(name).weight.detach()
        assert torch.equal(ema, first[f'{name}.weight'])  # the EMA starts from the re-initialised, masked net


def test_model_issr_adds_the_penalty_gradient_before_the_optimizer_step(tmp_path):
    block = dict(method='issr', ratio=0.5, prune_iter=10, reg_step=0.25, reg_interval=2, reg_max=1.0)
    model = build_model(tmp_path, block)
    for group in model.optimizer_g.param_groups:
        group['lr'] = 0.0
    net = model.get_bare_model(model.net_g)
    for it in (1, 2, 3, 4):
        masks = {name: mask.clone() for name, mask in model.sparsifier.masks().items()}
        model.feed_data(BATCH)
        model.optimize_parameters(it)
        with_penalty = {name: net.get_submodule(name).weight.grad.clone() for name in masks}
        model.optimizer_g.zero_grad()
        model.cri_pix(model.net_g(model.lq), model.gt).backward()
        penalty = 0.25 * (it // 2)
        assert model.sparsifier.penalty == penalty
        for name, mask in masks.items():
            weight = net.get_submodule(name).weight.detach()
            expected = net.get_submodule(name).weight.grad + penalty * weight * mask
            assert torch.allclose(with_penalty[name], expected, rtol=1e-5, atol=1e-7), (it, name)



@pytest.mark.parametrize('block', [dict(method='dense', prune_iter=5),
                                   dict(method='greg', ratio=0.8, prune_iter=5, reg_step=0.1, reg_interval=1),
                                   dict(method='scratch', ratio=0.8, prune_iter=5, scope='global')])
@pytest.mark.slow
def test_basicsr_train_runs_the_method_and_saves_a_checkpoint(tiny_pairs, tmp_path, block):
    from conftest import tiny_options, write_options
    opt = tiny_options(tiny_pairs, name=f'tiny_{block["method"]}')
    opt['train']['sparsity'] = block
    opt['train']['total_iter'] = 10
    result = subprocess.run([sys.executable, '-m', 'issp_basicsr.cli', 'train', '-opt',
                             write_options(tmp_path / 'train.yml', opt)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    params = torch.load(tmp_path / 'experiments' / opt['name'] / 'models' / 'net_g_10.pth', weights_only=True)
    layers = {k: v for k, v in params['params_ema'].items() if k.endswith('.weight') and v.dim() in (2, 4)}
    zeros = sum(int((v == 0).sum()) for v in layers.values())
    total = sum(v.numel() for v in layers.values())
    expected = 0 if block['method'] == 'dense' else pruned_count(0.8, total)
    if block['method'] == 'greg':
        expected = sum(pruned_count(0.8, v.numel()) for v in layers.values())
    assert zeros == expected

# ------------------------------------------------------------------------------------------------ option files
def load_generator():
    import importlib.util
    generator = ROOT / 'options' / 'methods' / 'generate.py'
    spec = importlib.util.spec_from_file_location('generate_method_options', generator)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def without(opt, *keys):
    """The option dict without ``name``, ``train:sparsity`` and other dotted keys."""
    opt = copy.deepcopy(opt)
    for key in ('name', 'train:sparsity') + keys:
        node, parts = opt, key.split(':')
        for part in parts[:-1]:
            node = node[part]
        node.pop(parts[-1])
    return opt


def load_option(path):
    with open(ROOT / path) as handle:
        return yaml.safe_load(handle)


def test_method_option_files_are_generated_and_up_to_date():
    generator = load_generator()
    for path, text in generator.outputs().items():
        assert (ROOT / path).read_text() == text, f'{path} is stale: run python options/methods/generate.py'
    assert generator.main(['--check']) == 0


@pytest.mark.parametrize('backbone', ['swinir_light_x4', 'edsr_l_x4'])
def test_method_option_files_differ_only_in_the_sparsity_block(backbone):
    generator = load_generator()
    base = yaml.safe_load(generator.base_source(backbone)[0])
    shared = without(base)
    names, stages = set(), set()
    for method in generator.METHODS:
        opt = load_option(f'options/methods/{backbone}_{method}.yml')
        assert without(opt) == shared, method
        block = opt['train']['sparsity']
        config = SparsityConfig.from_dict(block, opt['train']['total_iter'])
        assert config.method == method and (method == 'dense' or config.ratio == 0.95)
        stages.add((config.prune_iter, config.hold_lr_during_pruning))
        names.add(opt['name'])
    assert len(stages) == 1 and len(names) == len(generator.METHODS)


@pytest.mark.slow
def test_swinir_method_option_files_pass_the_option_checks():
    from issp_basicsr.options import check_model, check_sparsity
    for method in load_generator().METHODS:
        opt = load_option(f'options/methods/swinir_light_x4_{method}.yml')
        check_model(opt)
        assert check_sparsity(opt).method == method


def test_rcan_option_file_is_the_edsr_l_one_with_basicsr_rcan():
    from basicsr.archs.rcan_arch import RCAN

    from issp_basicsr.sparsity import check_layers
    generator = load_generator()
    opt = load_option('options/methods/rcan_x4_issp.yml')
    base = yaml.safe_load(generator.base_source(generator.RCAN_BASE)[0])
    assert without(opt, 'network_g') == without(base, 'network_g') and opt['network_g']['type'] == 'RCAN'
    config = SparsityConfig.from_dict(opt['train']['sparsity'], opt['train']['total_iter'])
    assert config.method == 'issp' and config.ratio == 0.95
    network = {k: v for k, v in opt['network_g'].items() if k != 'type'}
    network.update(num_group=1, num_block=2)  # the same layer names, small
    model = RCAN(**network)
    check_layers(model, config)
    sparsifier = build_sparsifier(model, **opt['train']['sparsity'])
    sparsifier.step(config.prune_iter)
    assert sparsifier.sparsity() == pytest.approx(sparsifier.num_pruned() / sparsifier.num_weights())
