"""Faults: saves that survive a kill, --auto_resume past damaged files, and one-line errors for damaged or foreign
checkpoints, training states and LMDBs."""
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_options, write_options

from basicsr.utils.lmdb_util import make_lmdb_from_imgs
from issp_basicsr import cli
from issp_basicsr.checkpoint import atomic_save

NAME = 'faults'


def truncate(path, keep=0.5):
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * keep)])


@contextlib.contextmanager
def basicsr_log():
    """The messages BasicSR's logger writes while the block runs (it does not propagate to pytest's caplog)."""
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger('basicsr')
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def train_cli(run_dir, *args):
    """``basicsr train -opt run_dir/train.yml ARGS`` in this process -> exit status (one thread, as elsewhere)."""
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(run_dir)
    torch.set_num_threads(1)
    try:
        return cli.main(['train', '-opt', str(run_dir / 'train.yml'), *args])
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
    return err


@pytest.fixture(scope='module')
def finished(tiny_pairs, tmp_path_factory):
    """A finished 6-iteration run with checkpoints at 2, 4 and 6 (mask frozen at 4)."""
    run_dir = tmp_path_factory.mktemp('finished')
    opt = tiny_options(tiny_pairs, name=NAME, prune_iter=4)
    opt['train']['total_iter'] = 6
    opt['logger'].update(save_checkpoint_freq=2, print_freq=2, use_tb_logger=False)
    write_options(run_dir / 'train.yml', opt)
    assert train_cli(run_dir) == 0
    return run_dir


@pytest.fixture
def crashed(finished, tmp_path):
    """A copy of the finished run without its final 'latest' model: as if killed after checkpoint 6."""
    run_dir = tmp_path / 'crashed'
    shutil.copytree(finished, run_dir)
    os.remove(run_dir / 'experiments' / NAME / 'models' / 'net_g_latest.pth')
    return run_dir


def edit_options(run_dir, change):
    opt = yaml.safe_load(open(run_dir / 'train.yml'))
    change(opt)
    write_options(run_dir / 'train.yml', opt)


def files(run_dir, it):
    exp = run_dir / 'experiments' / NAME
    return exp / 'models' / f'net_g_{it}.pth', exp / 'training_states' / f'{it}.state'


# ---------------------------------------------------------------------------------------------- atomic saves
KEEP_SAVING = textwrap.dedent('''
    import sys, torch
    from issp_basicsr.checkpoint import atomic_save
    for version in range(1, 10 ** 6):
        atomic_save({'version': version, 'data': torch.full((2 ** 23,), float(version))}, sys.argv[1])
        print(version, flush=True)
''')


@pytest.mark.slow
def test_a_kill_during_a_save_leaves_a_complete_file(tmp_path):
    """A process rewriting a 32 MB checkpoint in a loop is killed at an arbitrary moment, most likely mid-write."""
    path = tmp_path / 'net_g_1.pth'
    process = subprocess.Popen([sys.executable, '-c', KEEP_SAVING, str(path)], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS='1'))
    try:
        assert process.stdout.readline().strip() == '1'  # the first version is complete
        process.stdout.readline()
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    saved = torch.load(path, weights_only=True)
    assert saved['version'] >= 2 and torch.equal(saved['data'], torch.full((2 ** 23,), float(saved['version'])))


