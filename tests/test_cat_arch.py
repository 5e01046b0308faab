"""CAT-R (issp_basicsr.archs.CAT): shapes, the published size, rectangle windows and their shift, test-time
padding, ISS-P on it, and a tiny `basicsr train` with it."""
import glob
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import _write_pairs, eval_options, tiny_options, write_options

import issp_basicsr.archs  # noqa: F401  (registers CAT until the package's own registration imports it)
from basicsr.models import build_model
from basicsr.utils.registry import ARCH_REGISTRY
from issp_basicsr.archs import cat_arch
from issp_basicsr.archs.cat_arch import CAT, CATBlock, RectangleWindowAttention, symmetric_pad
from issp_basicsr.errors import OptionError
from issp_basicsr.sparsity import build_sparsifier, prunable_layers, pruned_count

# a tiny CAT: one group of two blocks (the second shifted), 2 x 4 / 4 x 2 windows, so images pad to multiples of 4
TINY = dict(embed_dim=32, depth=[2], num_heads=[4], split_size_0=[2], split_size_1=[4], mlp_ratio=2)
# CAT-R as released for SR (options/train/train_CAT_R_sr_x4.yml of the authors' repository)
CAT_R = dict(embed_dim=180, depth=[6] * 6, num_heads=[6] * 6, split_size_0=[4] * 6, split_size_1=[16] * 6, mlp_ratio=4)


def count(module):
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_output_is_scale_times_the_input_for_any_input_size(scale):
    torch.manual_seed(0)
    net = CAT(upscale=scale, **TINY).eval()
    for height, width in ((8, 8), (7, 13), (1, 5), (12, 4)):
        with torch.no_grad():
            out = net(torch.rand(2, 3, height, width))
        assert tuple(out.shape) == (2, 3, height * scale, width * scale)
        assert torch.isfinite(out).all()
    assert net.pad_multiple == 4


def test_registered_in_basicsr_as_cat():
    assert ARCH_REGISTRY.get('CAT') is CAT


