"""export --slim: the pruned channels removed, output equal to the masked network, smaller by the expected count."""
import pytest
import torch
import yaml

import issp_basicsr  # noqa: F401  (BasicSR fixes)
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.archs.srresnet_arch import MSRResNet
from basicsr.archs.swinir_arch import SwinIR
from issp_basicsr.deploy.slim import export_slim
from issp_basicsr.sparsity import build_sparsifier


def frozen(net, ratio=0.5):
    sparsifier = build_sparsifier(net, method='l1', granularity='channel', ratio=ratio)
    assert sparsifier.frozen
    return sparsifier


def test_edsr_slim_equals_masked_and_removes_expected_params(tmp_path):
    torch.manual_seed(0)
    net = EDSR(3, 3, num_feat=8, num_block=2, upscale=2).eval()
    frozen(net)
    x = torch.rand(1, 3, 12, 12)
    summary = export_slim(net, str(tmp_path / 'm.pt2'), x)
    # 4 of 8 stream channels, 4 of 8 in each block's inner group: body convs 8x8 -> 4x4, conv_first 3->4 out,
    # conv_after_body 4x4, upsample.0 in 8->4; weights 9 each, biases of removed outputs
    before, after = summary['params']
    removed = (3 * 4 * 9 + 4) + 2 * 2 * (8 * 8 - 4 * 4) * 9 + 2 * 2 * 4 + (8 * 8 - 4 * 4) * 9 + 4 + 32 * 4 * 9
    assert before - after == removed
    program = torch.export.load(str(tmp_path / 'm.pt2')).module()
    assert torch.allclose(program(x), net(x), atol=1e-4)
    rows = {name: (b, a) for name, b, a in summary['rows']}
    assert rows['body.0.conv1'] == ((8, 8), (4, 4)) and rows['upsample.0'] == ((8, 32), (4, 32))
    assert rows['conv_last'] == ((8, 3), (8, 3))


@pytest.mark.parametrize('make', [
    lambda: RCAN(3, 3, num_feat=8, num_group=2, num_block=2, squeeze_factor=4, upscale=2),
    lambda: MSRResNet(3, 3, num_feat=8, num_block=2, upscale=4),
    lambda: RRDBNet(3, 3, num_feat=8, num_block=1, num_grow_ch=4, scale=4),
])
def test_backbones_slim_equal_to_masked(make, tmp_path):
    torch.manual_seed(0)
    net = make().eval()
    frozen(net)
    x = torch.rand(1, 3, 8, 8)
    summary = export_slim(net, str(tmp_path / 'm.pt2'), x)
    assert summary['params'][1] < summary['params'][0] and summary['macs'][1] < summary['macs'][0]
    assert torch.allclose(torch.export.load(str(tmp_path / 'm.pt2')).module()(x), net(x), atol=1e-4)


def test_swinir_mlp_hidden_channels(tmp_path, capsys):
    torch.manual_seed(0)
    net = SwinIR(upscale=2, in_chans=3, img_size=8, window_size=4, img_range=1., depths=[2], embed_dim=12,
                 num_heads=[2], mlp_ratio=2, upsampler='pixelshuffledirect', resi_connection='1conv').eval()
    sparsifier = frozen(net)
    unit = sparsifier.groups[0]
    assert sorted(g.root for g in unit.groups) == ['layers.0.residual_group.blocks.0.mlp.fc1',
                                                   'layers.0.residual_group.blocks.1.mlp.fc1']
    x = torch.rand(1, 3, 8, 8)
    summary = export_slim(net, str(tmp_path / 'm.pt2'), x)
    rows = {name: a for name, _, a in summary['rows']}
    assert rows['layers.0.residual_group.blocks.0.mlp.fc1'] == (12, 12)  # 24 hidden -> 12
    assert summary['params'][0] - summary['params'][1] == 2 * (12 * 12 + 12 + 12 * 12)


