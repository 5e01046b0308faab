"""Shipping a pruned model: compressed checkpoint round trips and size, sparse execution equal to dense, exact
efficiency counts, and the export / report-efficiency commands end to end. No timing asserts."""
import json
import os
from collections import OrderedDict

import pytest
import torch
from torch import nn

import issp_basicsr  # noqa: F401  (BasicSR fixes before its archs are imported)
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.swinir_arch import SwinIR
from issp_basicsr.cli import main as cli_main
from issp_basicsr.deploy import (CompressedFormatError, SparseConv2d, SparseLinear, compress_checkpoint,
                                 convert_to_dense, convert_to_sparse, decompress_checkpoint, load_compressed,
                                 load_into, load_sparse, load_state_dict, plan_sparse_layers, save_compressed)
from issp_basicsr.deploy.compressed import decode_sparse, encode_sparse, serialized_size, unpruned_bytes
from issp_basicsr.deploy.efficiency import count_layers, efficiency_report
from issp_basicsr.sparsity import build_sparsifier

torch.set_num_threads(1)

SWINIR_TINY = dict(upscale=4, in_chans=3, img_size=16, window_size=8, img_range=1., depths=[2], embed_dim=16,
                   num_heads=[2], mlp_ratio=2, upsampler='pixelshuffledirect', resi_connection='1conv')
EDSR_TINY = dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=2, upscale=2, res_scale=0.1)


def pruned(model, ratio=0.9, seed=0):
    torch.manual_seed(seed)
    for p in model.parameters():  # non-zero biases, so that bias handling is exercised
        if p.dim() == 1:
            nn.init.uniform_(p, -0.1, 0.1)
    build_sparsifier(model, method='iht', ratio=ratio, prune_iter=1).step(1)
    return model.eval()


def swinir(ratio=0.9, seed=0):
    torch.manual_seed(seed)
    return pruned(SwinIR(**SWINIR_TINY), ratio, seed)


def edsr(ratio=0.9, seed=0, **overrides):
    torch.manual_seed(seed)
    return pruned(EDSR(**{**EDSR_TINY, **overrides}), ratio, seed)


