"""`basicsr train` / `basicsr test` end to end on a tiny data set: sparse checkpoints, resume, option errors."""
import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch
from basicsr.archs.swinir_arch import SwinIR
from conftest import eval_options, tiny_options, write_options

from issp_basicsr import cli
from issp_basicsr.sparsity import pruned_count

BASICSR = [sys.executable, '-m', 'issp_basicsr.cli']


def run(args, cwd):
    result = subprocess.run(BASICSR + args, cwd=cwd, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    return result


def train_log(run_dir, name):
    return '\n'.join(open(p).read() for p in sorted(glob.glob(f'{run_dir}/experiments/{name}/train_*.log')))


def pruned_layers(params):
    return {k: v for k, v in params.items() if k.endswith('.weight') and v.dim() in (2, 4)}


def assert_exactly_sparse(params, ratio):
    for key, weight in pruned_layers(params).items():
        assert int((weight == 0).sum()) == pruned_count(ratio, weight.numel()), key


@pytest.fixture(scope='module')
def trained(tiny_pairs, tmp_path_factory):
    """One uninterrupted tiny run: 30 iterations, mask frozen at 20, checkpoints every 10."""
    run_dir = tmp_path_factory.mktemp('train_run')
    opt = tiny_options(tiny_pairs, name='tiny_issp')
    result = run(['train', '-opt', write_options(run_dir / 'train.yml', opt)], run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, opt


def test_checkpoints_are_plain_exactly_sparse_and_load_in_stock_basicsr(trained):
    run_dir, opt = trained
    models = run_dir / 'experiments' / 'tiny_issp' / 'models'
    assert sorted(os.listdir(models)) == ['net_g_10.pth', 'net_g_20.pth', 'net_g_30.pth', 'net_g_latest.pth']
    before = torch.load(models / 'net_g_10.pth', weights_only=True)['params']
    assert all(int((w == 0).sum()) == 0 for w in pruned_layers(before).values())  # ISS-P shrinks, never zeros
    latest = torch.load(models / 'net_g_latest.pth', weights_only=True)
    assert set(latest) == {'params', 'params_ema'}
    for key in ('params', 'params_ema'):
        assert_exactly_sparse(latest[key], 0.9)
        net_opt = {k: v for k, v in opt['network_g'].items() if k != 'type'}
        SwinIR(**net_opt).load_state_dict(latest[key], strict=True)
    # the EMA copy is pruned where the model is
    for k, w in pruned_layers(latest['params']).items():
        assert torch.equal(w == 0, latest['params_ema'][k] == 0), k
    # the mask frozen at iteration 20 is the one of the final model
    at_20 = torch.load(models / 'net_g_20.pth', weights_only=True)['params']
    for k, w in pruned_layers(latest['params']).items():
        assert torch.equal(w == 0, at_20[k] == 0), k


def test_log_has_sparsity_statistics_and_bicubic_reference(trained):
    run_dir, _ = trained
    log = train_log(run_dir, 'tiny_issp')
    for key in ('sparsity/zeros', 'sparsity/mask_change', 'sparsity/grad_unimportant', 'sparsity/grad_kept'):
        assert key in log
    assert 'Final tinyval: psnr' in log and '(bicubic ' in log
    assert 'Final sparsity: 0.90' in log
    events = glob.glob(str(run_dir / 'tb_logger' / 'tiny_issp' / 'events.*'))
    assert events, 'TensorBoard scalars were not written'


@pytest.mark.slow
def test_basicsr_test_evaluates_the_checkpoint(trained):
    run_dir, opt = trained
    weights = run_dir / 'experiments' / 'tiny_issp' / 'models' / 'net_g_latest.pth'
    result = run(['test', '-opt', write_options(run_dir / 'test.yml', eval_options(opt, weights))], run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = glob.glob(str(run_dir / 'results' / 'test_tiny_issp' / 'test_*.log'))
    assert logs and 'Final tinytest: psnr' in open(logs[0]).read()


def _resume_from(trained, tmp_path, keep_iter):
    """Copy the finished run, drop everything written after ``keep_iter`` (as if it had been killed there),
    resume it with --auto_resume and return (resumed final params, uninterrupted final params)."""
    run_dir, _ = trained
    copy_dir = tmp_path / 'copy'
    shutil.copytree(run_dir, copy_dir)
    exp = copy_dir / 'experiments' / 'tiny_issp'
    for it in (10, 20, 30):
        if it > keep_iter:
            os.remove(exp / 'models' / f'net_g_{it}.pth')
            os.remove(exp / 'training_states' / f'{it}.state')
    os.remove(exp / 'models' / 'net_g_latest.pth')
    result = run(['train', '-opt', str(copy_dir / 'train.yml'), '--auto_resume'], copy_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Resuming training from epoch' in train_log(copy_dir, 'tiny_issp')
    resumed = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)['params']
    state = torch.load(exp / 'training_states' / '30.state', weights_only=True)['sparsifier']
    return resumed, state


@pytest.mark.slow
def test_resume_after_the_freeze_keeps_the_mask(trained, tmp_path):
    resumed, state = _resume_from(trained, tmp_path, keep_iter=20)
    assert state['frozen'] and state['last_step'] == 30
    at_20 = torch.load(trained[0] / 'experiments/tiny_issp/models/net_g_20.pth', weights_only=True)['params']
    assert_exactly_sparse(resumed, 0.9)
    for k, w in pruned_layers(resumed).items():
        assert torch.equal(w == 0, at_20[k] == 0), k


@pytest.mark.slow
def test_resume_before_the_freeze_keeps_shrinking(trained, tmp_path):
    resumed, state = _resume_from(trained, tmp_path, keep_iter=10)
    assert state['frozen'] and state['last_step'] == 30
    assert_exactly_sparse(resumed, 0.9)
    for name, mask in state['selected'].items():
        assert torch.equal(resumed[f'{name}.weight'].reshape(-1) == 0, mask), name


@pytest.mark.parametrize('change,message', [
    (lambda o: o['train']['sparsity'].update(shrink=0.5), 'train:sparsity:shrink is not a known key'),
    (lambda o: o['train']['sparsity'].update(ratio=1.5), 'train:sparsity:ratio must be a number with 0 < ratio < 1'),
    (lambda o: o['train']['sparsity'].update(exclude=['nope.*']), "exclude pattern 'nope.*' matches no module"),
    (lambda o: o['train']['sparsity'].update(prune_iter=31),
     'train:sparsity:prune_iter (31) is past the total_iter (30) of the run'),
    (lambda o: o['datasets']['train'].update(dataroot_gt='/no/such/dir'),
     'datasets:train:dataroot_gt: /no/such/dir does not exist'),
    (lambda o: o.update(model_type='NoSuchModel'), "model_type: 'NoSuchModel' is not a registered BasicSR model"),
    (lambda o: o['train'].pop('sparsity'), 'train:sparsity is required by model_type ISSPSRModel'),
])
def test_bad_options_stop_before_anything_is_written(tiny_pairs, tmp_path, monkeypatch, capsys, change, message):
    opt = tiny_options(tiny_pairs)
    change(opt)
    monkeypatch.chdir(tmp_path)
    assert cli.main(['train', '-opt', write_options(tmp_path / 'bad.yml', opt)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and 'Traceback' not in err
    assert not (tmp_path / 'experiments').exists()


@pytest.mark.slow
def test_bad_option_from_the_command_line_is_one_line_without_traceback(tiny_pairs, tmp_path):
    opt = tiny_options(tiny_pairs, ratio=0)
    result = run(['train', '-opt', write_options(tmp_path / 'bad.yml', opt)], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith('basicsr train: error: train:sparsity:ratio')
    assert 'Traceback' not in result.stderr
    missing = run(['train', '-opt', str(tmp_path / 'missing.yml')], tmp_path)
    assert missing.returncode == 2 and 'missing.yml' in missing.stderr and 'Traceback' not in missing.stderr