def test_export_slim_command(tmp_path, capsys):
    from issp_basicsr.deploy.export import main
    torch.manual_seed(0)
    net = EDSR(3, 3, num_feat=8, num_block=2, upscale=2)
    frozen(net)
    torch.save({'params': net.state_dict()}, tmp_path / 'net.pth')
    opt = {'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 2,
                         'upscale': 2}}
    (tmp_path / 'o.yml').write_text(yaml.safe_dump(opt))
    assert main(['--slim', '-opt', str(tmp_path / 'o.yml'), '-i', str(tmp_path / 'net.pth'), '-o',
                 str(tmp_path / 'm.pt2'), '--input-size', '8', '8']) == 0
    out = capsys.readouterr().out
    assert 'body.0.conv1' in out and '8->4' in out and 'torch.export program' in out
    program = torch.export.load(str(tmp_path / 'm.pt2')).module()
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(program(x), net.eval()(x), atol=1e-4)


def slim_program(tmp_path, pretrained=True):
    """An option file of a channel-pruned EDSR (naming its checkpoint when ``pretrained``) and its .pt2 program."""
    from issp_basicsr.deploy.export import main
    torch.manual_seed(0)
    net = EDSR(3, 3, num_feat=8, num_block=2, upscale=2)
    frozen(net)
    torch.save({'params': net.state_dict()}, tmp_path / 'net.pth')
    opt = {'name': 'slim', 'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8,
                                         'num_block': 2, 'upscale': 2}}
    (tmp_path / 'o.yml').write_text(yaml.safe_dump(opt))
    assert main(['--slim', '-opt', str(tmp_path / 'o.yml'), '-i', str(tmp_path / 'net.pth'), '-o',
                 str(tmp_path / 'm.pt2'), '--input-size', '8', '12']) == 0
    if pretrained:
        opt['path'] = {'pretrain_network_g': str(tmp_path / 'net.pth')}
        (tmp_path / 'o.yml').write_text(yaml.safe_dump(opt))
    return net.eval(), tmp_path / 'o.yml', tmp_path / 'm.pt2'


def test_report_efficiency_times_dense_against_slim(tmp_path, capsys):
    import json

    from issp_basicsr.deploy.efficiency import main
    from issp_basicsr.deploy.slim import count_macs, slim_network
    net, options, program = slim_program(tmp_path)
    capsys.readouterr()
    assert main(['-opt', str(options), '-i', str(program), '--repeats', '1', '--json', str(tmp_path / 'r.json')]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / 'r.json').read_text())
    x = torch.rand(1, 3, 8, 12)
    slim, _ = slim_network(net, x)
    assert report['input_shape'] == [1, 3, 8, 12]  # the program's own shape
    assert report['dense'] | {'ms': 0} == {'params': sum(p.numel() for p in net.parameters()),
                                           'macs': count_macs(net, x), 'ms': 0}
    assert report['slim'] | {'ms': 0} == {'params': sum(p.numel() for p in slim.parameters()),
                                          'macs': count_macs(slim, x), 'ms': 0}
    assert report['mac_ratio'] == report['dense']['macs'] / report['slim']['macs'] > 1.5
    assert report['max_abs_difference'] < 1e-4 and report['dense_weights'] == str(tmp_path / 'net.pth')
    assert report['speedup'] == pytest.approx(report['dense']['ms'] / report['slim']['ms'])
    assert 'speed-up' in out and 'MAC ratio' in out and 'max |slim - dense|' in out


def test_report_efficiency_slim_without_weights_and_at_another_size(tmp_path, capsys):
    from issp_basicsr.deploy.efficiency import main
    from issp_basicsr.errors import OptionError
    _, options, program = slim_program(tmp_path, pretrained=False)
    capsys.readouterr()
    assert main(['-opt', str(options), '-i', str(program), '--repeats', '1', '--json', str(tmp_path / 'r.json')]) == 0
    assert 'dense weights: the initial ones' in capsys.readouterr().out
    with pytest.raises(OptionError, match=r'--input-size 16 16: .*m\.pt2 was exported for 8x12 inputs'):
        main(['-opt', str(options), '-i', str(program), '--input-size', '16', '16', '--json', str(tmp_path / 'r.json')])
    broken = tmp_path / 'broken.pt2'
    broken.write_bytes(program.read_bytes()[:-4000])
    with pytest.raises(OptionError, match='broken.pt2'):
        main(['-opt', str(options), '-i', str(broken), '--json', str(tmp_path / 'r.json')])
