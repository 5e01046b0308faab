"""Distributed training on CPUs with gloo: torchrun and Slurm launchers, identical masks on every rank, exact
resume across ranks, and the mask checksum that stops a run whose ranks disagree."""
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from conftest import tiny_options, write_options

from issp_basicsr import distributed
from issp_basicsr.distributed import check_masks_agree, mask_checksum, mean_across_ranks
from issp_basicsr.sparsity import SparsityStateError, build_sparsifier, pruned_count

NAME = 'ddp'
# the console script the package installs beside this interpreter (what `$(which basicsr)` finds in its venv)
BASICSR = os.path.join(os.path.dirname(sys.executable), 'basicsr')
if not os.path.exists(BASICSR):
    BASICSR = shutil.which('basicsr') or 'basicsr'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def env(**extra):
    return dict(os.environ, OMP_NUM_THREADS='1', **extra)


def models(run_dir):
    return run_dir / 'experiments' / NAME / 'models'


def states(run_dir):
    return run_dir / 'experiments' / NAME / 'training_states'


@pytest.fixture(scope='module')
def torchrun_run(tiny_pairs, tmp_path_factory):
    """2 CPU ranks through torchrun: 12 iterations, the mask frozen at 6, checkpoints at 6 and 12."""
    run_dir = tmp_path_factory.mktemp('torchrun')
    opt = tiny_options(tiny_pairs, name=NAME, prune_iter=6)
    opt['train']['total_iter'] = 12
    opt['logger'].update(save_checkpoint_freq=6, print_freq=3, use_tb_logger=False)
    opt['val']['val_freq'] = 6
    write_options(run_dir / 'train.yml', opt)
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                             f'--master_port={free_port()}', BASICSR, 'train', '-opt', 'train.yml',
                             '--launcher', 'pytorch'], cwd=run_dir, capture_output=True, text=True, env=env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def test_torchrun_on_cpus_trains_both_ranks_to_an_exactly_sparse_checkpoint(torchrun_run):
    log = open(next((torchrun_run / 'experiments' / NAME).glob('train_*.log'))).read()
    assert 'World size (gpu number): 2' in log and 'sparsity/grad_kept' in log
    latest = torch.load(models(torchrun_run) / 'net_g_latest.pth', weights_only=True)
    state = torch.load(states(torchrun_run) / '12.state', weights_only=True)
    for key in ('params', 'params_ema'):
        for name, mask in state['sparsifier']['selected'].items():
            weight = latest[key][f'{name}.weight'].reshape(-1)
            assert int((weight == 0).sum()) == pruned_count(0.9, weight.numel()), (key, name)
            assert torch.equal(weight == 0, mask), (key, name)


def test_both_ranks_held_the_same_mask(torchrun_run):
    """Every checkpoint records the mask checksum of each rank: two ranks, one checksum, that of the saved mask."""
    for it in (6, 12):
        state = torch.load(states(torchrun_run) / f'{it}.state', weights_only=True)
        rank0, rank1 = state['mask_checksums']
        assert torch.equal(rank0, rank1)
        masks = {name: mask for name, mask in state['sparsifier']['selected'].items()}
        assert torch.equal(rank0, mask_checksum(masks))
        assert state['data']['world_size'] == 2 and len(state['rng']) == 2
        # BasicSR seeds each rank with seed + rank: each rank's own RNG state is kept
        assert not torch.equal(state['rng'][0]['torch'], state['rng'][1]['torch'])


@pytest.mark.slow
def test_slurm_launcher_resumes_the_torchrun_run_exactly(torchrun_run, tmp_path):
    """The torchrun run, stopped after checkpoint 6, resumed by two `--launcher slurm` tasks (scontrol faked)."""
    run_dir = tmp_path / 'slurm'
    shutil.copytree(torchrun_run, run_dir)
    for path in (models(run_dir) / 'net_g_12.pth', models(run_dir) / 'net_g_latest.pth', states(run_dir) / '12.state'):
        os.remove(path)
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'scontrol').write_text('#!/bin/sh\necho 127.0.0.1\n')
    (bin_dir / 'scontrol').chmod(0o755)
    port = str(free_port())
    tasks = [
        subprocess.Popen([BASICSR, 'train', '-opt', 'train.yml', '--launcher', 'slurm', '--auto_resume'], cwd=run_dir,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', SLURM_PROCID=str(rank),
                                 SLURM_NTASKS='2', SLURM_NODELIST='node1', MASTER_PORT=port))
        for rank in (0, 1)
    ]
    outputs = [task.communicate(timeout=600)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert 'Resuming training from epoch: 1, iter: 6.' in outputs[0]
    resumed = torch.load(models(run_dir) / 'net_g_latest.pth', weights_only=True)
    reference = torch.load(models(torchrun_run) / 'net_g_latest.pth', weights_only=True)
    for key in reference:
        for name, tensor in reference[key].items():
            assert torch.equal(resumed[key][name], tensor), (key, name)


# ------------------------------------------------------------------------------- the checksum and the reduction
def tiny_sparsifier():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3), torch.nn.Linear(8, 4))
    sparsifier = build_sparsifier(model, method='issp', ratio=0.5, alpha=0.9, prune_iter=1)
    sparsifier.step(1)
    return sparsifier


def test_the_checksum_sees_a_moved_bit():
    masks = tiny_sparsifier().masks()
    moved = {name: mask.clone() for name, mask in masks.items()}
    flat = moved['1'].view(-1)
    first_set, first_clear = int(flat.nonzero()[0]), int((~flat).nonzero()[0])
    flat[first_set], flat[first_clear] = False, True  # same count, another position
    before, after = mask_checksum(masks), mask_checksum(moved)
    assert after.dtype == torch.int64 and after.shape == (3, 2)
    assert torch.equal(before[:, 0], after[:, 0])  # counts agree ...
    assert before[1, 1] != after[1, 1] and torch.equal(before[[0, 2]], after[[0, 2]])  # ... the position sum does not


def test_ranks_with_different_masks_stop_with_a_message_naming_the_layer(monkeypatch):
    sparsifier = tiny_sparsifier()
    mine = mask_checksum(sparsifier.masks())
    other = mine.clone()
    other[2, 1] += 1
    monkeypatch.setattr(distributed, 'all_gather_objects', lambda obj: [mine, mine, other])
    with pytest.raises(SparsityStateError, match=r'masks differ between ranks at checkpoint 6: layer 2 on rank 2 '):
        check_masks_agree(sparsifier, 'at checkpoint 6')
    monkeypatch.setattr(distributed, 'all_gather_objects', lambda obj: [mine, mine.clone()])
    assert len(check_masks_agree(sparsifier, 'at checkpoint 6')) == 2


def test_statistics_pass_through_in_one_process():
    stats = {'sparsity/zeros': 0.9, 'sparsity/grad_kept': 1.5}
    assert mean_across_ranks(stats, torch.device('cpu')) is stats