def same_bits(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    return torch.equal(a, b)


def assert_same_checkpoint(restored, original):
    assert list(restored) == list(original)
    for key in original:
        assert list(restored[key]) == list(original[key])
        for name in original[key]:
            assert same_bits(restored[key][name], original[key][name]), f'{key}.{name}'


# ------------------------------------------------------------------------------------------ round trips
def test_round_trip_identical_tensors_and_outputs(tmp_path):
    model, ema = swinir(0.9, seed=0), swinir(0.9, seed=1)
    original = {'params': model.state_dict(), 'params_ema': ema.state_dict()}
    path = tmp_path / 'net.sparse.pth'
    compressed = save_compressed(original, path)
    kinds = {name: entry['kind'] for name, entry in compressed['checkpoint']['params'].items()
             if isinstance(entry, dict)}
    assert kinds['layers.0.residual_group.blocks.1.attn_mask'] == 'deflated'  # zeros and -100: deflated dense
    assert kinds['layers.0.residual_group.blocks.0.attn.relative_position_index'] == 'deflated'
    assert kinds['layers.0.residual_group.blocks.0.attn.qkv.weight'] == 'sparse'
    assert_same_checkpoint(load_compressed(path), original)
    assert isinstance(load_compressed(path)['params'], OrderedDict)

    x = torch.rand(1, 3, 16, 16)
    for key, reference in (('params', model), ('params_ema', ema)):
        plain = load_into(SwinIR(**SWINIR_TINY).eval(), path, param_key=key)
        assert torch.equal(plain(x), reference(x))
        sparse = load_sparse(SwinIR(**SWINIR_TINY), path, param_key=key, max_density=1.0)
        assert any(isinstance(m, SparseLinear) for m in sparse.modules())
        torch.testing.assert_close(sparse(x), reference(x), atol=1e-4, rtol=0)


def test_round_trip_keeps_negative_zero_and_bare_state_dicts(tmp_path):
    weight = torch.zeros(8, 8, 3, 3)
    weight[0, 0, 0, 0], weight[1, 2, 1, 1], weight[7, 7, 2, 2] = -0.0, 1.5, -2.25
    state = OrderedDict([('conv.weight', weight), ('conv.bias', torch.arange(8.))])
    restored = decompress_checkpoint(compress_checkpoint(state))
    assert isinstance(restored, OrderedDict) and not {'params', 'params_ema'} & set(restored)
    assert same_bits(restored['conv.weight'], weight)
    assert torch.signbit(restored['conv.weight'][0, 0, 0, 0])


@pytest.mark.parametrize('ratio,index', [(0.5, 'bitmask'), (0.99, 'csr')])
def test_index_is_the_smaller_of_bitmask_and_csr(ratio, index):
    torch.manual_seed(0)
    weight = torch.randn(64, 64, 3, 3)
    weight.view(-1)[weight.abs().view(-1).argsort()[:int(ratio * weight.numel())]] = 0
    entry = encode_sparse(weight)
    assert entry['index'] == index and entry['nnz'] == int(torch.count_nonzero(weight))
    assert same_bits(decode_sparse(entry), weight)


def test_csr_index_with_empty_rows():
    weight = torch.zeros(6, 40)
    weight[2, 5], weight[2, 39], weight[5, 0] = 1., 2., 3.
    entry = encode_sparse(weight)
    assert same_bits(decode_sparse(entry), weight)


@pytest.mark.parametrize('ratio', [0.9, 0.95, 0.99])
def test_size_bound(tmp_path, ratio):
    """compressed <= 1.2 (1 - r) * dense checkpoint + the parameters stored dense."""
    model = edsr(ratio, num_feat=128, num_block=2)
    dense_path, sparse_path = tmp_path / 'net.pth', tmp_path / 'net.sparse.pth'
    torch.save({'params': model.state_dict()}, dense_path)
    compressed = save_compressed(dense_path, sparse_path)
    kinds = [e['kind'] if isinstance(e, dict) else 'raw' for e in compressed['checkpoint']['params'].values()]
    assert kinds.count('sparse') == 2 * 2 + 4  # conv_first, body, conv_after_body, upsample, conv_last
    unpruned = unpruned_bytes(compressed)
    assert unpruned == sum(t.numel() * 4 for n, t in model.state_dict().items() if not n.endswith('weight'))
    assert os.path.getsize(sparse_path) <= 1.2 * (1 - ratio) * os.path.getsize(dense_path) + unpruned


def test_half(tmp_path):
    model = edsr(0.9)
    original = {'params': model.state_dict(), 'params_ema': model.state_dict()}
    full, half = tmp_path / 'full.pth', tmp_path / 'half.pth'
    save_compressed(original, full)
    save_compressed(original, half, half=True, ema=True)
    restored = load_compressed(half)
    assert list(restored) == ['params']  # --ema keeps params_ema, stored as params
    for name, tensor in original['params_ema'].items():
        assert restored['params'][name].dtype == tensor.dtype
        assert torch.equal(restored['params'][name], tensor.half().to(tensor.dtype))
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)


