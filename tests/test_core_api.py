"""The pruning core as a plain-PyTorch user meets it: it imports alone, attaches to an optimizer, says which
polarity its masks have, and takes new methods through its registry."""
import subprocess
import sys

import pytest
import torch
from reference_selection import smallest
from torch import nn

from issp_basicsr.errors import SparsityConfigError, keys_under
from issp_basicsr.sparsity import METHODS, PruningMethod, SparsityConfig, build_sparsifier, register_method


def run_python(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_core_imports_without_basicsr_or_opencv():
    result = run_python('import sys, issp_basicsr.sparsity\n'
                        'loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("basicsr", "cv2", "skimage"))\n'
                        'print(loaded)')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'


@pytest.mark.slow
def test_importing_the_package_sets_basicsr_up_when_basicsr_is_imported():
    """The route of BasicSR's own pipeline: ``import issp_basicsr``, then BasicSR's modules."""
    result = run_python('import sys, issp_basicsr\n'
                        'assert "basicsr" not in sys.modules\n'
                        'import basicsr.train\n'
                        'from basicsr.utils.registry import MODEL_REGISTRY\n'
                        'from issp_basicsr import compat\n'
                        'print("ISSPSRModel" in MODEL_REGISTRY,\n'
                        '      basicsr.train.load_resume_state is compat.load_resume_state)')
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['True', 'True']


@pytest.mark.slow
def test_an_adapter_module_imported_first_does_not_deadlock_the_registration():
    """``issp_basicsr.checkpoint`` imports BasicSR half-way through its own import: registration waits."""
    result = run_python('import issp_basicsr.checkpoint\n'
                        'from basicsr.models import build_model\n'
                        'from basicsr.utils.registry import MODEL_REGISTRY\n'
                        'import issp_basicsr.models\n'
                        'print("ISSPSRModel" in MODEL_REGISTRY)')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'True'


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))


def train(model, optimizer, iterations):
    for _ in range(iterations):
        x = torch.rand(2, 3, 8, 8)
        loss = (model(x) - x).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_attach_runs_the_step_inside_every_optimizer_step():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sparsifier = build_sparsifier(model, method='iht', ratio=0.5, prune_iter=5)
    hooks = sparsifier.attach(optimizer)
    train(model, optimizer, 3)
    assert sparsifier.last_step == 3 and sparsifier.phase == 'prune'
    for name, mask in sparsifier.masks().items():  # IHT zeroed the set chosen after the third step
        assert bool((model.get_submodule(name).weight[mask] == 0).all())
    train(model, optimizer, 2)
    assert sparsifier.last_step == 5 and sparsifier.phase == 'finetune'
    hooks.remove()
    train(model, optimizer, 1)
    assert sparsifier.last_step == 5  # detached: the optimizer no longer drives it


def test_attach_with_the_loops_own_counter_and_the_penalty_before_the_step():
    """``current_iter`` decides the iteration; issr's pre_step adds ``penalty * w`` to the gradient of the set."""
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay, the gradient is visible
    sparsifier = build_sparsifier(model, method='issr', ratio=0.5, prune_iter=1000, reg_step=0.1, reg_interval=1,
                                  reg_max=0.5)
    counter = {'it': 40}
    sparsifier.attach(optimizer, current_iter=lambda: counter['it'])
    x = torch.rand(2, 3, 8, 8)
    (model(x) - x).abs().mean().backward()
    plain = {name: model.get_submodule(name).weight.grad.clone() for name in sparsifier.masks()}
    optimizer.step()
    assert sparsifier.last_step == 40 and sparsifier.penalty == 0.5
    for name, mask in sparsifier.masks().items():
        weight = model.get_submodule(name).weight
        assert torch.allclose(weight.grad, plain[name] + 0.5 * weight.detach() * mask)


def test_keep_masks_are_the_complement_of_masks():
    model = make_model()
    sparsifier = build_sparsifier(model, method='l1', ratio=0.75)
    for name, kept in sparsifier.keep_masks().items():
        weight = model.get_submodule(name).weight
        assert torch.equal(kept, ~smallest(weight, sparsifier.masks()[name].sum().item()))
        assert int((~kept).sum()) == int(0.75 * weight.numel())


def test_core_errors_name_the_key_and_the_adapter_adds_its_prefix():
    with pytest.raises(SparsityConfigError) as error:
        SparsityConfig.from_dict({'ratio': 1.5})
    assert str(error.value) == 'ratio must be a number with 0 < ratio < 1, got 1.5' and error.value.key == 'ratio'
    with pytest.raises(SparsityConfigError) as error, keys_under('train:sparsity'):
        build_sparsifier(make_model(), exclude=['nothing'])
    assert str(error.value) == "train:sparsity:exclude pattern 'nothing' matches no module of Sequential"


