"""The whole option file checked before anything is built; the experiment lock; one-line errors everywhere."""
import copy
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import yaml

from issp_basicsr import cli
from issp_basicsr.lock import ExperimentLock, lock_path

from conftest import _write_pairs, tiny_options, write_options

ROOT = pathlib.Path(__file__).resolve().parents[1]


def call(tmp_path, *argv):
    """``basicsr ARGV`` in this process with cwd ``tmp_path`` (one thread) -> exit status."""
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(tmp_path)
    torch.set_num_threads(1)
    try:
        return cli.main(list(argv))
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def error_lines(capsys, command='train'):
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err + captured.out, captured.err
    lines = [line for line in captured.err.strip().splitlines() if line.strip()]
    assert lines and all(line.startswith(f'basicsr {command}: error: ') for line in lines), captured.err
    return [line[len(f'basicsr {command}: error: '):] for line in lines]


@pytest.fixture(scope='module')
def checkpoint(tiny_pairs, tmp_path_factory):
    """A network checkpoint of the tiny SwinIR of ``tiny_options`` ({'params', 'params_ema'})."""
    from basicsr.utils.registry import ARCH_REGISTRY
    net_opt = dict(tiny_options(tiny_pairs)['network_g'])
    net = ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)
    path = tmp_path_factory.mktemp('ckpt') / 'net_g.pth'
    torch.save({'params': net.state_dict(), 'params_ema': net.state_dict()}, path)
    return path


@pytest.fixture
def uneven_pairs(tiny_pairs, tmp_path):
    """``tiny_pairs``' training set with one LQ image missing."""
    import shutil
    root = tmp_path / 'uneven'
    shutil.copytree(tiny_pairs / 'train', root)
    os.unlink(root / 'lr' / '002.png')
    return root


def _set(path, value):
    def change(opt):
        node = opt
        keys = path.split(':')
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return change


def _drop(path):
    def change(opt):
        node = opt
        keys = path.split(':')
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
    return change