# ------------------------------------------------------------------------------------------ bad files
def test_truncated_foreign_and_corrupt_files(tmp_path):
    model = edsr(0.9)
    good = tmp_path / 'good.sparse.pth'
    save_compressed({'params': model.state_dict()}, good)
    data = good.read_bytes()

    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(CompressedFormatError, match='truncated.pth: not a readable PyTorch checkpoint'):
        load_compressed(truncated)
    foreign = tmp_path / 'notes.txt'
    foreign.write_text('not a checkpoint')
    with pytest.raises(CompressedFormatError, match='notes.txt: not a readable'):
        load_compressed(foreign)
    plain = tmp_path / 'plain.pth'
    torch.save({'params': model.state_dict()}, plain)
    with pytest.raises(CompressedFormatError, match='plain.pth: not an issp_basicsr compressed checkpoint'):
        load_compressed(plain)
    pickled = tmp_path / 'pickled.pth'
    torch.save({'params': model.state_dict(), 'extra': nn.ReLU()}, pickled)  # weights_only refuses modules
    with pytest.raises(CompressedFormatError, match='pickled.pth: not a readable'):
        load_compressed(pickled)
    state = tmp_path / 'training.state'
    torch.save({'iter': 5, 'optimizers': [], 'schedulers': []}, state)
    with pytest.raises(CompressedFormatError, match='training.state: not a model checkpoint'):
        save_compressed(state, tmp_path / 'x.pth')

    compressed = torch.load(good, weights_only=True)
    entry = compressed['checkpoint']['params']['body.0.conv1.weight']
    entry['blob'][-8:] = 0  # damage the deflated values
    corrupt = tmp_path / 'corrupt.pth'
    torch.save(compressed, corrupt)
    with pytest.raises(CompressedFormatError, match='corrupt.pth: params is corrupt'):
        load_compressed(corrupt)
    with pytest.raises(CompressedFormatError, match='has no params_ema'):
        save_compressed({'params': model.state_dict()}, tmp_path / 'y.pth', ema=True)


# ------------------------------------------------------------------------------------------ sparse execution
def sparse_weight(module, density, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        keep = torch.rand(module.weight.shape, generator=generator) < density
        module.weight.mul_(keep)
    return module


@pytest.mark.parametrize('kwargs', [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=1, bias=False),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(0, 2), bias=False),
    dict(kernel_size=1),
    dict(kernel_size=3, padding=2, dilation=2),
    dict(kernel_size=3, padding='same'),
    dict(kernel_size=4, padding='same', bias=False),
    dict(kernel_size=3, padding='valid'),
])
@pytest.mark.parametrize('batch', [1, 3])
def test_sparse_conv2d_equals_dense(kwargs, batch):
    torch.manual_seed(0)
    conv = sparse_weight(nn.Conv2d(6, 5, **kwargs), 0.2, seed=1)
    sparse = SparseConv2d.from_dense(conv)
    for height, width in ((9, 11), (8, 8)):
        x = torch.randn(batch, 6, height, width)
        with torch.no_grad():
            torch.testing.assert_close(sparse(x), conv(x), atol=1e-4, rtol=0)
    if not isinstance(conv.padding, str) or conv.padding == 'valid' or kwargs['kernel_size'] % 2:
        assert torch.equal(sparse.to_dense().weight, conv.weight)


def test_sparse_conv2d_channels_last_and_views():
    conv = sparse_weight(nn.Conv2d(4, 4, 3, padding=1), 0.3, seed=2)
    sparse = SparseConv2d.from_dense(conv)
    x = torch.randn(2, 4, 7, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = sparse(x)
        torch.testing.assert_close(out, conv(x), atol=1e-4, rtol=0)
        torch.testing.assert_close(sparse(out), conv(conv(x)), atol=1e-4, rtol=0)  # strided output as input


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('shape', [(7, 12), (2, 5, 12), (2, 3, 4, 12)])
def test_sparse_linear_equals_dense(bias, shape):
    torch.manual_seed(0)
    linear = sparse_weight(nn.Linear(12, 9, bias=bias), 0.2, seed=3)
    sparse = SparseLinear.from_dense(linear)
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), linear(x), atol=1e-4, rtol=0)
        torch.testing.assert_close(sparse(x.transpose(0, -2)), linear(x.transpose(0, -2)), atol=1e-4, rtol=0)
    assert torch.equal(sparse.to_dense().weight, linear.weight)


