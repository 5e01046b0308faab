"""Every BasicSR model type trains sparse with the block alone: SRGANModel (net_g pruned, net_d dense), the
``networks`` key, VideoRecurrentModel (BasicVSR, validation on a CPU), Real-ESRNet's on-the-fly degradations,
BasicSR's own train_pipeline, file modes, and one-line errors where the mixin cannot serve a class."""
import contextlib
import copy
import glob
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
from conftest import tiny_options, write_options

import basicsr.models
import basicsr.test
import basicsr.train
from basicsr.models.base_model import BaseModel
from basicsr.models.srgan_model import SRGANModel
from basicsr.models.video_recurrent_model import VideoRecurrentModel
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY
from issp_basicsr import cli
from issp_basicsr.checkpoint import atomic_save
from issp_basicsr.errors import OptionError, SparsityConfigError
from issp_basicsr.models import SparseModelMixin, build_model, sparse_class
from issp_basicsr.options import check_sparsity
from issp_basicsr.sparsity import pruned_count
from issp_basicsr.train import train_pipeline


# ------------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def basicsr_log():
    """The messages BasicSR's logger writes while the block runs (it does not propagate to pytest's caplog)."""
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger('basicsr')
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # INFO before the pipeline sets the logger up, for in-memory models
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def inside(folder):
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(folder)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def train_in_process(run_dir, opt, *args):
    """``basicsr train`` in this process on ``opt`` -> (model, log messages)."""
    path = write_options(run_dir / 'train.yml', opt)
    with inside(run_dir), basicsr_log() as log:
        model = train_pipeline(['-opt', path, *args])
    return model, log


def layers(params):
    return {k: v for k, v in params.items() if k.endswith('.weight') and v.dim() in (2, 4)}


def assert_exactly_sparse(params, ratio):
    assert layers(params)
    for key, weight in layers(params).items():
        assert int((weight == 0).sum()) == pruned_count(ratio, weight.numel()), key


def in_memory(opt, tmp_path):
    """What BasicSR's option parser adds, for building a model without the pipeline."""
    opt = copy.deepcopy(opt)
    opt.update(dist=False, rank=0, world_size=1, is_train=True, auto_resume=False)
    opt['path'].update(models=str(tmp_path), training_states=str(tmp_path), visualization=str(tmp_path))
    return opt


def write_png(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), (image[:, :, ::-1] * 255).round().astype(np.uint8))