# (id, change of the option dict, the text every expected line starts with / contains)
BAD_FILES = [
    ('lr-string', _set('train:optim_g:lr', '2e-4'),
     ['train:optim_g:lr: YAML 1.1 reads 2e-4 as a string: write 2.0e-4 or !!float 2e-4']),
    ('ema-string', _set('train:ema_decay', '999e-3'),
     ['train:ema_decay: YAML 1.1 reads 999e-3 as a string: write 999.0e-3 or !!float 999e-3']),
    ('betas-string', _set('train:optim_g:betas', [0.9, '99e-2']), ['train:optim_g:betas: YAML 1.1 reads 99e-2']),
    ('loss-weight-string', _set('train:pixel_opt:loss_weight', '1e0'), ['train:pixel_opt:loss_weight: YAML 1.1']),
    ('gamma-string', _set('train:scheduler:gamma', '5e-1'), ['train:scheduler:gamma: YAML 1.1 reads 5e-1']),
    ('lr-quoted', _set('train:optim_g:lr', '0.0002'),
     ["train:optim_g:lr: '0.0002' is a string, not a number: write it without quotes"]),
    ('total-iter-fraction', _set('train:total_iter', 30.5),
     ['train:total_iter must be a whole number of iterations, got 30.5']),
    ('loss-type', _set('train:pixel_opt:type', 'L1Los'),
     ["train:pixel_opt:type: 'L1Los' is not a BasicSR loss (did you mean L1Loss?); known: "]),
    ('loss-argument', lambda o: o['train']['pixel_opt'].update(loss_wieght=1.0),
     ['train:pixel_opt:loss_wieght is not an argument of L1Loss (did you mean loss_weight?)']),
    ('optimizer-type', _set('train:optim_g:type', 'Adamw'),
     ["train:optim_g:type: 'Adamw' is not a optimizer ISSPSRModel.get_optimizer supports (did you mean Adam?); "
      "known: Adam"]),
    ('optimizer-argument', lambda o: o['train']['optim_g'].update(beta=0.9),
     ["train:optim_g: Adam rejects these settings (got an unexpected keyword argument 'beta')"]),
    ('scheduler-type', _set('train:scheduler:type', 'CosineLR'),
     ["train:scheduler:type: 'CosineLR' is not a scheduler ISSPSRModel.setup_schedulers supports"]),
    ('scheduler-missing', _drop('train:scheduler'), ['train:scheduler is required']),
    ('milestones-string', _set('train:scheduler:milestones', '3,5'),
     ["train:scheduler:milestones must be a list of iteration counts, e.g. [250000, 400000], got '3,5'"]),
    ('metric-type', _set('val:metrics:psnr:type', 'calc_psnr'),
     ["val:metrics:psnr:type: 'calc_psnr' is not a BasicSR metric"]),
    ('metric-argument', _drop('val:metrics:psnr:crop_border'),
     ['val:metrics:psnr:crop_border is required by calculate_psnr']),
    ('dataset-type', _set('datasets:train:type', 'PairedImageDatset'),
     ["datasets:train:type: 'PairedImageDatset' is not a BasicSR dataset (did you mean PairedImageDataset?)"]),
    ('io-backend', _set('datasets:train:io_backend:type', 'disc'),
     ["datasets:train:io_backend:type: 'disc' is not a BasicSR io backend (did you mean disk?); known: disk, "
      "memcached, lmdb"]),
    ('io-backend-missing', _drop('datasets:val:io_backend'), ['datasets:val:io_backend is required']),
    ('num-gpu', _set('num_gpu', 1), ['num_gpu: 1 but no CUDA devices are visible: set num_gpu: 0']),
    ('batch-size', _set('datasets:train:batch_size_per_gpu', 0),
     ['datasets:train:batch_size_per_gpu must be an integer >= 1, got 0']),
    ('workers', _set('datasets:train:num_worker_per_gpu', -1),
     ['datasets:train:num_worker_per_gpu must be an integer >= 0, got -1']),
    ('no-datasets', _drop('datasets'), ['datasets: required']),
    ('no-train-set', _drop('datasets:train'), ['datasets:train is required by basicsr train']),
    ('phase', lambda o: o['datasets'].update(valid=o['datasets'].pop('val')), ["datasets:valid: basicsr train reads"]),
    ('val-freq', _set('val:val_freq', 0), ['val:val_freq must be an integer >= 1, got 0']),
    ('print-freq', _set('logger:print_freq', 0), ['logger:print_freq must be an integer >= 1, got 0']),
    ('save-freq', _set('logger:save_checkpoint_freq', -5), ['logger:save_checkpoint_freq must be an integer >= 1']),
    ('no-logger', _drop('logger'), ['logger: required by basicsr train']),
    ('no-train', _drop('train'), ['train: required by basicsr train']),
    ('gt-root', _set('datasets:train:dataroot_gt', '/no/such/gt'),
     ['datasets:train:dataroot_gt: /no/such/gt does not exist']),
    ('val-lq-root', _set('datasets:val:dataroot_lq', '/no/such/lq'),
     ['datasets:val:dataroot_lq: /no/such/lq does not exist']),
    ('scale', lambda o: (o.update(scale=2), o['network_g'].update(upscale=2)),
     ['datasets:train: ', 'datasets:val: ']),  # both sets: "... is 96x96 but ... is 24x24, not scale 2"
    ('gt-size-multiple', _set('datasets:train:gt_size', 30),
     ['datasets:train:gt_size (30) must be a multiple of scale (4): e.g. 28']),
    ('gt-size-large', _set('datasets:train:gt_size', 128),
     ['datasets:train:gt_size (128) is larger than ']),
    ('model-type', _set('model_type', 'SRModle'), ["model_type: 'SRModle' is not a registered BasicSR model"]),
    ('arch-type', _set('network_g:type', 'SwinIRR'), ["network_g:type: 'SwinIRR' is not a registered BasicSR"]),
    ('arch-key', lambda o: o['network_g'].update(embed_dims=24),
     ['network_g:embed_dims is not an argument of SwinIR (did you mean embed_dim?)']),
    ('num-heads', _set('network_g:num_heads', [5]),
     ['network_g:num_heads [5]: every head count must divide network_g:embed_dim (12); 5 does not']),
    ('arch-constructor', lambda o: o['network_g'].update(upsampler='pixelshuffle', upscale=5),
     ['network_g:upscale (5) differs from scale (4), the factor of the data',
      'network_g: SwinIR cannot be built from these settings (ValueError: scale 5 is not supported. Supported '
      'scales: 2^n and 3.)']),
    ('use-flip', lambda o: o['datasets']['train'].update(use_flip=o['datasets']['train'].pop('use_hflip')),
     ['datasets:train:use_hflip is required by PairedImageDataset for training (true or false) (use_flip is not '
      'read by BasicSR 1.4.2: write use_hflip)']),
    ('path-key', lambda o: o['path'].update(pretrain_model_g=None),
     ["path:pretrain_model_g is not read by BasicSR 1.4.2 (did you mean pretrain_network_g?) (make_exp_dirs would "
      "create a folder named by its value None)"]),
    ('sparsity-string', _set('train:sparsity:ratio', '9e-1'), ['train:sparsity:ratio: YAML 1.1 reads 9e-1']),
    ('two-problems', lambda o: (_set('train:optim_g:lr', '1e-3')(o), _set('val:val_freq', 0)(o)),
     ['train:optim_g:lr: YAML 1.1 reads 1e-3', 'val:val_freq must be an integer >= 1']),
]