def test_grouped_conv_stays_dense():
    conv = sparse_weight(nn.Conv2d(4, 4, 3, groups=2), 0.2, seed=0)
    model = nn.Sequential(conv, nn.Linear(2, 2))
    plan = plan_sparse_layers(model, max_density=1.0)
    assert plan['0']['sparse'] is False and 'unsupported' in plan['0']['reason']
    assert plan['1']['sparse'] is False and plan['1']['reason'] == 'dense weight'


@pytest.mark.parametrize('build,size', [(swinir, (16, 24)), (edsr, (13, 10))])
def test_sparse_network_equals_dense(build, size):
    model = build(0.9)
    converted = convert_to_sparse(model, max_density=1.0)
    kinds = (SparseConv2d, SparseLinear)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sum(isinstance(m, kinds) for m in converted.modules()) == len(layers)
    assert not any(isinstance(m, kinds) for m in model.modules())  # a copy unless inplace
    for seed in range(2):
        x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            torch.testing.assert_close(converted(x), model(x), atol=1e-4, rtol=0)
    back = convert_to_dense(converted)
    assert all(same_bits(back.state_dict()[k], v) for k, v in model.state_dict().items())


def test_plan_by_density_and_by_timing():
    model = edsr(0.9)
    with torch.no_grad():
        model.conv_first.weight.fill_(0.5)  # dense again
    plan = plan_sparse_layers(model, max_density=0.2)
    assert plan['conv_first']['sparse'] is False and plan['conv_last']['sparse'] is True
    assert plan_sparse_layers(model, max_density=0.05)['conv_last']['sparse'] is False  # density 0.1
    timed = plan_sparse_layers(model, torch.rand(1, 3, 8, 8), repeats=1)
    assert timed['conv_first']['reason'] == 'dense weight'
    assert all(e['reason'] == 'timed' and e['dense_ms'] > 0 for n, e in timed.items() if n != 'conv_first')
    converted = convert_to_sparse(model, plan=timed)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ efficiency report
class Tiny(nn.Module):
    """Conv (3->4, 3x3, pad 1), conv (4->2, 3x3, stride 2, no bias), a Linear over the 2 channels, and one
    weight-free product (x @ x^T per token row) that counts as 'other'."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 2, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(2, 5)

    def forward(self, x):
        x = self.conv2(self.conv1(x))  # (1, 2, 4, 4)
        tokens = x.flatten(2).transpose(1, 2)  # (1, 16, 2)
        gram = tokens @ tokens.transpose(1, 2)  # (1, 16, 16): 16 * 16 * 2 MACs
        return self.fc(tokens) + gram.sum()


def test_report_counts_exact():
    model = Tiny()
    with torch.no_grad():
        for module in (model.conv1, model.conv2, model.fc):
            module.weight.fill_(1.)
        model.conv1.weight[:, :, 0, :] = 0  # 12 of 108 zero
        model.conv2.weight[0] = 0  # 36 of 72 zero
        model.fc.weight[1:4] = 0  # 6 of 10 zero
        model.conv1.bias.copy_(torch.tensor([0., 1., 1., 1.]))
        model.fc.bias.zero_()
    x = torch.rand(1, 3, 8, 8)
    rows, other = count_layers(model, x)
    by_name = {row['name']: row for row in rows}
    assert by_name['conv1']['params'] == 108 + 4 and by_name['conv1']['nonzero_params'] == 72 + 3
    assert by_name['conv1']['dense_macs'] == 64 * 108 and by_name['conv1']['sparse_macs'] == 64 * 72
    assert by_name['conv2']['params'] == 72 and by_name['conv2']['nonzero_params'] == 36
    assert by_name['conv2']['dense_macs'] == 16 * 72 and by_name['conv2']['sparse_macs'] == 16 * 36
    assert by_name['fc']['params'] == 15 and by_name['fc']['nonzero_params'] == 4
    assert by_name['fc']['dense_macs'] == 16 * 10 and by_name['fc']['sparse_macs'] == 16 * 4
    assert other == 16 * 16 * 2

    report = efficiency_report(model, x, repeats=1, max_density=0.6)
    total = report['total']
    assert total['params'] == 112 + 72 + 15 and total['nonzero_params'] == 75 + 36 + 4
    assert total['dense_macs'] == 64 * 108 + 16 * 72 + 160 + 512
    assert total['sparse_macs'] == 64 * 72 + 16 * 36 + 64 + 512
    assert [r['sparse_execution'] for r in report['layers']] == [False, True, True]  # densities 2/3, 1/2, 2/5
    with torch.no_grad():
        assert report['latency']['max_abs_difference'] <= 1e-6 * float(model(x).abs().max())  # float32 rounding
    assert report['sizes']['dense_bytes'] == serialized_size({'params': model.state_dict()})


# ------------------------------------------------------------------------------------------ commands
TINY_OPTIONS = """name: tiny_deploy
network_g:
  type: SwinIR
  upscale: 4
  in_chans: 3
  img_size: 16
  window_size: 8
  img_range: 1.
  depths: [2]
  embed_dim: 16
  num_heads: [2]
  mlp_ratio: 2
  upsampler: pixelshuffledirect
  resi_connection: 1conv