def photo_crops(size, count):
    from skimage import data
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    return [photos[i % 4][:size, (i // 4) * 8:(i // 4) * 8 + size].astype(np.float32) / 255 for i in range(count)]


# --------------------------------------------------------------------------------------------- SRGANModel
@pytest.fixture(scope='module')
def gan_pairs(tmp_path_factory):
    """128x128 HR (VGGStyleDiscriminator in BasicSR 1.4.2 takes 128 or 256) with x4 bicubic LR: 3 train, 1 val."""
    root = tmp_path_factory.mktemp('gan_pairs')
    for index, image in enumerate(photo_crops(128, 4)):
        split = 'train' if index < 3 else 'val'
        write_png(root / split / 'hr' / f'{index:03d}.png', image)
        write_png(root / split / 'lr' / f'{index:03d}.png', np.clip(imresize(image, 1 / 4), 0, 1))
    return root


def gan_options(root, name='gan', **sparsity):
    opt = tiny_options(root, name=name, prune_iter=8, **sparsity)
    opt['model_type'] = 'SRGANModel'
    opt['datasets']['train'].update(gt_size=128, use_rot=False)
    opt['network_g'] = {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1,
                        'upscale': 4}
    opt['network_d'] = {'type': 'VGGStyleDiscriminator', 'num_in_ch': 3, 'num_feat': 8, 'input_size': 128}
    train = opt['train']
    train.update(total_iter=12, net_d_iters=1, net_d_init_iters=0)
    train['optim_d'] = {'type': 'Adam', 'lr': 1e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]}
    train['scheduler'] = {'type': 'MultiStepLR', 'milestones': [10], 'gamma': 0.5}
    train['pixel_opt'] = {'type': 'L1Loss', 'loss_weight': 0.01, 'reduction': 'mean'}
    train['gan_opt'] = {'type': 'GANLoss', 'gan_type': 'vanilla', 'real_label_val': 1.0, 'fake_label_val': 0.0,
                        'loss_weight': 0.005}
    opt['val']['val_freq'] = 6
    opt['logger'].update(print_freq=2, save_checkpoint_freq=6, use_tb_logger=False)
    return opt


@pytest.fixture(scope='module')
def gan_run(gan_pairs, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp('gan_run')
    opt = gan_options(gan_pairs)
    model, log = train_in_process(run_dir, opt)
    return run_dir, opt, model, log


@pytest.mark.slow
def test_srgan_keeps_its_model_type_prunes_net_g_exactly_and_leaves_net_d_dense(gan_run):
    run_dir, opt, model, log = gan_run
    assert type(model).__name__ == 'SparseSRGANModel' and isinstance(model, SRGANModel)
    assert yaml_model_type(run_dir / 'train.yml') == 'SRGANModel'
    assert 'Model [SparseSRGANModel] is created (model_type SRGANModel with train:sparsity).' in log
    assert any(m.startswith('Sparsity: SparseSRGANModel net_g: method issp, ratio 0.9, prune_iter 8') for m in log)
    assert 'Sparsity: net_g_ema is masked with net_g' in log
    assert 'Sparsity: net_d stay dense (name them in train:sparsity:networks to prune them)' in log
    models = run_dir / 'experiments' / 'gan' / 'models'
    assert sorted(os.listdir(models)) == ['net_d_12.pth', 'net_d_6.pth', 'net_d_latest.pth', 'net_g_12.pth',
                                          'net_g_6.pth', 'net_g_latest.pth']
    latest = torch.load(models / 'net_g_latest.pth', weights_only=True)
    assert set(latest) == {'params', 'params_ema'}
    for key in ('params', 'params_ema'):
        assert_exactly_sparse(latest[key], 0.9)
    for name, weight in layers(latest['params']).items():
        assert torch.equal(weight == 0, latest['params_ema'][name] == 0), name
    net_d = torch.load(models / 'net_d_latest.pth', weights_only=True)['params']
    assert layers(net_d) and all(int((w == 0).sum()) == 0 for w in layers(net_d).values())
    # the losses SRGANModel logs, beside the sparsity statistics
    iteration_lines = [m for m in log if 'iter:' in m and 'l_g_gan' in m]
    assert len(iteration_lines) == 6
    for key in ('l_g_pix', 'l_g_gan', 'l_d_real', 'l_d_fake', 'sparsity/zeros', 'sparsity/mask_change'):
        assert all(f'{key}: ' in line for line in iteration_lines), key
    assert any(m.startswith('Validation tinyval @ 12: psnr ') and '(bicubic ' in m for m in log)
    state = torch.load(run_dir / 'experiments' / 'gan' / 'training_states' / '12.state', weights_only=True)
    assert len(state['optimizers']) == 2 and set(state['sparsifiers']) == {'net_g'}
    assert state['sparsifier'] == state['sparsifiers']['net_g'] and state['sparsifier']['frozen']


def yaml_model_type(path):
    import yaml
    return yaml.safe_load(open(path))['model_type']


@pytest.mark.slow
def test_srgan_resume_is_bit_exact_across_a_checkpoint(gan_run, tmp_path):
    run_dir, _, _, _ = gan_run
    copy_dir = tmp_path / 'copy'
    shutil.copytree(run_dir, copy_dir)
    exp = copy_dir / 'experiments' / 'gan'
    for name in ('net_g_12.pth', 'net_d_12.pth', 'net_g_latest.pth', 'net_d_latest.pth'):
        os.remove(exp / 'models' / name)
    os.remove(exp / 'training_states' / '12.state')
    with inside(copy_dir), basicsr_log() as log:
        train_pipeline(['-opt', str(copy_dir / 'train.yml'), '--auto_resume'])
    assert 'Resuming training from epoch: 0, iter: 6.' in log
    for net in ('net_g', 'net_d'):
        resumed = torch.load(exp / 'models' / f'{net}_12.pth', weights_only=True)
        reference = torch.load(run_dir / 'experiments' / 'gan' / 'models' / f'{net}_12.pth', weights_only=True)
        assert set(resumed) == set(reference)
        for key in reference:
            for name, tensor in reference[key].items():
                assert torch.equal(resumed[key][name], tensor), (net, key, name)


def test_checkpoints_get_the_file_mode_basicsr_gives_them(tmp_path):
    """0o666 & ~umask, as open() gives BasicSR's own torch.save files (mkstemp alone would make them 0600)."""
    umask = os.umask(0o022)
    try:
        atomic_save({'a': torch.zeros(2)}, tmp_path / 'net_g_1.pth')
        first = stat.S_IMODE(os.stat(tmp_path / 'net_g_1.pth').st_mode)
        os.umask(0o027)
        atomic_save({'a': torch.zeros(2)}, tmp_path / '1.state')
        atomic_save({'a': torch.ones(2)}, tmp_path / 'net_g_1.pth')  # a replaced file follows the umask too
    finally:
        os.umask(umask)
    assert first == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / '1.state').st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / 'net_g_1.pth').st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ['1.state', 'net_g_1.pth']  # no temporary left
    assert torch.equal(torch.load(tmp_path / 'net_g_1.pth', weights_only=True)['a'], torch.ones(2))


@pytest.mark.slow
def test_files_of_a_run_are_readable_as_basicsr_writes_them(gan_run):
    run_dir = gan_run[0]
    umask = os.umask(0)
    os.umask(umask)
    files = glob.glob(str(run_dir / 'experiments' / 'gan' / 'models' / '*.pth'))
    files += glob.glob(str(run_dir / 'experiments' / 'gan' / 'training_states' / '*.state'))
    assert len(files) == 8
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path


# -------------------------------------------------------------------------------- GAN steps in-process
def gan_batch():
    generator = torch.Generator().manual_seed(0)
    return {'lq': torch.rand(2, 3, 32, 32, generator=generator), 'gt': torch.rand(2, 3, 128, 128, generator=generator)}


def test_the_pruning_step_runs_on_the_generators_steps_only(gan_pairs, tmp_path):
    opt = gan_options(gan_pairs, ratio=0.5, alpha=0.5)
    opt['train'].update(net_d_iters=2, ema_decay=0)
    model = build_model(in_memory(opt, tmp_path))
    for optimizer in model.optimizers:
        for group in optimizer.param_groups:
            group['lr'] = 0.0
    net_g, net_d = model.get_bare_model(model.net_g), model.get_bare_model(model.net_d)
    weight = net_g.conv_first.weight
    calls = []
    model.optimizer_d.register_step_post_hook(lambda *_: calls.append(('d', model.sparsifier.last_step)))
    model.optimizer_g.register_step_post_hook(lambda *_: calls.append(('g', model.sparsifier.last_step)))
    for it in (1, 2, 3):
        before = weight.detach().clone()
        model.feed_data(gan_batch())
        model.optimize_parameters(it)
        changed = int((weight.detach() != before).sum())
        # iterations 1 and 3: net_d steps alone (net_d_iters 2) and net_g is not touched
        assert changed == (pruned_count(0.5, weight.numel()) if it == 2 else 0), it
    assert calls == [('d', 0), ('g', 2), ('d', 2), ('d', 2)]
    assert model.sparsifier.last_step == 2 and set(model.sparsifiers) == {'net_g'}
    assert all(int((w == 0).sum()) == 0 for w in layers(net_d.state_dict()).values())


def test_a_gan_whose_generator_never_steps_after_prune_iter_is_refused(gan_pairs):
    opt = gan_options(gan_pairs)
    opt['train'].update(net_d_iters=5, total_iter=12)
    opt['train']['sparsity']['prune_iter'] = 11
    with pytest.raises(SparsityConfigError) as error:
        check_sparsity(opt)
    assert str(error.value) == ("train:sparsity:prune_iter (11): SRGANModel steps net_g's optimizer next at iteration "
                                "15 (train:net_d_iters 5, train:net_d_init_iters 0), past train:total_iter (12), so "
                                "the mask of net_g would never freeze")
    opt['train']['sparsity']['prune_iter'] = 10
    assert check_sparsity(opt).prune_iter == 10


def test_networks_key_prunes_the_discriminator_with_its_own_optimizer_and_state(gan_pairs, tmp_path):
    opt = gan_options(gan_pairs, ratio=0.5, networks=['net_g', 'net_d'])
    opt['train']['sparsity']['prune_iter'] = 2
    assert check_sparsity(opt).ratio == 0.5  # the core never sees `networks`
    with basicsr_log() as log:
        model = build_model(in_memory(opt, tmp_path))
    assert list(model.sparsifiers) == ['net_g', 'net_d'] and model.sparsifier is model.sparsifiers['net_g']
    assert not any('stay dense' in m for m in log)
    assert any(m.startswith('Sparsity: SparseSRGANModel net_d: ') and m.endswith('after each optimizer_d step')
               for m in log)
    for it in (1, 2, 3, 4):  # statistics at print_freq 2
        model.feed_data(gan_batch())
        model.optimize_parameters(it)
    for name in ('net_g', 'net_d'):
        assert model.sparsifiers[name].frozen, name
        assert_exactly_sparse(model.get_bare_model(getattr(model, name)).state_dict(), 0.5)
    assert model.log_dict['sparsity/zeros'] == pytest.approx(model.sparsifiers['net_g'].sparsity())
    assert model.log_dict['sparsity_net_d/zeros'] == pytest.approx(model.sparsifiers['net_d'].sparsity())
    state = model.training_state(0, 4)
    assert set(state['sparsifiers']) == {'net_g', 'net_d'}
    # resumed into a fresh model: both masks come back
    fresh = build_model(in_memory(opt, tmp_path))
    fresh.resume_training(state)
    for name in ('net_g', 'net_d'):
        for layer, mask in model.sparsifiers[name].masks().items():
            assert torch.equal(fresh.sparsifiers[name].masks()[layer], mask), (name, layer)
    del state['sparsifiers']['net_d']
    with pytest.raises(Exception, match='training state has no sparsifier state for net_d'):
        build_model(in_memory(opt, tmp_path)).resume_training(state)


@pytest.mark.parametrize('networks,message', [
    (['net_g', 'net_x'], "train:sparsity:networks: 'net_x' is not a network of model_type SRGANModel (the options "
                         "define net_g, net_d)"),
    (['net_g_ema'], 'train:sparsity:networks: net_g_ema is the EMA copy of net_g and is masked with it; list net_g'),
    ('net_g', "train:sparsity:networks must be a non-empty list of network names such as [net_g, net_d], got "
              "'net_g'"),
    (['net_g', 'net_g'], "train:sparsity:networks names a network twice: ['net_g', 'net_g']"),
])
def test_a_bad_networks_key_is_one_line_before_anything_is_written(gan_pairs, tmp_path, capsys, networks, message):
    opt = gan_options(gan_pairs, networks=networks)
    with inside(tmp_path):
        assert cli.main(['train', '-opt', write_options(tmp_path / 'bad.yml', opt)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f'basicsr train: error: {message}'
    assert not (tmp_path / 'experiments').exists()


def test_an_unknown_network_is_refused_by_the_model_too(gan_pairs, tmp_path):
    """The plain pipeline has no option check: the model names the networks it has."""
    opt = gan_options(gan_pairs, networks=['net_g', 'net_e'])
    opt['network_e'] = dict(opt['network_d'])  # in the options, but SRGANModel builds no net_e
    with pytest.raises(SparsityConfigError) as error:
        build_model(in_memory(opt, tmp_path))
    assert str(error.value) == ("train:sparsity:networks: 'net_e' is not a network of SRGANModel (its "
                                "networks: net_g, net_g_ema, net_d)")


# ------------------------------------------------------------------------------------- the mechanism
def test_sparse_classes_are_made_once_registered_and_patched_into_basicsrs_pipelines():
    sparse = sparse_class(SRGANModel)
    assert sparse is sparse_class(SRGANModel) and sparse is MODEL_REGISTRY.get('SparseSRGANModel')
    assert sparse.__mro__[1:3] == (SparseModelMixin, SRGANModel)
    assert sparse_class(MODEL_REGISTRY.get('ISSPSRModel')) is MODEL_REGISTRY.get('ISSPSRModel')
    for module in (basicsr.models, basicsr.train, basicsr.test):
        assert module.build_model is build_model


def test_without_the_block_the_model_is_basicsrs_own(tiny_pairs, tmp_path):
    opt = tiny_options(tiny_pairs)
    opt['model_type'] = 'SwinIRModel'
    del opt['train']['sparsity']
    assert check_sparsity(opt) is None
    model = build_model(in_memory(opt, tmp_path))
    assert type(model) is MODEL_REGISTRY.get('SwinIRModel')


@MODEL_REGISTRY.register()
class NoOptimizerGModel(BaseModel):
    """A model class the mixin cannot serve: it trains net_g with an optimizer it calls ``optimizer``."""

    def __init__(self, opt):
        super().__init__(opt)
        self.net_g = ARCH_REGISTRY.get(opt['network_g']['type'])(
            **{k: v for k, v in opt['network_g'].items() if k != 'type'})
        if self.is_train:
            self.init_training_settings()

    def init_training_settings(self):
        self.optimizer = torch.optim.Adam(self.net_g.parameters())


@MODEL_REGISTRY.register()
class NeverTrainsModel(NoOptimizerGModel):
    """A model class whose constructor never runs init_training_settings."""

    def __init__(self, opt):
        BaseModel.__init__(self, opt)
        self.net_g = torch.nn.Conv2d(3, 3, 3)


@pytest.mark.parametrize('model_type,message', [
    ('NoOptimizerGModel', 'model_type NoOptimizerGModel: NoOptimizerGModel has no optimizer_g after '
                          'init_training_settings, so train:sparsity cannot prune net_g (the pruning step runs '
                          "after each step of net_g's optimizer)"),
    ('NeverTrainsModel', 'model_type NeverTrainsModel: NeverTrainsModel did not run init_training_settings while '
                         'it was built, so train:sparsity has nothing to attach to'),
])
def test_a_model_class_the_mixin_cannot_serve_stops_before_training_with_one_line(tiny_pairs, tmp_path, capsys,
                                                                                 model_type, message):
    opt = tiny_options(tiny_pairs, name=model_type)
    opt['model_type'] = model_type
    opt['logger']['use_tb_logger'] = False
    with inside(tmp_path):
        assert cli.main(['train', '-opt', write_options(tmp_path / 'train.yml', opt)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f'basicsr train: error: {message}'
    assert not glob.glob(str(tmp_path / 'experiments' / model_type / 'models' / '*'))


def test_no_message_advises_switching_model_type(tiny_pairs):
    """The block on a stock model type is read, not refused with a hint that would drop part of the training."""
    import issp_basicsr.options
    source = open(issp_basicsr.options.__file__).read()
    assert 'is only read by model_type' not in source
    opt = tiny_options(tiny_pairs)
    for model_type in ('SRModel', 'SwinIRModel'):
        opt['model_type'] = model_type
        assert check_sparsity(opt).method == 'issp'


# ---------------------------------------------------------------------------------------- BasicSR's pipeline
PLAIN_PIPELINE = textwrap.dedent('''
    import os, sys
    import issp_basicsr  # noqa: F401  (fixes, registrations, the build_model wrapper)
    from basicsr.train import train_pipeline
    sys.argv = ['my_train.py', '-opt', sys.argv[1]]
    train_pipeline(os.getcwd())
''')


@pytest.mark.slow
def test_basicsrs_own_train_pipeline_trains_sparse_after_import(tiny_pairs, tmp_path):
    opt = tiny_options(tiny_pairs, name='plain', prune_iter=4)
    opt['model_type'] = 'SwinIRModel'
    opt['train']['total_iter'] = 6
    opt['logger'].update(print_freq=2, save_checkpoint_freq=3, use_tb_logger=False)
    (tmp_path / 'my_train.py').write_text(PLAIN_PIPELINE)
    result = subprocess.run([sys.executable, 'my_train.py', write_options(tmp_path / 'train.yml', opt)],
                            cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stderr[-3000:]
    exp = tmp_path / 'experiments' / 'plain'
    log = open(glob.glob(str(exp / 'train_*.log'))[0]).read()
    assert 'Model [SparseSwinIRModel] is created (model_type SwinIRModel with train:sparsity).' in log
    latest = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)
    for key in ('params', 'params_ema'):
        assert_exactly_sparse(latest[key], 0.9)
    state = torch.load(exp / 'training_states' / '6.state', weights_only=True)
    assert state['sparsifier']['frozen'] and state['sparsifier']['last_step'] == 6


# ------------------------------------------------------------------------------------------------- video
REDS_TRAIN_CLIPS = ('001', '002')  # '000' is in BasicSR's REDS4 validation partition


@pytest.fixture(scope='module')
def reds(tmp_path_factory):
    """REDS layout: train_sharp/<clip>/<frame>.png (256x256) and train_sharp_bicubic/X4/<clip>/<frame>.png
    (64x64: SpyNet pools its input 5 times and needs at least 64 pixels). REDSRecurrentDataset starts a
    num_frame window at any key, so 3 keys per clip (meta_info) with num_frame 2 need 4 frames on disk; the
    validation clip has 3."""
    root = tmp_path_factory.mktemp('reds')
    crops = photo_crops(256, 8)
    for clip, frames in (('000', 3), ) + tuple((c, 4) for c in REDS_TRAIN_CLIPS):
        for index in range(frames):
            image = np.roll(crops[(int(clip) + index) % 8], shift=4 * index, axis=1)  # a moving picture
            write_png(root / 'train_sharp' / clip / f'{index:08d}.png', image)
            write_png(root / 'train_sharp_bicubic' / 'X4' / clip / f'{index:08d}.png',
                      np.clip(imresize(image, 1 / 4), 0, 1))
    (root / 'meta_info_train.txt').write_text(''.join(f'{c} 3 (256,256,3)\n' for c in REDS_TRAIN_CLIPS))
    (root / 'meta_info_val.txt').write_text('000 3 (256,256,3)\n')
    return root


def basicvsr_options(root, name='basicvsr'):
    return {
        'name': name, 'model_type': 'VideoRecurrentModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': {
                'name': 'REDS', 'type': 'REDSRecurrentDataset', 'dataroot_gt': str(root / 'train_sharp'),
                'dataroot_lq': str(root / 'train_sharp_bicubic' / 'X4'),
                'meta_info_file': str(root / 'meta_info_train.txt'), 'val_partition': 'REDS4', 'test_mode': False,
                'io_backend': {'type': 'disk'}, 'num_frame': 2, 'gt_size': 256, 'interval_list': [1],
                'random_reverse': False, 'use_hflip': True, 'use_rot': True, 'num_worker_per_gpu': 0,
                'batch_size_per_gpu': 1, 'dataset_enlarge_ratio': 2, 'prefetch_mode': None,
            },
            'val': {
                'name': 'REDS4', 'type': 'VideoRecurrentTestDataset', 'dataroot_gt': str(root / 'train_sharp'),
                'dataroot_lq': str(root / 'train_sharp_bicubic' / 'X4'),
                'meta_info_file': str(root / 'meta_info_val.txt'), 'cache_data': True, 'io_backend': {'type': 'disk'},
                'num_frame': -1,
            },
        },
        'network_g': {'type': 'BasicVSR', 'num_feat': 8, 'num_block': 1, 'spynet_path': None},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0,
            'optim_g': {'type': 'Adam', 'lr': 2e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
            'total_iter': 4, 'warmup_iter': -1, 'fix_flow': 2, 'flow_lr_mul': 0.125,
            'pixel_opt': {'type': 'CharbonnierLoss', 'loss_weight': 1.0, 'reduction': 'mean'},
            'sparsity': {'method': 'issp', 'ratio': 0.9, 'alpha': 0.95, 'prune_iter': 3},
        },
        'val': {'val_freq': 4, 'save_img': False, 'flip_seq': False, 'center_frame_only': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}},
        'logger': {'print_freq': 2, 'save_checkpoint_freq': 4, 'use_tb_logger': False,
                   'wandb': {'project': None, 'resume_id': None}},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }


@pytest.mark.slow
def test_basicvsr_trains_validates_on_a_cpu_keeps_its_lr_groups_and_ends_exactly_sparse(reds, tmp_path):
    opt = basicvsr_options(reds)
    model, log = train_in_process(tmp_path, opt)
    assert type(model).__name__ == 'SparseVideoRecurrentModel' and isinstance(model, VideoRecurrentModel)
    # flow_lr_mul: BasicSR's two groups, the flow network at 1/8 of the rate
    groups = model.optimizer_g.param_groups
    net = model.get_bare_model(model.net_g)
    spynet = {id(p) for p in net.spynet.parameters()}
    assert [g['lr'] for g in groups] == [2e-4, 2e-4 * 0.125]
    assert {id(p) for p in groups[1]['params']} == spynet and not spynet & {id(p) for p in groups[0]['params']}
    assert 'Fix flow network and feature extractor for 2 iters.' in log and 'Train all the parameters.' in log
    # validation ran on the CPU, beside bicubic per frame
    line = next(m for m in log if m.startswith('Validation REDS4 @ 4: psnr '))
    assert '(bicubic ' in line and 'sparsity 0.9000 (finetune stage)' in line
    assert model.metric_results['000'].device.type == 'cpu' and model.metric_results['000'].shape == (3, 1)
    bicubic = model.validation_summary()['REDS4']['psnr'][1]
    assert bicubic == pytest.approx(expected_bicubic_psnr(reds), abs=1e-9)
    # SpyNet is pruned like every other layer (exclude: [spynet] keeps it dense)
    assert any(name.startswith('spynet.') for name in model.sparsifier.layer_names)
    latest = torch.load(tmp_path / 'experiments' / 'basicvsr' / 'models' / 'net_g_latest.pth', weights_only=True)
    assert_exactly_sparse(latest['params'], 0.9)
    assert len(layers(latest['params'])) == len(model.sparsifier.layer_names)


def expected_bicubic_psnr(root):
    """PSNR of MATLAB-bicubic x4 of each LR frame of the validation clip against its GT, averaged over frames."""
    from basicsr.metrics import calculate_psnr
    from basicsr.utils import img2tensor, tensor2img
    values = []
    for index in range(3):
        lq = cv2.imread(str(root / 'train_sharp_bicubic' / 'X4' / '000' / f'{index:08d}.png')).astype(np.float32) / 255
        gt = cv2.imread(str(root / 'train_sharp' / '000' / f'{index:08d}.png')).astype(np.float32) / 255
        up = imresize(img2tensor(lq, bgr2rgb=True, float32=True).clamp(0, 1), 4)
        values.append(calculate_psnr(tensor2img([up]), tensor2img([img2tensor(gt, bgr2rgb=True, float32=True)]), 0))
    return sum(values) / len(values)


def test_video_models_validate_with_buffers_on_the_models_device(reds, tmp_path):
    """BasicSR 1.4.2 allocates the video metric buffers with device='cuda'; compat puts them on self.device."""
    from basicsr.data import build_dataloader, build_dataset
    opt = in_memory(basicvsr_options(reds), tmp_path)
    opt['val']['flip_seq'] = False
    model = build_model(opt)
    dataset_opt = dict(opt['datasets']['val'], phase='val', scale=4)
    loader = build_dataloader(build_dataset(dataset_opt), dataset_opt, num_gpu=0, dist=False)
    with basicsr_log() as log:
        model.validation(loader, 0, None, False)
    assert model.metric_results['000'].device == model.device
    assert any(m.startswith('Validation REDS4 @ 0: psnr ') for m in log)


def test_exclude_spynet_keeps_the_flow_network_dense(reds, tmp_path):
    opt = basicvsr_options(reds)
    opt['train']['sparsity']['exclude'] = ['spynet']
    assert check_sparsity(opt) is not None
    model = build_model(in_memory(opt, tmp_path))
    names = model.sparsifier.layer_names
    assert names and not any(name.startswith('spynet') for name in names)


# --------------------------------------------------------------------------------------------- Real-ESRNet
def realesrnet_options(root):
    opt = tiny_options(root, name='realesrnet', prune_iter=2)
    opt['model_type'] = 'RealESRNetModel'
    opt['network_g'] = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1,
                        'num_grow_ch': 4}
    opt['train']['ema_decay'] = 0.9
    opt.update({  # Real-ESRGAN's degradation settings (its train_realesrnet_x4plus.yml), a small queue
        'queue_size': 4, 'gt_usm': True, 'gt_size': 64, 'high_order_degradation': True,
        'resize_prob': [0.2, 0.7, 0.1], 'resize_range': [0.15, 1.5], 'gaussian_noise_prob': 0.5,
        'noise_range': [1, 30], 'poisson_scale_range': [0.05, 3], 'gray_noise_prob': 0.4, 'jpeg_range': [30, 95],
        'second_blur_prob': 0.8, 'resize_prob2': [0.3, 0.4, 0.3], 'resize_range2': [0.3, 1.2],
        'gaussian_noise_prob2': 0.5, 'noise_range2': [1, 25], 'poisson_scale_range2': [0.05, 2.5],
        'gray_noise_prob2': 0.4, 'jpeg_range2': [30, 95],
    })
    return opt


def degradation_batch(seed):
    """What RealESRGANDataset yields: GT and the blur kernels, no 'lq' (feed_data synthesises it)."""
    generator = torch.Generator().manual_seed(seed)
    kernel = torch.zeros(2, 21, 21)
    kernel[:, 10, 10] = 1
    return {'gt': torch.rand(2, 3, 64, 64, generator=generator), 'kernel1': kernel, 'kernel2': kernel.clone(),
            'sinc_kernel': kernel.clone()}


def test_real_esrnet_synthesises_lq_in_feed_data_and_trains_sparse(tiny_pairs, tmp_path, monkeypatch):
    """RealESRNetModel (realesrgan's when installed, else BasicSR's RealESRNetModel_basicsr) on a CPU: its
    ``__init__`` moves DiffJPEG/USMSharp to CUDA and its pool calls ``.cuda()``; both are patched out here. Its
    degradations filter DiffJPEG's channels-last output with filter2D (compat fix 6)."""
    monkeypatch.setattr(torch.nn.Module, 'cuda', lambda self, *a, **k: self)
    monkeypatch.setattr(torch.Tensor, 'cuda', lambda self, *a, **k: self)
    opt = realesrnet_options(tiny_pairs)
    model = build_model(in_memory(opt, tmp_path))
    assert type(model).__name__.startswith('SparseRealESRNetModel')
    expected = 'realesrgan.models' if 'realesrgan' in sys.modules else 'basicsr.models'
    assert type(model).__mro__[2].__module__.startswith(expected)
    for it in (1, 2, 3):
        batch = degradation_batch(it)
        model.feed_data(batch)
        assert 'lq' not in batch and model.lq.shape == (2, 3, 16, 16)
        model.optimize_parameters(it)
    assert model.sparsifier.frozen
    assert_exactly_sparse(model.get_bare_model(model.net_g).state_dict(), 0.9)
    assert_exactly_sparse(model.net_g_ema.state_dict(), 0.9)


# ------------------------------------------------------------------------------------------- shipped files
def load_option_file(name):
    import yaml
    with open(os.path.join(os.path.dirname(__file__), '..', 'options', name)) as f:
        return yaml.safe_load(f)


def test_esrgan_file_prunes_the_generator_and_keeps_the_discriminator_dense(tmp_path):
    opt = load_option_file('issp_esrgan_x4.yml')
    assert opt['model_type'] == 'ESRGANModel' and opt['network_d']['type'] == 'VGGStyleDiscriminator'
    assert opt['train']['sparsity']['networks'] == ['net_g'] and 'perceptual_opt' not in opt['train']
    assert opt['datasets']['train']['gt_size'] == opt['network_d']['input_size'] == 128
    config = check_sparsity(opt)
    assert (config.method, config.ratio, config.prune_iter) == ('issp', 0.95, 100000)
    # the same file, shrunk, builds SparseESRGANModel with net_g pruned and net_d dense
    small = copy.deepcopy(opt)
    small['network_g'].update(num_feat=8, num_block=1, num_grow_ch=4)
    small['network_d']['num_feat'] = 8
    small['num_gpu'] = 0
    with basicsr_log() as log:
        model = build_model(in_memory(small, tmp_path))
    assert type(model).__name__ == 'SparseESRGANModel' and list(model.sparsifiers) == ['net_g']
    assert 'Sparsity: net_d stay dense (name them in train:sparsity:networks to prune them)' in log


def test_basicvsr_file_keeps_spynet_dense_and_needs_its_pretrained_file(tmp_path, monkeypatch):
    from basicsr.archs.spynet_arch import SpyNet
    opt = load_option_file('issp_basicvsr_reds.yml')
    assert opt['model_type'] == 'VideoRecurrentModel'
    assert (opt['train']['fix_flow'], opt['train']['flow_lr_mul']) == (5000, 0.125)
    assert opt['train']['sparsity']['exclude'] == ['spynet']
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OptionError) as error:
        check_sparsity(opt)
    assert str(error.value) == (f'network_g: {opt["network_g"]["spynet_path"]}: no such file (needed to build '
                                'BasicVSR)')
    os.makedirs(os.path.dirname(opt['network_g']['spynet_path']))
    flow = {k: v for k, v in SpyNet().state_dict().items() if k.startswith('basic_module.')}  # as BasicSR's file
    torch.save({'params': flow}, opt['network_g']['spynet_path'])
    assert check_sparsity(opt).exclude == ('spynet', )


def test_real_esrgan_prunes_the_generator_on_its_steps_and_keeps_its_gan_losses(tiny_pairs, tmp_path, monkeypatch):
    """RealESRGANModel (SRGANModel with Real-ESRNet's degradations and a U-Net discriminator), as above."""
    monkeypatch.setattr(torch.nn.Module, 'cuda', lambda self, *a, **k: self)
    monkeypatch.setattr(torch.Tensor, 'cuda', lambda self, *a, **k: self)
    opt = realesrnet_options(tiny_pairs)
    opt['model_type'] = 'RealESRGANModel'
    opt['network_d'] = {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 8, 'skip_connection': True}
    opt['train'].update(net_d_iters=1, net_d_init_iters=0)
    opt['train']['optim_d'] = {'type': 'Adam', 'lr': 1e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]}
    opt['train']['gan_opt'] = {'type': 'GANLoss', 'gan_type': 'vanilla', 'real_label_val': 1.0,
                               'fake_label_val': 0.0, 'loss_weight': 0.1}
    opt.update(l1_gt_usm=True, percep_gt_usm=True, gan_gt_usm=False)
    opt['logger']['print_freq'] = 3
    assert check_sparsity(opt).prune_iter == 2
    model = build_model(in_memory(opt, tmp_path))
    assert type(model).__name__.startswith('SparseRealESRGANModel') and list(model.sparsifiers) == ['net_g']
    for it in (1, 2, 3):
        model.feed_data(degradation_batch(it))
        model.optimize_parameters(it)
    assert {'l_g_pix', 'l_g_gan', 'l_d_real', 'l_d_fake', 'sparsity/zeros'} <= set(model.log_dict)
    assert_exactly_sparse(model.get_bare_model(model.net_g).state_dict(), 0.9)
    net_d = model.get_bare_model(model.net_d)
    assert all(int((m.weight == 0).sum()) == 0 for m in net_d.modules() if isinstance(m, torch.nn.Conv2d))