@pytest.mark.parametrize('change,expected', [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_a_bad_file_is_one_line_per_problem_and_leaves_nothing(tiny_pairs, tmp_path, capsys, change, expected):
    if expected[0].startswith('num_gpu') and torch.cuda.is_available():
        pytest.skip('a GPU is visible')
    opt = tiny_options(tiny_pairs)
    change(opt)
    assert call(tmp_path, 'train', '-opt', write_options(tmp_path / 'bad.yml', opt)) == 2
    lines = error_lines(capsys)
    assert len(lines) == len(expected), lines
    for line, text in zip(lines, expected):
        assert line.startswith(text), (line, text)
    assert not (tmp_path / 'experiments').exists() and not (tmp_path / 'tb_logger').exists()


def test_the_messages_of_the_data_checks(tiny_pairs, uneven_pairs, tmp_path, capsys):
    opt = tiny_options(tiny_pairs)
    opt.update(scale=2)
    opt['network_g'].update(upscale=2)
    opt['datasets'].pop('val')
    assert call(tmp_path, 'train', '-opt', write_options(tmp_path / 'bad.yml', opt)) == 2
    gt, lq = tiny_pairs / 'train' / 'hr' / '000.png', tiny_pairs / 'train' / 'lr' / '000.png'
    assert error_lines(capsys) == [f'datasets:train: {gt} is 96x96 but {lq} is 24x24, not scale 2 (scale: 2); set '
                                   "scale to the data's factor or point dataroot_lq at the x2 images"]
    opt = tiny_options(tiny_pairs)
    opt['datasets']['train'].update(dataroot_gt=str(uneven_pairs / 'hr'), dataroot_lq=str(uneven_pairs / 'lr'))
    assert call(tmp_path, 'train', '-opt', write_options(tmp_path / 'bad.yml', opt)) == 2
    assert error_lines(capsys) == [f'datasets:train: dataroot_lq holds 2 files but dataroot_gt 3 ({uneven_pairs / "lr"}'
                                   f', {uneven_pairs / "hr"}): every GT image needs its LQ image of the same name']
    assert not (tmp_path / 'experiments').exists()


def test_a_misspelt_network_key_names_the_key_and_the_fix(tiny_pairs, tmp_path, capsys):
    """The issue's case: ``embed_dims: 24`` silently trained the default width (SwinIR takes **kwargs)."""
    opt = tiny_options(tiny_pairs)
    opt['network_g']['embed_dims'] = 24
    assert call(tmp_path, 'train', '-opt', write_options(tmp_path / 'bad.yml', opt)) == 2
    line, = error_lines(capsys)
    assert line.startswith('network_g:embed_dims is not an argument of SwinIR (did you mean embed_dim?); SwinIR '
                           'takes: img_size, patch_size, in_chans, embed_dim,')


@pytest.mark.parametrize('text,expected', [
    ('name: x\ntrain: [1, 2\n', r"^bad\.yml:3:1: YAML syntax error: while parsing a flow sequence did not find "
     r"expected ',' or '\]'$"),
    ('name: x\n  model_type: y\n', r'^bad\.yml:2:13: YAML syntax error: mapping values are not allowed in this '
     r'context$'),
    ('- 1\n- 2\n', r'^bad\.yml: an option file is a mapping of keys to values, got list$'),
])
def test_a_yaml_error_names_the_file_line_and_column(tmp_path, capsys, text, expected):
    (tmp_path / 'bad.yml').write_text(text)
    assert call(tmp_path, 'train', '-opt', 'bad.yml') == 2
    line, = error_lines(capsys)
    assert re.search(expected, line), line
    assert not (tmp_path / 'experiments').exists()


@pytest.mark.parametrize('entry,expected', [
    ('train:ema_decay', '--force_yml train:ema_decay: write KEY:SUBKEY=VALUE (one "=", e.g. train:ema_decay=0.999)'),
    ('nosuch:key=1', '--force_yml nosuch:key=1: nosuch is not in the option file (--force_yml changes existing keys '
     'only)'),
    ('train:optim_g:lr=[1,', "--force_yml train:optim_g:lr=[1,: cannot read the value '[1,' (SyntaxError:"),
    ('train:optim_g:lr=2e-4', 'train:optim_g:lr: YAML 1.1 reads 2e-4 as a string'),
])
def test_a_malformed_force_yml_is_one_line(tiny_pairs, tmp_path, capsys, entry, expected):
    path = write_options(tmp_path / 'train.yml', tiny_options(tiny_pairs))
    assert call(tmp_path, 'train', '-opt', path, '--force_yml', entry) == 2
    line, = error_lines(capsys)
    assert line.startswith(expected), line
    assert not (tmp_path / 'experiments').exists()


def test_basicsr_test_needs_a_checkpoint_and_its_param_key(tiny_pairs, checkpoint, tmp_path, capsys):
    from conftest import eval_options
    opt = eval_options(tiny_options(tiny_pairs), checkpoint)
    opt['path']['pretrain_network_g'] = None
    assert call(tmp_path, 'test', '-opt', write_options(tmp_path / 'test.yml', opt)) == 2
    assert error_lines(capsys, 'test') == ['path:pretrain_network_g: basicsr test needs the checkpoint to evaluate '
                                           '(e.g. experiments/NAME/models/net_g_latest.pth)']
    opt = eval_options(tiny_options(tiny_pairs), checkpoint)
    opt['path']['param_key_g'] = 'params_best'
    assert call(tmp_path, 'test', '-opt', write_options(tmp_path / 'test.yml', opt)) == 2
    assert error_lines(capsys, 'test') == [f"path:param_key_g: {checkpoint} has no 'params_best' entry (it holds "
                                           'params, params_ema)']
    opt = eval_options(tiny_options(tiny_pairs), checkpoint)
    opt['network_g']['embed_dim'] = 16
    opt['network_g']['num_heads'] = [4]
    assert call(tmp_path, 'test', '-opt', write_options(tmp_path / 'test.yml', opt)) == 2
    line, = error_lines(capsys, 'test')
    assert line.startswith(f'{checkpoint}: does not fit network_g (')
    opt = eval_options(tiny_options(tiny_pairs), checkpoint)
    del opt['val']
    assert call(tmp_path, 'test', '-opt', write_options(tmp_path / 'test.yml', opt)) == 2
    assert error_lines(capsys, 'test') == ['val: required by basicsr test (save_img, metrics)']
    assert not (tmp_path / 'results').exists()


def test_a_param_key_the_training_checkpoint_lacks_is_an_error(tiny_pairs, tmp_path, capsys):
    from basicsr.utils.registry import ARCH_REGISTRY
    opt = tiny_options(tiny_pairs)
    net_opt = dict(opt['network_g'])
    net = ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)
    torch.save({'params': net.state_dict()}, tmp_path / 'only_params.pth')
    opt['path'].update(pretrain_network_g=str(tmp_path / 'only_params.pth'), param_key_g='params_ema')
    assert call(tmp_path, 'train', '-opt', write_options(tmp_path / 'bad.yml', opt)) == 2
    assert error_lines(capsys) == [f"path:param_key_g: {tmp_path / 'only_params.pth'} has no 'params_ema' entry "
                                   '(it holds params)']


# ---------------------------------------------------------------------------------------------- accepted as BasicSR


def test_what_basicsr_accepts_passes_the_checks(tiny_pairs, tmp_path):
    """Integral floats, the ``_basicsr`` suffix fallback, dense with the default prune_iter on a short run."""
    from issp_basicsr.options import validate_options
    from issp_basicsr.option_checks import check_type_names, registered
    from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY
    opt = tiny_options(tiny_pairs)
    opt['train'].update(total_iter=30.0, warmup_iter=-1.0)
    opt['train']['scheduler']['milestones'] = [10.0]
    opt['val']['val_freq'] = 5e3
    opt['logger'].update(print_freq=5.0, save_checkpoint_freq=1e1)
    for phase in opt['datasets'].values():
        phase['phase'] = phase['name'] == 'tiny' and 'train' or 'val'
        phase['scale'] = 4
    opt.update(is_train=True, dist=False, rank=0, world_size=1)
    assert validate_options(opt, is_train=True) == []
    assert opt['train']['total_iter'] == 30 and type(opt['train']['total_iter']) is int
    assert opt['train']['scheduler']['milestones'] == [10] and opt['logger']['save_checkpoint_freq'] == 10
    # BasicSR's own copy (RealESRNetModel_basicsr) counts; the realesrgan plugin, when installed, registers the name
    assert registered(MODEL_REGISTRY, 'RealESRNetModel')
    assert 'RealESRNetModel' not in MODEL_REGISTRY or 'realesrgan' in sys.modules
    assert registered(ARCH_REGISTRY, 'SRVGGNetCompact') and not registered(ARCH_REGISTRY, 'SRVGGNet')
    assert check_type_names(dict(opt, model_type='RealESRGANModel'), True) == []
    dense = tiny_options(tiny_pairs, method='dense')
    for key in ('ratio', 'alpha', 'prune_iter', 'interval', 'exclude'):
        dense['train']['sparsity'].pop(key)
    from issp_basicsr.sparsity import SparsityConfig, SparsityConfigError
    assert SparsityConfig.from_dict(dense['train']['sparsity'], 30).prune_iter == 100000
    with pytest.raises(SparsityConfigError, match=r'prune_iter \(100000\) is past the total_iter \(30\)'):
        SparsityConfig.from_dict({'method': 'dense', 'hold_lr_during_pruning': True}, 30)


def _meta_info(folder, path):
    names = sorted(os.listdir(folder))
    pathlib.Path(path).write_text(''.join(f'{n} (96,96,3)\n' for n in names))
    return str(path)


STOCK_FILES = {
    # the shapes of BasicSR 1.4.2's options/train files: !!float counts, dist_params, comments, old path keys
    'train_EDSR_Mx2.yml': """
        # general settings
        name: 201_EDSR_Mx2_f64b16_DIV2K_300k_B16G1_wandb
        model_type: ISSPSRModel
        scale: 2
        num_gpu: 0  # set num_gpu: 0 for cpu mode
        manual_seed: 10

        datasets:
          train:
            name: DIV2K
            type: PairedImageDataset
            dataroot_gt: {x2}/train/hr
            dataroot_lq: {x2}/train/lr
            filename_tmpl: '{{}}'
            io_backend:
              type: disk

            gt_size: 32
            use_hflip: true
            use_rot: true

            # data loader
            use_shuffle: true
            num_worker_per_gpu: 0
            batch_size_per_gpu: 2
            dataset_enlarge_ratio: 2
            prefetch_mode: ~

          val:
            name: Set5
            type: PairedImageDataset
            dataroot_gt: {x2}/val/hr
            dataroot_lq: {x2}/val/lr
            io_backend:
              type: disk

        network_g:
          type: EDSR
          num_in_ch: 3
          num_out_ch: 3
          num_feat: 8
          num_block: 2
          upscale: 2
          res_scale: 1
          img_range: 255.
          rgb_mean: [0.4488, 0.4371, 0.4040]

        path:
          pretrain_network_g: ~
          strict_load_g: true
          resume_state: ~

        train:
          optim_g:
            type: Adam
            lr: !!float 1e-4
            weight_decay: 0
            betas: [0.9, 0.99]

          scheduler:
            type: MultiStepLR
            milestones: [2]
            gamma: 0.5

          total_iter: !!float 4
          warmup_iter: -1  # no warm up

          pixel_opt:
            type: L1Loss
            loss_weight: 1.0
            reduction: mean
          sparsity: {{method: issp, ratio: 0.9, prune_iter: 2}}

        val:
          val_freq: !!float 4
          save_img: false

          metrics:
            psnr: # metric name, can be arbitrary
              type: calculate_psnr
              crop_border: 2
              test_y_channel: false

        logger:
          print_freq: 2
          save_checkpoint_freq: !!float 4
          use_tb_logger: true
          wandb:
            project: ~
            resume_id: ~

        dist_params:
          backend: nccl
          port: 29500
        """,
    'train_MSRResNet_x4.yml': """
        name: 001_MSRResNet_x4_f64b16_DIV2K_1000k_B16G1_wandb
        model_type: ISSPSRModel
        scale: 4
        num_gpu: auto
        manual_seed: 0

        datasets:
          train:
            name: DIV2K
            type: PairedImageDataset
            dataroot_gt: {x4}/train/hr
            dataroot_lq: {x4}/train/lr
            meta_info_file: {meta4}
            filename_tmpl: '{{}}'
            io_backend:
              type: disk

            gt_size: 32
            use_hflip: true
            use_rot: true

            num_worker_per_gpu: 0
            batch_size_per_gpu: 2
            dataset_enlarge_ratio: 2
            prefetch_mode: ~

          val:
            name: Set5
            type: PairedImageDataset
            dataroot_gt: {x4}/val/hr
            dataroot_lq: {x4}/val/lr
            io_backend:
              type: disk

        network_g:
          type: MSRResNet
          num_in_ch: 3
          num_out_ch: 3
          num_feat: 8
          num_block: 2
          upscale: 4

        path:
          pretrain_network_g: ~
          param_key_g: params
          strict_load_g: true
          resume_state: ~

        train:
          ema_decay: 0.999
          optim_g:
            type: Adam
            lr: !!float 2e-4
            weight_decay: 0
            betas: [0.9, 0.99]

          scheduler:
            type: CosineAnnealingRestartLR
            periods: [2, 2]
            restart_weights: [1, 1]
            eta_min: !!float 1e-7

          total_iter: 4
          warmup_iter: -1

          pixel_opt:
            type: L1Loss
            loss_weight: 1.0
            reduction: mean
          sparsity: {{method: iht, ratio: 0.9, prune_iter: 2}}

        val:
          val_freq: !!float 4
          save_img: false
          metrics:
            psnr:
              type: calculate_psnr
              crop_border: 4
              test_y_channel: false
            ssim:
              type: calculate_ssim
              crop_border: 4
              test_y_channel: false

        logger:
          print_freq: 2
          save_checkpoint_freq: !!float 4
          use_tb_logger: true
          wandb:
            project: ~
            resume_id: ~

        dist_params:
          backend: nccl
          port: 29500
        """,
    'train_SwinIR_SRx2_scratch.yml': """
        name: train_SwinIR_SRx2_scratch_P48W8_DIV2K_500k_B4G8
        model_type: ISSPSRModel
        scale: 2
        num_gpu: auto
        manual_seed: 0

        datasets:
          train:
            name: DIV2K
            type: PairedImageDataset
            dataroot_gt: {x2}/train/hr
            dataroot_lq: {x2}/train/lr
            meta_info_file: {meta2}
            filename_tmpl: '{{}}'
            io_backend:
              type: disk

            gt_size: 32
            use_hflip: true
            use_rot: true

            use_shuffle: true
            num_worker_per_gpu: 0
            batch_size_per_gpu: 2
            dataset_enlarge_ratio: 2  # 1 in BasicSR's file; 3 images make too few batches here
            prefetch_mode: ~

          val:
            name: Set5
            type: PairedImageDataset
            dataroot_gt: {x2}/val/hr
            dataroot_lq: {x2}/val/lr
            io_backend:
              type: disk

        network_g:
          type: SwinIR
          upscale: 2
          in_chans: 3
          img_size: 16
          window_size: 4
          img_range: 1.
          depths: [2]
          embed_dim: 12
          num_heads: [2]
          mlp_ratio: 2
          upsampler: 'pixelshuffle'
          resi_connection: '1conv'

        path:
          pretrain_network_g: ~
          strict_load_g: true
          resume_state: ~

        train:
          ema_decay: 0.999
          optim_g:
            type: Adam
            lr: !!float 2e-4
            weight_decay: 0
            betas: [0.9, 0.99]

          scheduler:
            type: MultiStepLR
            milestones: [2, 3]
            gamma: 0.5

          total_iter: !!float 4
          warmup_iter: -1  # no warm up

          pixel_opt:
            type: L1Loss
            loss_weight: 1.0
            reduction: mean
          sparsity: {{method: issp, ratio: 0.9, alpha: 0.95, prune_iter: 2}}

        val:
          val_freq: !!float 4
          save_img: false

          metrics:
            psnr:
              type: calculate_psnr
              crop_border: 2
              test_y_channel: false

        logger:
          print_freq: 2
          save_checkpoint_freq: !!float 4
          use_tb_logger: true
          wandb:
            project: ~
            resume_id: ~

        dist_params:
          backend: nccl
          port: 29500
        """,
}


@pytest.fixture(scope='module')
def x2_pairs(tmp_path_factory):
    from skimage import data
    root = tmp_path_factory.mktemp('x2_pairs')
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    crops = [photo[:96, :96].astype(np.float32) / 255 for photo in photos]
    _write_pairs(str(root / 'train'), crops[:3], 2)
    _write_pairs(str(root / 'val'), crops[3:], 2)
    return root


@pytest.mark.slow
@pytest.mark.parametrize('name', list(STOCK_FILES))
def test_stock_basicsr_train_files_still_train(name, tiny_pairs, x2_pairs, tmp_path):
    """BasicSR's own train files (tiny networks, the tiny data, 4 iterations), with model_type ISSPSRModel and a
    sparsity block: !!float counts, ``num_gpu: auto``, ``meta_info_file`` on disk, old path keys all train."""
    text = textwrap.dedent(STOCK_FILES[name]).format(x2=x2_pairs, x4=tiny_pairs,
                                                     meta2=_meta_info(x2_pairs / 'train' / 'hr', tmp_path / 'm2.txt'),
                                                     meta4=_meta_info(tiny_pairs / 'train' / 'hr', tmp_path / 'm4.txt'))
    (tmp_path / name).write_text(text)
    assert call(tmp_path, 'train', '-opt', name) == 0
    experiment = tmp_path / 'experiments' / yaml.safe_load(text)['name']
    assert sorted(os.listdir(experiment / 'models')) == ['net_g_4.pth', 'net_g_latest.pth']
    assert os.listdir(experiment / 'training_states') == ['4.state']


@pytest.mark.slow
def test_meta_info_file_beside_lmdb_is_accepted_and_logged(tiny_pairs, tmp_path):
    """BasicSR ignores meta_info_file with an LMDB backend: accepted, one log line says it is ignored; and an
    architecture found through the ``_basicsr`` suffix (SRVGGNetCompact) trains."""
    import contextlib
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    opt = tiny_options(tiny_pairs, name='lmdb_run')
    train = opt['datasets']['train']
    for key, folder in (('dataroot_gt', 'hr'), ('dataroot_lq', 'lr')):
        source = str(tiny_pairs / 'train' / folder)
        names = sorted(os.listdir(source))
        with contextlib.redirect_stdout(None):
            make_lmdb_from_imgs(source, str(tmp_path / f'{folder}.lmdb'), names, [n.split('.')[0] for n in names])
        train[key] = str(tmp_path / f'{folder}.lmdb')
    train.update(io_backend={'type': 'lmdb'}, meta_info_file='/no/such/meta_info.txt')
    opt['network_g'] = {'type': 'SRVGGNetCompact', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_conv': 2,
                        'upscale': 4, 'act_type': 'prelu'}
    opt['train'].update(total_iter=4)
    opt['train']['sparsity'].update(prune_iter=2)
    opt['logger'].update(save_checkpoint_freq=4)
    path = write_options(tmp_path / 'train.yml', opt)
    result = subprocess.run([sys.executable, '-m', 'issp_basicsr.cli', 'train', '-opt', path], cwd=tmp_path,
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1',
                                                                     PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-2000:]
    log = next((tmp_path / 'experiments' / 'lmdb_run').glob('train_*.log')).read_text()
    assert log.count('datasets:train:meta_info_file is ignored with io_backend lmdb') == 1
    assert os.path.isfile(tmp_path / 'experiments' / 'lmdb_run' / 'models' / 'net_g_4.pth')


# ---------------------------------------------------------------------------------------------- the lock


def _train_process(path, cwd, *args):
    return subprocess.Popen([sys.executable, '-m', 'issp_basicsr.cli', 'train', '-opt', str(path), *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT)))


