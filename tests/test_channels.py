"""Channel granularity: coupled groups, channel ISS-P, freeze, resume, bad combinations."""
import subprocess
import sys

import pytest
import torch

import issp_basicsr  # noqa: F401  (BasicSR fixes)
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN
from basicsr.archs.srresnet_arch import MSRResNet
from issp_basicsr.sparsity import SparsityConfig, SparsityConfigError, build_sparsifier
from issp_basicsr.sparsity.channels import coupled_groups


def edsr():
    torch.manual_seed(0)
    return EDSR(3, 3, num_feat=8, num_block=2, upscale=2)


def summary(net):
    groups, _ = coupled_groups(net)
    return {g.root: (g.channels, len([m for m in g.members if m.dim == 0]), len([m for m in g.members if m.dim == 1]),
                     g.kept) for g in groups}


def test_edsr_groups_one_residual_stream():
    assert summary(edsr()) == {
        'conv_last': (3, 1, 0, 'reaches the network output'),
        'upsample.0': (32, 1, 1, 'feeds a PixelShuffle'),
        # conv_first, body.0.conv2, body.1.conv2, conv_after_body out; body.*.conv1, conv_after_body, upsample.0 in
        'conv_after_body': (8, 4, 4, None),
        'body.1.conv1': (8, 1, 1, None),
        'body.0.conv1': (8, 1, 1, None),
    }


def test_rcan_and_msrresnet_groups():
    rcan = summary(RCAN(3, 3, num_feat=8, num_group=2, num_block=2, squeeze_factor=4, upscale=2))
    # the residual stream: conv_first, 2x2 rcab conv2 + CA, 2 group convs, conv_after_body (12 layers each way)
    assert rcan['conv_after_body'] == (8, 12, 12, None)
    assert sum(1 for v in rcan.values() if v[3] is None) == 9
    assert rcan['body.0.residual_group.0.rcab.3.attention.1'] == (2, 1, 1, None)
    msr = summary(MSRResNet(3, 3, num_feat=8, num_block=2, upscale=4))
    assert msr['body.1.conv2'] == (8, 3, 3, None)
    assert msr['upconv1'][3] == msr['upconv2'][3] == 'feeds a PixelShuffle'
    assert sum(1 for v in msr.values() if v[3] is None) == 4