def test_a_failed_save_keeps_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / 'state'
    atomic_save({'iter': 1}, path)

    def partial_then_fail(obj, f):
        f.write(b'PK\x03\x04 partial')
        raise OSError('No space left on device')

    monkeypatch.setattr(torch, 'save', partial_then_fail)
    with pytest.raises(OSError, match='No space left'):
        atomic_save({'iter': 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {'iter': 1}
    assert os.listdir(tmp_path) == ['state']


def test_every_file_of_a_run_loads_with_weights_only(finished):
    exp = finished / 'experiments' / NAME
    for path in sorted((exp / 'models').iterdir()) + sorted((exp / 'training_states').iterdir()):
        torch.load(path, weights_only=True)
    state = torch.load(exp / 'training_states' / '6.state', weights_only=True)
    assert {'sparsifier', 'data', 'rng', 'mask_checksums'} <= set(state)


# ------------------------------------------------------------------------------------- --auto_resume past damage
@pytest.mark.parametrize('damaged', ['state', 'network'])
def test_auto_resume_skips_a_damaged_newest_checkpoint(crashed, finished, damaged):
    network, state = files(crashed, 6)
    truncate(state if damaged == 'state' else network)
    with basicsr_log() as log:
        assert train_cli(crashed, '--auto_resume') == 0
    damaged_path = state if damaged == 'state' else network
    warning = next(m for m in log if m.startswith('Skipping'))
    assert f'{damaged_path}: ' in warning and 'is truncated or corrupt' in warning and 'trying an older' in warning
    assert 'Resuming training from epoch: 0, iter: 4.' in log
    # continued from 4, exactly as the uninterrupted run went on from there
    resumed = torch.load(files(crashed, 6)[0], weights_only=True)
    reference = torch.load(files(finished, 6)[0], weights_only=True)
    for key in ('params', 'params_ema'):
        for name, tensor in reference[key].items():
            assert torch.equal(resumed[key][name], tensor), name


def test_auto_resume_with_every_state_damaged_is_one_line(crashed, capsys):
    for it in (2, 4, 6):
        truncate(files(crashed, it)[1])
    assert train_cli(crashed, '--auto_resume') == 2
    err = one_line_error(capsys)
    assert 'training_states: none of the 3 training states can be resumed from' in err and '6.state' in err


def test_a_state_without_data_position_and_rng_resumes_as_basicsr_does(crashed):
    """A state written before exact resume existed: the run continues, restarting the epoch, and says so."""
    state_path = files(crashed, 6)[1]
    state = torch.load(state_path, weights_only=True)
    del state['data'], state['rng']
    torch.save(state, state_path)
    with basicsr_log() as log:
        assert train_cli(crashed, '--auto_resume') == 0
    assert any(m.startswith('Resume is not exact: the training state has no data position') for m in log)
    assert any(m.startswith('Resume is not exact: the training state has no RNG states') for m in log)


def test_partial_files_of_an_interrupted_save_are_removed_on_resume(crashed):
    network, state = files(crashed, 6)
    os.remove(state)
    leftover = state.parent / '.6.state.abcdefgh.tmp'
    leftover.write_bytes(b'PK\x03\x04 partial')
    with basicsr_log() as log:
        assert train_cli(crashed, '--auto_resume') == 0
    assert not leftover.exists()
    assert f'Removed {leftover}, left by a save that was interrupted.' in log
    assert 'Resuming training from epoch: 0, iter: 4.' in log


# -------------------------------------------------------------------------------- damaged or foreign inputs
def _write_truncated(path, finished):
    shutil.copy(files(finished, 6)[0], path)
    truncate(path)


def _write_other_network(path, finished):
    torch.save({'params': {'conv.weight': torch.zeros(4, 3, 3, 3), 'conv.bias': torch.zeros(4)}}, path)


def _write_pickled_objects(path, finished):
    torch.save({'params': {'conv_first.weight': np.zeros((12, 3, 3, 3))}}, path)


def _write_training_state(path, finished):
    shutil.copy(files(finished, 6)[1], path)


@pytest.mark.parametrize('write,message', [
    (_write_truncated, 'network checkpoint is truncated or corrupt ('),
    (_write_other_network, 'does not fit network_g ('),
    (_write_pickled_objects, 'network checkpoint holds Python objects (numpy.'),
    (_write_training_state, "not a BasicSR network checkpoint (no 'params' entry)"),
])
def test_a_bad_pretrained_network_is_one_line_naming_the_file(tiny_pairs, finished, tmp_path, capsys, write,
                                                                message):
    bad = tmp_path / 'bad.pth'
    write(bad, finished)
    opt = tiny_options(tiny_pairs, name='pretrained')
    opt['path']['pretrain_network_g'] = str(bad)
    write_options(tmp_path / 'train.yml', opt)
    assert train_cli(tmp_path) == 2
    err = one_line_error(capsys)
    assert err.startswith(f'basicsr train: error: {bad}: ') and message in err, err
    if write is _write_other_network:
        assert 'missing keys, e.g. ' in err and '2 unexpected keys, e.g. conv.bias' in err


@pytest.mark.parametrize('damage,message', [
    (truncate, 'training state is truncated or corrupt'),
    (lambda path: shutil.copy(path.parent.parent / 'models' / 'net_g_6.pth', path), 'not a BasicSR training state'),
])
def test_a_bad_resume_state_named_in_the_options_is_one_line(crashed, capsys, damage, message):
    state = files(crashed, 6)[1]
    damage(state)
    edit_options(crashed, lambda opt: opt['path'].update(resume_state=str(state)))
    assert train_cli(crashed) == 2
    assert one_line_error(capsys).startswith(f'basicsr train: error: {state}: {message}')


# ------------------------------------------------------------------------------------------------ LMDB
@pytest.fixture
def lmdb_options(tiny_pairs, tmp_path):
    """The tiny set as BasicSR LMDBs (lmdb_util), and options that read them."""
    opt = tiny_options(tiny_pairs, name='lmdb')
    train = opt['datasets']['train']
    for key in ('dataroot_gt', 'dataroot_lq'):
        folder = train[key]
        names = sorted(os.listdir(folder))
        lmdb_path = str(tmp_path / f'{key}.lmdb')
        with contextlib.redirect_stdout(None):
            make_lmdb_from_imgs(folder, lmdb_path, names, [n.split('.')[0] for n in names])
        train[key] = lmdb_path
    train['io_backend'] = {'type': 'lmdb'}
    return opt


@pytest.mark.parametrize('damage,message', [
    (lambda data: truncate(data), 'data.mdb is truncated ('),
    (lambda data: open(data, 'wb').write(os.urandom(8192)), 'data.mdb is not a readable LMDB (MDB_INVALID'),
    (lambda data: open(os.path.join(os.path.dirname(data), 'meta_info.txt'), 'a').write('extra.png (8,8,3) 1\n'),
     'data.mdb holds 3 images but meta_info.txt lists 4'),
])
def test_a_corrupt_lmdb_is_one_line_naming_the_file(lmdb_options, tmp_path, capsys, damage, message):
    from issp_basicsr.options import check_datasets
    check_datasets(lmdb_options)  # whole LMDBs pass
    data = os.path.join(lmdb_options['datasets']['train']['dataroot_gt'], 'data.mdb')
    damage(data)
    write_options(tmp_path / 'train.yml', lmdb_options)
    assert train_cli(tmp_path) == 2
    err = one_line_error(capsys)
    assert err.startswith(f'basicsr train: error: datasets:train:dataroot_gt: {data} ') and message in err, err
    assert not (tmp_path / 'experiments').exists()