def _wait_for(condition, process, timeout=180):
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f'the first run ended early: {process.stderr.read()[-2000:]}')
        if time.time() > deadline:
            raise AssertionError('timed out')
        time.sleep(0.2)


@pytest.mark.slow
def test_a_second_run_of_a_live_experiment_is_refused_and_a_killed_ones_lock_taken_over(tiny_pairs, tmp_path,
                                                                                        capsys):
    opt = tiny_options(tiny_pairs, name='shared', prune_iter=5)
    opt['train']['total_iter'] = 100000
    opt['logger'].update(save_checkpoint_freq=5, print_freq=100)
    opt.pop('val')
    path = write_options(tmp_path / 'train.yml', opt)
    experiment = tmp_path / 'experiments' / 'shared'
    first = _train_process(path, tmp_path)
    try:
        _wait_for(lambda: (experiment / 'training_states' / '5.state').exists(), first)
        for args in ((), ('--auto_resume', )):
            assert call(tmp_path, 'train', '-opt', path, *args) == 2
            line, = error_lines(capsys)
            assert line.startswith(f'{experiment} is being trained by pid {first.pid} on ')
            assert line.endswith(f'(lock file {tmp_path / "experiments" / ".shared.lock"})')
        assert sorted(os.listdir(tmp_path / 'experiments')) == ['.shared.lock', 'shared']  # nothing archived
        _wait_for(lambda: (experiment / 'training_states' / '10.state').exists(), first)
    finally:
        first.kill()
        first.wait()
    saved = sorted(int(n[:-len('.state')]) for n in os.listdir(experiment / 'training_states') if n[0] != '.')
    assert saved[:2] == [5, 10] and all(s % 5 == 0 for s in saved)
    for step in saved:  # the first run's checkpoints, where it wrote them and loadable
        torch.load(experiment / 'models' / f'net_g_{step}.pth', weights_only=True)
    owner = json.loads((tmp_path / 'experiments' / '.shared.lock').read_text())
    assert owner['pid'] == first.pid and owner['state'] == 'running'  # left by the killed run
    # the killed run's lock is taken over by a resume, with a warning naming it
    resumed = copy.deepcopy(opt)
    resumed['train']['total_iter'] = saved[-1] + 2
    write_options(tmp_path / 'train.yml', resumed)
    second = _train_process(path, tmp_path, '--auto_resume')
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-2000:]
    log = sorted(experiment.glob('train_shared_*.log'))[-1].read_text()
    assert f'Took over the lock {tmp_path / "experiments" / ".shared.lock"} left by pid {first.pid} ' in log
    assert 'Resuming training from epoch: ' in log and os.path.isfile(experiment / 'models' / 'net_g_latest.pth')
    assert (tmp_path / 'experiments' / '.shared.lock').read_text() == ''  # a finished run leaves it empty