# --------------------------------------------------------------------------------------- published size
def cat_r_parameters(scale, dim=180, blocks=36, groups=6, heads=6, mlp_ratio=4, feat=64):
    """CAT-R's parameter count from the paper's structure, layer by layer."""
    linear = lambda i, o: i * o + o  # noqa: E731
    conv = lambda i, o, k=3: i * o * k * k + o  # noqa: E731
    norm = 2 * dim
    pos = (dim // 2) // 16  # the position-bias MLP's width (5)
    position_mlp = linear(2, pos) + 2 * (2 * pos + linear(pos, pos)) + 2 * pos + linear(pos, heads // 2)
    block = (norm + linear(dim, 3 * dim) + 2 * position_mlp + dim * 9 + dim + linear(dim, dim) + norm +
             linear(dim, mlp_ratio * dim) + linear(mlp_ratio * dim, dim))
    body = blocks * block + groups * conv(dim, dim) + 2 * norm + conv(dim, dim)
    upsampler = conv(feat, 9 * feat) if scale == 3 else (scale.bit_length() - 1) * conv(feat, 4 * feat)
    return conv(3, dim) + body + conv(dim, feat) + upsampler + conv(feat, 3)


@pytest.mark.parametrize('scale, expected, layers', [(2, 16_456_103, 479), (3, 16_640_743, 479),
                                                     (4, 16_603_815, 480)])
def test_cat_r_has_the_published_parameter_count(scale, expected, layers):
    net = CAT(upscale=scale, **CAT_R)
    assert count(net) == cat_r_parameters(scale) == expected
    # 36 blocks x 13 prunable layers (qkv, proj, 2 x 4 position-bias linears, fc1, fc2, the LCM's depthwise
    # conv), a conv per group, and conv_first, conv_after_body, conv_before_upsample, upsampler, conv_last
    assert len(prunable_layers(net, [])) == layers
    if scale == 4:
        assert round(expected / 1e6, 2) == 16.60  # the authors' README: CAT-R x4, 16.60M parameters


def test_parameter_names_follow_the_released_state_dict():
    """The released code's parameter names (so a released checkpoint's parameters map one to one); its
    precomputed buffers (rpe_biases, relative_position_index, attn_mask_*) are not saved here."""
    names = set(CAT(upscale=4, **TINY).state_dict())
    block = 'layers.0.blocks.1.'
    expected = {'conv_first.weight', 'before_RG.1.weight', 'norm.bias', 'conv_after_body.weight',
                'conv_before_upsample.0.weight', 'upsample.0.weight', 'upsample.2.weight', 'conv_last.weight',
                'layers.0.conv.weight'}
    expected |= {block + k for k in ('norm1.weight', 'qkv.weight', 'qkv.bias', 'proj.weight', 'get_v.weight',
                                     'norm2.weight', 'mlp.fc1.weight', 'mlp.fc2.weight', 'attns.0.pos.pos_proj.weight',
                                     'attns.1.pos.pos1.0.weight', 'attns.1.pos.pos1.2.weight',
                                     'attns.1.pos.pos3.2.bias')}
    assert expected <= names
    assert not [n for n in names if 'mask' in n or 'index' in n or 'offsets' in n or n == 'mean']


# ----------------------------------------------------------------------------------- windows and shift
@pytest.mark.parametrize('window', [(2, 4), (4, 2)])
def test_attention_stays_inside_its_rectangle_window(window):
    torch.manual_seed(0)
    attn = RectangleWindowAttention(16, 2, window)
    q, k, v = (torch.randn(1, 8, 8, 16) for _ in range(3))
    base = attn(q, k, v)
    v2 = v.clone()
    v2[0, 5, 6] += 1.0  # one token; its window is rows 4.. and columns 4.. (2x4) or 6.. (4x2)
    changed = (attn(q, k, v2) - base).abs().amax(-1)[0] > 0
    wh, ww = window
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[5 // wh * wh:5 // wh * wh + wh, 6 // ww * ww:6 // ww * ww + ww] = True
    assert torch.equal(changed, inside)


def test_shifted_block_masks_what_the_roll_wraps_around(monkeypatch):
    """A shifted block rolls each half by half its window; without the mask the top row would attend to the
    bottom row through the wrapped window, with it the bottom row does not see the top row."""
    torch.manual_seed(0)
    block = CATBlock(32, 4, (2, 4), shifted=True).eval()
    assert block.shifts == ((1, 2), (2, 1)) and block.windows == ((2, 4), (4, 2))
    x = torch.randn(1, 8 * 8, 32)
    x2 = x.clone().view(1, 8, 8, 32)
    x2[0, 0] += torch.randn(8, 32)  # the whole top row (not a constant per token: LayerNorm would remove it)
    x2 = x2.view(1, 64, 32)

    def bottom_row_change():
        with torch.no_grad():
            return float((block(x2, (8, 8)) - block(x, (8, 8))).view(8, 8, 32)[7].abs().max())

    assert bottom_row_change() < 1e-6
    monkeypatch.setattr(cat_arch, 'shifted_window_mask', lambda h, w, window, shift, device: torch.zeros(1, 1, 1))
    assert bottom_row_change() > 1e-3
    unshifted = CATBlock(32, 4, (2, 4), shifted=False).eval()
    with torch.no_grad():  # no shift: rows 0 and 7 never share a window, and the LCM conv does not wrap
        assert float((unshifted(x2, (8, 8)) - unshifted(x, (8, 8))).view(8, 8, 32)[7].abs().max()) == 0


def test_locality_complementary_module_adds_a_depthwise_conv_of_v():
    torch.manual_seed(0)
    block = CATBlock(32, 4, (2, 4))
    x = torch.randn(2, 8 * 8, 32)
    with torch.no_grad():
        with_lcm = block.rwin_sa(x, (8, 8))
        v = block.qkv(x)[..., 64:].view(2, 8, 8, 32).permute(0, 3, 1, 2)
        lcm = block.get_v(v).permute(0, 2, 3, 1).reshape(2, 64, 32)
        block.get_v.weight.zero_()
        block.get_v.bias.zero_()
        without = block.rwin_sa(x, (8, 8))
    assert block.get_v.groups == 32 and block.get_v.kernel_size == (3, 3)
    torch.testing.assert_close(with_lcm - without, lcm)


# ------------------------------------------------------------------------------------- test-time padding
def test_forward_pads_symmetrically_to_the_window_multiple_and_crops():
    torch.manual_seed(0)
    net = CAT(upscale=2, **TINY).eval()
    x = torch.rand(1, 3, 7, 10)
    padded = symmetric_pad(x, 4)
    # the released test code's padding: the image and its flip side by side, cut to the multiple
    flipped = torch.cat([x, torch.flip(x, [2])], 2)[:, :, :8]
    flipped = torch.cat([flipped, torch.flip(flipped, [3])], 3)[:, :, :, :12]
    assert torch.equal(padded, flipped)
    with torch.no_grad():
        assert torch.equal(net(x), net(padded)[..., :14, :20])
    # a pad longer than the image keeps mirroring
    assert symmetric_pad(torch.arange(3.).view(1, 1, 1, 3), 8)[0, 0, 0].tolist() == [0, 1, 2, 2, 1, 0, 0, 1]


@pytest.fixture
def basicsr_logger_restored():
    """build_model sets up BasicSR's root logger on first use, without a file and left at WARNING; a later
    in-process `basicsr train` would then get that logger and lose its INFO lines. Undo it after the test."""
    from basicsr.utils import logger as basicsr_logger
    log = logging.getLogger('basicsr')
    handlers, level = list(log.handlers), log.level
    initialized = 'basicsr' in basicsr_logger.initialized_logger
    yield
    for handler in [h for h in log.handlers if h not in handlers]:
        log.removeHandler(handler)
    log.setLevel(level)
    if not initialized:
        basicsr_logger.initialized_logger.pop('basicsr', None)


def test_issp_sr_model_tests_cat_on_images_of_any_size(tiny_pairs, tmp_path, basicsr_logger_restored):
    opt = tiny_options(tiny_pairs)
    opt['network_g'] = dict(type='CAT', upscale=4, **TINY)
    opt.update(dist=False, rank=0, world_size=1, is_train=True, auto_resume=False)
    opt['path'].update(models=str(tmp_path), training_states=str(tmp_path), visualization=str(tmp_path))
    model = build_model(opt)
    lq = torch.rand(1, 3, 7, 13)
    model.feed_data({'lq': lq, 'gt': torch.rand(1, 3, 28, 52)})
    model.test()
    assert tuple(model.output.shape) == (1, 3, 28, 52)
    with torch.no_grad():
        torch.testing.assert_close(model.output, model.net_g_ema.eval()(lq))


# --------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize('change, message', [
    (dict(block_name='CATB_axial'), r"network_g:block_name: only 'CATB_regular' \(CAT-R\) is implemented"),
    (dict(num_heads=[3]), 'network_g:num_heads: group 0: 3 heads must be even'),
    (dict(split_size_1=[4, 4]), r'network_g:split_size_1: one value per residual group \(1, as depth\)'),
    (dict(upscale=5), 'network_g:upscale: a power of 2 or 3, got 5'),
    (dict(upsampler='pixelshuffledirect'), "network_g:upsampler: only 'pixelshuffle'"),
])
def test_bad_network_options_name_the_key(change, message):
    with pytest.raises(OptionError, match=message):
        CAT(**dict(TINY, **change))
    with pytest.raises(TypeError):  # no **kwargs: a misspelt key is an error, not a silent default
        CAT(**TINY, window_size=8)


# ------------------------------------------------------------------------------------------------- ISS-P
def test_issp_shrinks_then_freezes_exact_per_layer_counts_on_cat():
    torch.manual_seed(0)
    net = CAT(upscale=2, **TINY)
    layers = prunable_layers(net, [])
    names = [name for name, _ in layers]
    assert len(names) == 2 * 13 + 1 + 6 - 1  # x2: one upsampler conv
    assert 'layers.0.blocks.1.attns.1.pos.pos3.2' in names and 'layers.0.blocks.0.get_v' in names
    sparsifier = build_sparsifier(net, method='issp', ratio=0.9, alpha=0.95, prune_iter=4)

    def count(n):  # ceil(0.9 n), but a layer is never removed whole: the 2-weight pos_proj layers keep one
        return min(pruned_count(0.9, n), n - 1)

    assert sparsifier.capped_layers == [name for name, m in layers if pruned_count(0.9, m.weight.numel()) ==
                                        m.weight.numel()] and sparsifier.capped_layers
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    lq, gt = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    for it in range(1, 6):
        optimizer.zero_grad()
        torch.nn.functional.l1_loss(net(lq), gt).backward()
        optimizer.step()
        before = {name: m.weight.detach().clone() for name, m in layers}
        sparsifier.step(it)
        masks = sparsifier.masks()
        for name, module in layers:
            n = module.weight.numel()
            selected = masks[name]
            assert int(selected.sum()) == count(n), (it, name)
            w = module.weight.detach()
            if it < 4:  # pruning stage: the unimportant set is multiplied by alpha, the rest untouched
                torch.testing.assert_close(w[selected], before[name][selected] * 0.95, rtol=0, atol=0)
                assert torch.equal(w[~selected], before[name][~selected])
            else:  # frozen at prune_iter: exactly the pruned count is zero, and stays zero after another step
                assert int((w == 0).sum()) == count(n), (it, name)
                assert torch.equal(w == 0, selected)
    assert sparsifier.phase == 'finetune'
    assert sparsifier.num_pruned() == sum(count(m.weight.numel()) for _, m in layers)


def test_exclude_pos_keeps_every_position_bias_mlp_dense():
    """docs/CAT.md: ``exclude: ['*.pos']`` leaves the 8 tiny position-bias linears of each block dense."""
    net = CAT(upscale=2, **TINY)
    names = [name for name, _ in prunable_layers(net, ['*.pos'])]
    assert len(names) == len(prunable_layers(net, [])) - 2 * 8
    assert not [name for name in names if '.pos.' in name] and 'layers.0.blocks.1.qkv' in names


# ----------------------------------------------------------------------------------- basicsr train (CLI)
def cli(kind, path, cwd):
    """``basicsr KIND -opt PATH`` in a fresh process, with issp_basicsr.archs imported first."""
    code = ('import sys, issp_basicsr.archs; from issp_basicsr.cli import main; '
            f'sys.exit(main([{kind!r}, "-opt", {str(path)!r}]))')
    return subprocess.run([sys.executable, '-c', code], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))


