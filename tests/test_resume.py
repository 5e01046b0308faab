"""Bit-exact resume: a run stopped after any checkpoint (or killed at any moment) and resumed with --auto_resume
ends with exactly the weights of the uninterrupted run (CPU, one process, num_worker_per_gpu 0)."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_options, write_options

from issp_basicsr.train import train_pipeline

TOTAL, PRUNE_ITER = 16, 8  # 3 images x enlarge 4 / batch 2 = 6 batches per epoch: epochs end at 6 and 12


def exact_options(data_root, **sparsity):
    opt = tiny_options(data_root, name='exact', prune_iter=PRUNE_ITER, **sparsity)
    opt['train']['total_iter'] = TOTAL
    opt['logger'].update(save_checkpoint_freq=1, print_freq=4, use_tb_logger=False)
    opt['val']['val_freq'] = 5  # validation right after some checkpoints must not change what follows
    return opt


def train_in(run_dir, *args):
    """``basicsr train -opt run_dir/train.yml ARGS`` in this process (one thread, as the subprocess runs)."""
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(run_dir)
    torch.set_num_threads(1)
    try:
        train_pipeline(['-opt', str(run_dir / 'train.yml'), *args])
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def final_weights(run_dir):
    return torch.load(run_dir / 'experiments' / 'exact' / 'models' / 'net_g_latest.pth', weights_only=True)


def assert_same_weights(resumed, reference):
    assert set(resumed) == set(reference) == {'params', 'params_ema'}
    for key in reference:
        assert set(resumed[key]) == set(reference[key])
        for name, tensor in reference[key].items():
            assert torch.equal(resumed[key][name], tensor), f'{key}:{name}'


@pytest.fixture(scope='module')
def uninterrupted(tiny_pairs, tmp_path_factory):
    """The reference: 16 iterations, the mask frozen at 8, a checkpoint after every iteration."""
    run_dir = tmp_path_factory.mktemp('uninterrupted')
    write_options(run_dir / 'train.yml', exact_options(tiny_pairs))
    train_in(run_dir)
    return run_dir


def stopped_after(uninterrupted, tmp_path, keep_iter):
    """A copy of the finished run holding only what existed right after checkpoint ``keep_iter``."""
    run_dir = tmp_path / 'stopped'
    shutil.copytree(uninterrupted, run_dir)
    exp = run_dir / 'experiments' / 'exact'
    for path in glob.glob(str(exp / 'models' / '*.pth')) + glob.glob(str(exp / 'training_states' / '*.state')):
        tag = os.path.basename(path).split('.')[0].split('_')[-1]
        if tag == 'latest' or int(tag) > keep_iter:
            os.remove(path)
    return run_dir


@pytest.mark.parametrize('keep_iter,epoch,batches', [
    (3, 0, 3),  # pruning stage, mid-epoch
    (6, 0, 6),  # pruning stage, last batch of an epoch
    (8, 1, 2),  # the iteration the mask freezes
    (11, 1, 5),  # fine-tuning stage, mid-epoch
])
def test_resume_from_any_checkpoint_is_bit_exact(uninterrupted, tmp_path, keep_iter, epoch, batches):
    run_dir = stopped_after(uninterrupted, tmp_path, keep_iter)
    state = torch.load(run_dir / f'experiments/exact/training_states/{keep_iter}.state', weights_only=True)
    assert state['data'] == {'epoch': epoch, 'batches': batches, 'batch_size': 2, 'world_size': 1}
    assert state['sparsifier']['frozen'] == (keep_iter >= PRUNE_ITER)
    train_in(run_dir, '--auto_resume')
    assert_same_weights(final_weights(run_dir), final_weights(uninterrupted))
    resumed_state = torch.load(run_dir / f'experiments/exact/training_states/{TOTAL}.state', weights_only=True)
    reference_state = torch.load(uninterrupted / f'experiments/exact/training_states/{TOTAL}.state', weights_only=True)
    for name, mask in reference_state['sparsifier']['selected'].items():
        assert torch.equal(resumed_state['sparsifier']['selected'][name], mask), name
    assert torch.equal(resumed_state['optimizers'][0]['state'][0]['exp_avg'],
                       reference_state['optimizers'][0]['state'][0]['exp_avg'])


@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_exactly(uninterrupted, tmp_path):
    """SIGKILL as soon as checkpoint 3 exists (the kill lands anywhere after it, perhaps inside a save)."""
    run_dir = tmp_path / 'killed'
    run_dir.mkdir()
    shutil.copy(uninterrupted / 'train.yml', run_dir / 'train.yml')
    first_state = run_dir / 'experiments' / 'exact' / 'training_states' / '3.state'
    process = subprocess.Popen([sys.executable, '-m', 'issp_basicsr.cli', 'train', '-opt', 'train.yml'], cwd=run_dir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, OMP_NUM_THREADS='1'))
    try:
        deadline = time.time() + 300
        while not first_state.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # a few iterations on: the kill may land inside a save
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
    exp = run_dir / 'experiments' / 'exact'
    assert not (exp / 'models' / 'net_g_latest.pth').exists()
    train_in(run_dir, '--auto_resume')
    assert not glob.glob(str(exp / '*' / '.*.tmp'))  # what a kill inside a save left is cleared on resume
    assert_same_weights(final_weights(run_dir), final_weights(uninterrupted))


@pytest.fixture(scope='module')
def uninterrupted_channel(tiny_pairs, tmp_path_factory):
    """The reference at granularity channel: channel ISS-P on a small EDSR, frozen at 8 of 16 iterations."""
    run_dir = tmp_path_factory.mktemp('uninterrupted_channel')
    opt = exact_options(tiny_pairs, granularity='channel', ratio=0.5, alpha=0.5)
    opt['network_g'] = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 2, 'upscale': 4}
    write_options(run_dir / 'train.yml', opt)
    train_in(run_dir)
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize('keep_iter', [5, 11])  # re-choosing channels; after the freeze
def test_auto_resume_at_channel_granularity_is_bit_exact(uninterrupted_channel, tmp_path, keep_iter):
    run_dir = stopped_after(uninterrupted_channel, tmp_path, keep_iter)
    state = torch.load(run_dir / f'experiments/exact/training_states/{keep_iter}.state', weights_only=True)
    assert state['sparsifier']['config']['granularity'] == 'channel'
    train_in(run_dir, '--auto_resume')
    resumed, reference = final_weights(run_dir), final_weights(uninterrupted_channel)
    assert_same_weights(resumed, reference)
    # whole channels are gone: half of the residual stream's output rows of conv_first are zero
    zero_rows = resumed['params']['conv_first.weight'].flatten(1).eq(0).all(dim=1)
    assert int(zero_rows.sum()) == 4
    resumed_state = torch.load(run_dir / f'experiments/exact/training_states/{TOTAL}.state', weights_only=True)
    reference_state = torch.load(uninterrupted_channel / f'experiments/exact/training_states/{TOTAL}.state',
                                 weights_only=True)
    for name, mask in reference_state['sparsifier']['selected'].items():
        assert torch.equal(resumed_state['sparsifier']['selected'][name], mask), name