def test_the_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path):
    root = tmp_path / 'experiments' / 'run'
    holder = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f"""
        import sys, time
        from issp_basicsr.lock import ExperimentLock
        ExperimentLock({str(root)!r}).acquire()
        print('held', flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == 'held'
        from issp_basicsr.lock import ExperimentLockedError
        with pytest.raises(ExperimentLockedError, match=rf'^{re.escape(str(root))} is being trained by pid '
                                                        rf'{holder.pid} on '):
            ExperimentLock(root).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = ExperimentLock(root).acquire()  # the holder is dead: its lock is taken over
    assert lock.warning.startswith(f'Took over the lock {lock_path(root)} left by pid {holder.pid} on ')
    assert json.loads(open(lock_path(root)).read())['pid'] == os.getpid()
    lock.release()
    again = ExperimentLock(root).acquire()  # released normally: no warning
    assert again.warning is None
    again.release()
    # a lock file that names a live pid but that no process holds (a copied folder, a reused pid) is stale too
    with open(lock_path(root), 'w') as f:
        json.dump({'pid': os.getppid(), 'host': 'elsewhere', 'state': 'running', 'started': 'x'}, f)
    taken = ExperimentLock(root).acquire()
    assert taken.warning.startswith(f'Took over the lock {lock_path(root)} left by pid {os.getppid()} on elsewhere')
    taken.release()


# ---------------------------------------------------------------------------------------------- other commands


def test_every_command_fails_with_one_line(checkpoint, tiny_pairs, tmp_path, capsys):
    (tmp_path / 'afile').write_text('')
    cases = [
        (['export', '-i', str(checkpoint), '-o', 'nodir/x.pth'],
         '-o nodir/x.pth: the folder nodir does not exist (create it first)'),
        (['export', '-i', str(checkpoint), '-o', str(tmp_path)], f'-o {tmp_path}: is a folder; name the file to write'),
        (['export', '--dense', '-i', str(checkpoint), '-o', 'nodir/y.pth'],
         '-o nodir/y.pth: the folder nodir does not exist (create it first)'),
        (['report', str(tmp_path), '-o', 'afile'], '-o afile: is a file, not a folder; name a folder to write into'),
        (['report-efficiency', '-opt', write_options(tmp_path / 'e.yml', tiny_options(tiny_pairs)), '-i',
          str(checkpoint), '--json', 'nodir/e.json', '--no-latency'],
         '--json nodir/e.json: the folder nodir does not exist (create it first)'),
        (['datasets', 'sample', '--root', 'afile'],
         '--root afile: is a file, not a folder; name a folder to write into'),
        (['datasets', 'benchmark', '--input', str(tmp_path), '--output', 'afile/sub'],
         f'--output afile/sub: {tmp_path / "afile"} is a file, not a folder'),
        (['test', '-opt', 'missing.yml'], '-opt missing.yml: no such file'),
    ]
    for argv, expected in cases:
        assert call(tmp_path, *argv) == 2, argv
        assert error_lines(capsys, argv[0]) == [expected]
    assert sorted(os.listdir(tmp_path)) == ['afile', 'e.yml']


def test_a_failed_save_is_one_line(tmp_path, capsys, monkeypatch):
    """An OSError (a full disk, no permission) is one line naming the file, not a traceback."""
    import errno
    from issp_basicsr import cli as cli_module
    module = type(sys)('fake_command')

    def main(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / 'models' / 'net_g_5.pth'))
    module.main = main
    monkeypatch.setitem(sys.modules, 'fake_command', module)
    monkeypatch.setitem(cli_module.COMMANDS, 'fake', ('fake_command', ''))
    assert cli_module.main(['fake']) == 2
    assert error_lines(capsys, 'fake') == [f'{tmp_path / "models" / "net_g_5.pth"}: No space left on device']


def test_set_reads_numbers_as_yaml_1_2():
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    try:
        from compare_methods import apply_overrides
    finally:
        sys.path.remove(str(ROOT / 'benchmarks'))
    opt = {'train': {'optim_g': {'lr': 1.0}, 'total_iter': 1}, 'name': 'x', 'val': {'flag': False}}
    apply_overrides(opt, ['train:optim_g:lr=2e-4', 'train:total_iter=1e3', 'name="1e3"', 'val:flag=true'])
    assert opt == {'train': {'optim_g': {'lr': 0.0002}, 'total_iter': 1000.0}, 'name': '1e3', 'val': {'flag': True}}
    assert type(opt['train']['optim_g']['lr']) is float


@pytest.mark.slow
def test_the_repositorys_option_files_raise_nothing_but_their_missing_data(tmp_path):
    """No false alarm: every file under options/ passes every check except the data and checkpoints that are not
    on this machine."""
    import glob
    from issp_basicsr.errors import InputError
    from issp_basicsr.options import validate_options
    from issp_basicsr.train import parse
    files = sorted(glob.glob(str(ROOT / 'options' / '**' / '*.yml'), recursive=True))
    assert len(files) >= 10
    for path in files:
        is_train = not os.path.basename(path).startswith('test_')
        opt, _ = parse(['-opt', path], is_train)
        try:
            validate_options(opt, is_train)
        except InputError as error:
            assert all(line.endswith('does not exist') for line in error.problems), (path, error.problems)