@pytest.mark.slow
def test_basicsr_train_prunes_a_tiny_cat_and_test_evaluates_it(tiny_pairs, tmp_path):
    opt = tiny_options(tiny_pairs, name='tiny_cat', prune_iter=4)
    opt['network_g'] = dict(type='CAT', upscale=4, **TINY)
    opt['train'].update(total_iter=6)
    opt['logger'].update(print_freq=2, save_checkpoint_freq=6, use_tb_logger=False)
    opt['val']['val_freq'] = 6
    result = cli('train', write_options(tmp_path / 'train.yml', json.loads(json.dumps(opt))), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = ''.join(open(p).read() for p in glob.glob(str(tmp_path / 'experiments' / 'tiny_cat' / 'train_*.log')))
    assert 'Final tinyval: psnr' in log and 'Final sparsity: 0.90' in log
    weights = tmp_path / 'experiments' / 'tiny_cat' / 'models' / 'net_g_latest.pth'
    net = CAT(upscale=4, **TINY)
    net.load_state_dict(torch.load(weights, weights_only=True)['params'], strict=True)
    for name, module in prunable_layers(net, []):
        n = module.weight.numel()
        assert int((module.weight == 0).sum()) == min(pruned_count(0.9, n), n - 1), name  # one weight kept
    # tested on an image whose LR (22 x 25) is not a multiple of the 4-pixel windows: padded inside forward
    from skimage import data
    _write_pairs(str(tmp_path / 'odd'), [data.rocket()[:88, :100].astype(np.float32) / 255], 4)
    test_opt = eval_options(opt, weights)
    odd = tmp_path / 'odd'
    test_opt['datasets']['test_1'].update(dataroot_gt=str(odd / 'hr'), dataroot_lq=str(odd / 'lr'))
    result = cli('test', write_options(tmp_path / 'test.yml', test_opt), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = glob.glob(str(tmp_path / 'results' / 'test_tiny_cat' / 'test_*.log'))
    assert logs and 'Final tinytest: psnr' in open(logs[0]).read()