def test_a_method_registered_once_works_everywhere():
    """A new definition (a set chosen once from the starting weights, zeroed at prune_iter) needs no other change."""
    method = register_method(PruningMethod('fixed_shrink', 'test: a fixed magnitude set, masked at prune_iter',
                                           keys=('alpha', ), choose='at_start'))
    try:
        with pytest.raises(SparsityConfigError, match="interval does not apply to method 'fixed_shrink'"):
            SparsityConfig.from_dict({'method': 'fixed_shrink', 'interval': 2})
        assert method.accepted_keys == ('method', 'prune_iter', 'hold_lr_during_pruning', 'ratio', 'exclude',
                                        'scope', 'pattern', 'nm_layout', 'ratios', 'alpha')
        model = make_model()
        sparsifier = build_sparsifier(model, method='fixed_shrink', ratio=0.5, alpha=0.5, prune_iter=3)
        chosen = {name: mask.clone() for name, mask in sparsifier.masks().items()}
        assert set(chosen) == {'0', '2'}
        for name, mask in chosen.items():  # chosen from the starting weights, by magnitude
            assert torch.equal(mask, smallest(model.get_submodule(name).weight, mask.numel() // 2))
        before = {name: model.get_submodule(name).weight.detach().clone() for name in chosen}
        sparsifier.step(1)  # not a re-selecting method: the step neither re-selects nor shrinks
        for name in chosen:
            assert torch.equal(model.get_submodule(name).weight, before[name])
        sparsifier.step(3)
        assert sparsifier.frozen
        for name, mask in chosen.items():
            assert torch.equal(sparsifier.masks()[name], mask)
            assert bool((model.get_submodule(name).weight[mask] == 0).all())
    finally:
        del METHODS['fixed_shrink']
    with pytest.raises(SparsityConfigError, match='method must be one of'):
        SparsityConfig.from_dict({'method': 'fixed_shrink'})


def test_statistics_measure_the_residue_left_in_the_unimportant_set():
    """Mean and max |w| over the current unimportant set during pruning; gone once the freeze zeroed it."""
    model = make_model()
    sparsifier = build_sparsifier(model, method='issp', ratio=0.75, alpha=0.5, prune_iter=3)
    sparsifier.step(1)
    stats = sparsifier.statistics()
    residue = torch.cat([model.get_submodule(name).weight.detach()[mask].abs()
                         for name, mask in sparsifier.masks().items()])
    assert residue.numel() == sparsifier.num_pruned()
    assert stats['sparsity/unimportant_abs_mean'] == pytest.approx(float(residue.double().mean()), rel=1e-6)
    assert stats['sparsity/unimportant_abs_max'] == pytest.approx(float(residue.max()), rel=1e-6)
    sparsifier.step(3)
    assert 'sparsity/unimportant_abs_mean' not in sparsifier.statistics()


def test_flat_n_m_layout_prunes_19_of_every_20_consecutive_weights():
    """The reference's ``--pick_pruned min_19:20``: groups of 20 in the flattened weight, the 19 smallest go."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 5, 3), nn.Linear(10, 40))
    before = {name: model.get_submodule(name).weight.detach().clone() for name in ('0', '1')}
    sparsifier = build_sparsifier(model, method='iht', ratio=0.95, pattern='19:20', nm_layout='flat', prune_iter=1)
    sparsifier.step(1)
    for name, weight in before.items():
        groups = weight.reshape(-1, 20).abs()
        mask = sparsifier.masks()[name].reshape(-1, 20)
        assert torch.equal(mask.sum(1), torch.full((groups.shape[0], ), 19))
        assert torch.equal((~mask).nonzero()[:, 1], groups.argmax(1))  # the largest of each group is kept
        assert torch.equal(model.get_submodule(name).weight.detach().reshape(-1, 20) == 0, mask)


def test_nm_layout_errors_name_the_key():
    with pytest.raises(SparsityConfigError, match='nm_layout applies to an N:M pattern only'):
        SparsityConfig.from_dict({'nm_layout': 'flat'})
    with pytest.raises(SparsityConfigError, match="nm_layout must be input or flat, got 'rows'"):
        SparsityConfig.from_dict({'pattern': '2:4', 'ratio': 0.5, 'nm_layout': 'rows'})
    with pytest.raises(SparsityConfigError, match=r'pattern 19:20 \(nm_layout flat\): layer 0 has 30 weights'):
        build_sparsifier(nn.Sequential(nn.Linear(3, 10)), ratio=0.95, pattern='19:20', nm_layout='flat')


def test_a_ratio_never_removes_a_layer_whole():
    """0.99 of a 50-weight layer is ceil(49.5) = 50: one weight is kept, and the layer is reported as capped."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 10, bias=False), nn.Linear(10, 100, bias=False))
    sparsifier = build_sparsifier(model, method='iht', ratio=0.99, prune_iter=1)
    sparsifier.step(1)
    assert sparsifier.capped_layers == ['0']
    assert int(sparsifier.masks()['0'].sum()) == 49 and int(sparsifier.masks()['1'].sum()) == 990
    kept = model[0].weight.detach().abs().reshape(-1).argmax()
    assert model[0].weight.reshape(-1)[kept] != 0 and int((model[0].weight != 0).sum()) == 1