def test_a_spectral_norm_discriminator_cannot_be_pruned_and_says_so(tiny_pairs, tmp_path, monkeypatch):
    """UNetDiscriminatorSN computes its conv weights (spectral norm): masking them would be undone silently."""
    monkeypatch.setattr(torch.nn.Module, 'cuda', lambda self, *a, **k: self)
    opt = realesrnet_options(tiny_pairs)
    opt['model_type'] = 'RealESRGANModel'
    opt['network_d'] = {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 8, 'skip_connection': True}
    opt['train']['optim_d'] = {'type': 'Adam', 'lr': 1e-4}
    opt['train']['gan_opt'] = {'type': 'GANLoss', 'gan_type': 'vanilla', 'loss_weight': 0.1}
    opt['train']['sparsity']['networks'] = ['net_g', 'net_d']
    message = ('train:sparsity:networks: layer conv1 of net_d (UNetDiscriminatorSN) computes its weight from other '
               'parameters (spectral norm or a parametrization), so it cannot be pruned: add it to '
               'train:sparsity:exclude or leave net_d dense')
    with pytest.raises(SparsityConfigError) as error:
        check_sparsity(opt)
    assert str(error.value) == message
    with pytest.raises(SparsityConfigError) as error:
        build_model(in_memory(opt, tmp_path))
    assert str(error.value) == message
