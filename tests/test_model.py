"""ISSPSRModel in-process: the learning-rate hold and the pruning step's place after the optimizer step."""
import torch
from conftest import tiny_options

from basicsr.models import build_model


def build(tiny_pairs, tmp_path, **sparsity):
    opt = tiny_options(tiny_pairs, **sparsity)
    opt.update(dist=False, rank=0, world_size=1, is_train=True, auto_resume=False)
    opt['path'].update(models=str(tmp_path), training_states=str(tmp_path), visualization=str(tmp_path))
    return build_model(opt)


def learning_rates(model, iters):
    rates = []
    for it in range(1, iters + 1):
        model.update_learning_rate(it)
        rates.append(model.get_current_learning_rate()[0])
    return rates


def test_schedule_starts_at_prune_iter_when_held(tiny_pairs, tmp_path):
    held = learning_rates(build(tiny_pairs, tmp_path, prune_iter=20, hold_lr_during_pruning=True), 35)
    # milestone 10 counted from prune_iter 20: the rate halves at iteration 30, not 11
    assert held[:29] == [2e-4] * 29 and held[29:] == [1e-4] * 6
    free = learning_rates(build(tiny_pairs, tmp_path, prune_iter=20), 35)
    assert free[:10] == [2e-4] * 10 and free[10:] == [1e-4] * 25


def test_a_zero_learning_rate_isolates_the_pruning_step(tiny_pairs, tmp_path):
    model = build(tiny_pairs, tmp_path, ratio=0.5, alpha=0.5, prune_iter=3)
    for group in model.optimizer_g.param_groups:
        group['lr'] = 0.0
    layer = model.net_g.conv_first.weight
    before = layer.detach().clone()
    batch = {'lq': torch.rand(1, 3, 8, 8), 'gt': torch.rand(1, 3, 32, 32)}
    model.feed_data(batch)
    model.optimize_parameters(1)
    shrunk = layer.detach() != before
    assert int(shrunk.sum()) == layer.numel() // 2
    assert torch.equal(layer.detach()[shrunk], before[shrunk] * 0.5)
    for it in (2, 3):
        model.feed_data(batch)
        model.optimize_parameters(it)
    assert int((layer == 0).sum()) == layer.numel() // 2
    ema = model.net_g_ema.conv_first.weight
    assert torch.equal(ema == 0, layer == 0)