def test_channel_issp_shrinks_exactly_the_chosen_channels(capsys, monkeypatch):
    import logging
    monkeypatch.setattr(logging.getLogger('basicsr'), 'handlers', [])  # no BasicSR log set up: the list is printed
    net = edsr()
    sparsifier = build_sparsifier(net, method='issp', granularity='channel', ratio=0.5, alpha=0.5, prune_iter=10)
    assert 'kept whole: upsample.0' in capsys.readouterr().out
    before = {n: m.weight.detach().clone() for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    biases = {n: m.bias.detach().clone() for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    sparsifier.step(1)
    unit = sparsifier.groups[0]
    chosen = unit.removed_channels()
    assert {k: len(v) for k, v in chosen.items()} == {'conv_after_body': 4, 'body.1.conv1': 4, 'body.0.conv1': 4}
    stream = chosen['conv_after_body']
    # importance = sum of squares of all the group's weights: the chosen are the 4 smallest
    rows_of = {'conv_first': 0, 'body.0.conv2': 0, 'body.1.conv2': 0, 'conv_after_body': 0}
    cols_of = {'body.0.conv1': 1, 'body.1.conv1': 1, 'conv_after_body': 1, 'upsample.0': 1}
    imp = torch.zeros(8)
    for name, dim in list(rows_of.items()) + list(cols_of.items()):
        w = before[name].square()
        imp += w.sum(dim=[d for d in range(4) if d != dim])
    assert sorted(imp.argsort()[:4].tolist()) == stream
    masks = sparsifier.masks()
    for name, m in net.named_modules():
        if not isinstance(m, torch.nn.Conv2d):
            continue
        expected = torch.zeros_like(m.weight, dtype=torch.bool)
        if name in rows_of:
            expected[stream] = True
        if name in cols_of:
            expected[:, stream] = True
        if name.endswith('conv1'):
            expected[chosen[name]] = True
        if name.endswith('conv2'):
            expected[:, chosen[name.replace('conv2', 'conv1')]] = True
        assert torch.equal(masks[name], expected), name
        assert torch.equal(m.weight.detach(), torch.where(expected, before[name] * 0.5, before[name])), name
        assert torch.equal(m.bias.detach(), biases[name]), name  # biases are not shrunk


def test_freeze_zeroes_and_reapplies():
    net = edsr()
    sparsifier = build_sparsifier(net, method='issp', granularity='channel', ratio=0.25, prune_iter=2)
    sparsifier.step(1)
    sparsifier.step(2)
    assert sparsifier.frozen
    masks = {n: m.clone() for n, m in sparsifier.masks().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    sparsifier.step(3)
    for name, mask in masks.items():
        w = net.get_submodule(name).weight.detach()
        assert int((w[mask] != 0).sum()) == 0 and bool((w[~mask] != 0).all())
    assert masks['conv_first'].any(dim=(1, 2, 3)).sum() == 2  # ceil(0.25 * 8) stream channels



def channel_importance(net):
    """Per pruned group (root name): the sum of squares of every coupled weight slice of each root channel,
    written from the groups' members, independently of the unit's slot tables."""
    groups, _ = coupled_groups(net)
    out = {}
    for group in (g for g in groups if g.kept is None):
        imp = torch.zeros(group.channels, dtype=torch.float64)
        for member in group.members:
            w = net.get_submodule(member.layer).weight.detach().double().square()
            per_index = w.sum(dim=[d for d in range(w.dim()) if d != member.dim])
            imp.index_add_(0, torch.tensor(member.root_index), per_index[torch.tensor(member.layer_index)])
        out[group.root] = imp
    return out


def test_ratios_at_channel_granularity_give_a_group_its_own_count():
    net = edsr()
    imp = channel_importance(net)
    s = build_sparsifier(net, method='l1', granularity='channel', ratio=0.5, ratios={'body.0.conv1': 0.25})
    chosen = s.groups[0].removed_channels()
    assert {k: len(v) for k, v in chosen.items()} == {'conv_after_body': 4, 'body.1.conv1': 4, 'body.0.conv1': 2}
    # a pattern names the group of the layer's output channels: body.0.conv2 writes the residual stream
    stream = build_sparsifier(edsr(), method='l1', granularity='channel', ratio=0.5, ratios={'body.0.conv2': 0.25})
    assert {k: len(v) for k, v in stream.groups[0].removed_channels().items()} == {
        'conv_after_body': 2, 'body.1.conv1': 4, 'body.0.conv1': 4}
    for root, channels in chosen.items():
        assert channels == sorted(imp[root].argsort()[:len(channels)].tolist()), root
    assert bool((net.body[0].conv1.weight[chosen['body.0.conv1']] == 0).all())
    with pytest.raises(SparsityConfigError, match="ratios pattern 'upsample.0' names no layer whose output"):
        build_sparsifier(edsr(), method='l1', granularity='channel', ratio=0.5, ratios={'upsample.0': 0.2})
    with pytest.raises(SparsityConfigError, match='ratios does not apply with scope global at granularity channel'):
        build_sparsifier(edsr(), method='l1', granularity='channel', ratio=0.5, scope='global',
                         ratios={'body.0.conv*': 0.25})


def test_global_scope_at_channel_granularity_ranks_all_groups_together():
    net = edsr()
    with torch.no_grad():  # make the groups unequal: body.1's inner channels small, so they go first
        net.body[1].conv1.weight.mul_(0.01)
        net.body[1].conv2.weight.mul_(0.01)
    imp = channel_importance(net)
    s = build_sparsifier(net, method='l1', granularity='channel', ratio=0.5, scope='global')
    chosen = s.groups[0].removed_channels()
    assert sum(len(v) for v in chosen.values()) == 12  # ceil(0.5 * 24) over the three groups
    # the 12 least important channels over all groups, each group's most important one excluded
    candidates = sorted((float(v), root, c) for root, values in imp.items()
                        for c, v in enumerate(values) if c != int(values.argmax()))
    expected = {}
    for _, root, c in candidates[:12]:
        expected.setdefault(root, []).append(c)
    assert {k: v for k, v in chosen.items() if v} == {k: sorted(v) for k, v in expected.items()}
    assert len(chosen['body.1.conv1']) == 7  # all but its most important channel


def test_l1_and_assl_at_channel_granularity():
    net = edsr()
    s = build_sparsifier(net, method='l1', granularity='channel', ratio=0.5)
    assert s.frozen and float(s.sparsity()) > 0.5
    net = edsr()
    s = build_sparsifier(net, method='assl', granularity='channel', ratio=0.5, prune_iter=5, reg_step=0.1,
                         reg_interval=1)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    s.pre_step(3)
    g = net.conv_first.weight.grad
    mask = s.masks()['conv_first']
    assert torch.allclose(g[mask], 0.3 * net.conv_first.weight.detach()[mask]) and int((g[~mask] != 0).sum()) == 0


def test_resume_bit_exact_state_dict_round_trip():
    net = edsr()
    s = build_sparsifier(net, method='issp', granularity='channel', ratio=0.5, prune_iter=4)
    s.step(1)
    state = s.state_dict()
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    net2 = edsr()
    net2.load_state_dict(weights)
    s2 = build_sparsifier(net2, method='issp', granularity='channel', ratio=0.5, prune_iter=4)
    s2.load_state_dict(state)
    for it in (2, 3, 4, 5):
        s.step(it)
        s2.step(it)
    for (k, v), (k2, v2) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert torch.equal(v, v2), k
    assert all(torch.equal(s.masks()[n], s2.masks()[n]) for n in s.masks())
    with pytest.raises(Exception, match='granularity is'):
        build_sparsifier(edsr(), method='issp', ratio=0.5, prune_iter=4).load_state_dict(state)


@pytest.mark.parametrize('block, key, message', [
    ({'granularity': 'channel', 'pattern': '2:4'}, 'pattern',
     "pattern ('2:4') does not apply to granularity channel (a channel is removed whole)"),
    ({'method': 'issr', 'granularity': 'channel'}, 'granularity', "granularity does not apply to method 'issr'"),
    ({'method': 'assl'}, 'granularity', "granularity must be channel for method 'assl' (it prunes whole channels "
     "only)"),
    ({'granularity': 'filter'}, 'granularity', "granularity must be weight or channel, got 'filter'"),
])
def test_bad_combinations_one_line(block, key, message):
    with pytest.raises(SparsityConfigError) as error:
        SparsityConfig.from_dict(block)
    assert str(error.value) == message
    assert error.value.key == key


def test_core_import_stays_free_of_torch_pruning():
    code = ('import sys, issp_basicsr.sparsity; '
            'assert "torch_pruning" not in sys.modules and "basicsr" not in sys.modules, "imported"')
    subprocess.run([sys.executable, '-c', code], check=True)