path:
  pretrain_network_g: {checkpoint}
  param_key_g: params_ema
"""


def test_commands_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, ema = swinir(0.95, seed=0), swinir(0.95, seed=1)
    torch.save({'params': model.state_dict(), 'params_ema': ema.state_dict()}, 'net_g_latest.pth')
    (tmp_path / 'test.yml').write_text(TINY_OPTIONS.format(checkpoint='net_g_latest.pth'))

    assert cli_main(['export', '-i', 'net_g_latest.pth', '-o', 'model.sparse.pth']) == 0
    assert 'pruned weights stored sparse' in capsys.readouterr().out
    assert cli_main(['export', '--dense', '-i', 'model.sparse.pth', '-o', 'model.pth']) == 0
    assert_same_checkpoint(torch.load('model.pth', weights_only=True), torch.load('net_g_latest.pth'))
    assert cli_main(['export', '-i', 'net_g_latest.pth', '-o', 'ema.sparse.pth', '--ema', '--half']) == 0
    state = load_state_dict('ema.sparse.pth')
    assert torch.equal(state['conv_first.weight'], ema.state_dict()['conv_first.weight'].half().float())

    capsys.readouterr()
    assert cli_main(['report-efficiency', '-opt', 'test.yml', '-i', 'model.sparse.pth', '--input-size', '12', '20',
                     '--repeats', '1', '--json', 'report.json']) == 0
    printed = capsys.readouterr().out
    assert 'speed-up' in printed and 'compressed' in printed
    report = json.loads((tmp_path / 'report.json').read_text())
    assert report['input_shape'] == [1, 3, 16, 24] and report['param_key'] == 'params_ema'
    reference = SwinIR(**SWINIR_TINY)
    reference.load_state_dict(ema.state_dict())
    rows, other = count_layers(reference.eval(), torch.rand(1, 3, 16, 24))
    assert report['layers'] == [{**row, 'sparse_stored': r['sparse_stored'], 'sparse_execution':
                                 r['sparse_execution']} for row, r in zip(rows, report['layers'])]
    assert report['total']['other_macs'] == other > 0
    assert report['sizes']['compressed_bytes'] < report['sizes']['dense_bytes']

    if not _has('onnx'):  # optional extra: without it --onnx says what to install
        assert cli_main(['export', '--onnx', '-opt', 'test.yml', '-o', 'model.onnx']) == 2
        assert 'pip install issp-basicsr[onnx]' in capsys.readouterr().err
        return
    assert cli_main(['export', '--onnx', '-opt', 'test.yml', '-o', 'model.onnx', '--input-size', '16', '16']) == 0
    printed = capsys.readouterr().out
    assert os.path.getsize('model.onnx') > 0
    if _has('onnxruntime'):  # optional too: without it the graph is written unchecked
        assert 'onnxruntime max |difference|' in printed
    else:
        assert 'not checked' in printed


def _has(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


def test_command_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'broken.pth').write_bytes(b'PK\x03\x04 not really a zip')
    torch.save({'params': edsr(0.9).state_dict()}, 'plain.pth')
    cases = [
        (['export', '--dense', '-i', 'broken.pth', '-o', 'x.pth'], 'broken.pth: not a readable PyTorch checkpoint'),
        (['export', '--dense', '-i', 'plain.pth', '-o', 'x.pth'], 'plain.pth: not an issp_basicsr compressed'),
        (['export', '-i', 'missing.pth', '-o', 'x.pth'], 'missing.pth does not exist'),
        (['export', '-i', 'plain.pth', '-o', 'x.pth', '--ema'], 'plain.pth: has no params_ema'),
        (['export', '--onnx', '-o', 'x.onnx'], '--onnx needs -opt'),
        (['report-efficiency', '-opt', 'none.yml'], '-opt: none.yml does not exist'),
    ]
    for argv, message in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and message in err, (argv, err)


def test_onnx_without_the_optional_packages(tmp_path, capsys, monkeypatch):
    from issp_basicsr.deploy import onnx_export
    monkeypatch.chdir(tmp_path)
    torch.save({'params_ema': swinir(0.9).state_dict()}, 'net.pth')
    (tmp_path / 'test.yml').write_text(TINY_OPTIONS.format(checkpoint='net.pth'))
    monkeypatch.setattr(onnx_export, 'onnx_available', lambda: False)
    assert cli_main(['export', '--onnx', '-opt', 'test.yml', '-o', 'model.onnx']) == 2
    assert 'needs the onnx package: pip install issp-basicsr[onnx]' in capsys.readouterr().err
    if _has('onnx'):
        monkeypatch.setattr(onnx_export, 'onnx_available', lambda: True)
        monkeypatch.setattr(onnx_export, 'onnxruntime_available', lambda: False)
        assert cli_main(['export', '--onnx', '-opt', 'test.yml', '-o', 'model.onnx']) == 0
        assert 'onnxruntime not installed: not checked' in capsys.readouterr().out


def test_sparse_conv2d_column_blocks(monkeypatch):
    """Large inputs are done in column blocks (a cache blocking); the result must not change."""
    from issp_basicsr.deploy import sparse_modules
    conv = sparse_weight(nn.Conv2d(8, 6, 3, padding=1), 0.3, seed=4)
    x = torch.randn(2, 8, 15, 13)
    with torch.no_grad():
        reference = SparseConv2d.from_dense(conv)(x)
        monkeypatch.setattr(sparse_modules, 'UNTILED_MAX_BYTES', 0)
        monkeypatch.setattr(sparse_modules, 'TILE_BYTES', 8 * 4 * 300)  # 300-column blocks of 510, one partial
        blocked = SparseConv2d.from_dense(conv)(x)
        torch.testing.assert_close(blocked, conv(x), atol=1e-4, rtol=0)
    torch.testing.assert_close(blocked, reference, atol=1e-5, rtol=0)


def test_contention_warning(monkeypatch):
    from issp_basicsr.deploy.efficiency import contention_warning
    monkeypatch.delenv('OMP_WAIT_POLICY', raising=False)
    monkeypatch.setattr(os, 'cpu_count', lambda: 2)
    assert 'load average 3.00 on 2 CPUs' in contention_warning(3.0, threads=2)
    assert contention_warning(0.2, threads=2) == '' and contention_warning(3.0, threads=1) == ''
    monkeypatch.setenv('OMP_WAIT_POLICY', 'PASSIVE')
    assert contention_warning(3.0, threads=2) == ''
