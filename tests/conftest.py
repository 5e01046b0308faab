"""Shared fixtures: a tiny paired SR data set on disk and option dicts for a tiny SwinIR."""
import copy
import os

import cv2
import numpy as np
import pytest
import yaml

import issp_basicsr  # noqa: F401  (BasicSR fixes before anything imports basicsr)
from basicsr.utils.matlab_functions import imresize

os.environ.setdefault('OMP_NUM_THREADS', '1')


# fixtures that train a run in a subprocess: every test using one is slow (`pytest -m "not slow"` skips them)
SLOW_FIXTURES = {'trained', 'torchrun_run', 'tiny_run', 'uninterrupted'}


def pytest_collection_modifyitems(config, items):
    """Tests that use a training fixture are marked ``slow``; tests marked ``cuda`` are collected everywhere and
    skipped where torch sees no CUDA device."""
    import torch
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, 'fixturenames', ())):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (run benchmarks/gpu_check.py on a GPU machine)')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)


def _write_pairs(folder, images, scale):
    os.makedirs(os.path.join(folder, 'hr'), exist_ok=True)
    os.makedirs(os.path.join(folder, 'lr'), exist_ok=True)
    for index, image in enumerate(images):
        lr = np.clip(imresize(image, 1 / scale), 0, 1)
        cv2.imwrite(os.path.join(folder, 'hr', f'{index:03d}.png'), (image[:, :, ::-1] * 255).round().astype(np.uint8))
        cv2.imwrite(os.path.join(folder, 'lr', f'{index:03d}.png'), (lr[:, :, ::-1] * 255).round().astype(np.uint8))


@pytest.fixture(scope='session')
def tiny_pairs(tmp_path_factory):
    """x4 pairs cut from scikit-image's bundled photos: 3 for training, 1 held out for validation."""
    from skimage import data
    root = tmp_path_factory.mktemp('tiny_pairs')
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    crops = [photo[:96, :96].astype(np.float32) / 255 for photo in photos]
    _write_pairs(str(root / 'train'), crops[:3], 4)
    _write_pairs(str(root / 'val'), crops[3:], 4)
    return root


def tiny_options(data_root, name='tiny', **sparsity):
    """A complete BasicSR training option dict: a 1-stage SwinIR on ``tiny_pairs``, ISS-P at 0.9."""
    block = dict(method='issp', ratio=0.9, alpha=0.95, prune_iter=20, interval=1, exclude=[])
    block.update(sparsity)
    return {
        'name': name,
        'model_type': 'ISSPSRModel',
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': {
                'name': 'tiny', 'type': 'PairedImageDataset', 'dataroot_gt': str(data_root / 'train' / 'hr'),
                'dataroot_lq': str(data_root / 'train' / 'lr'), 'io_backend': {'type': 'disk'}, 'gt_size': 32,
                'use_hflip': True, 'use_rot': True, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2,
                'dataset_enlarge_ratio': 4
            },
            'val': {
                'name': 'tinyval', 'type': 'PairedImageDataset', 'dataroot_gt': str(data_root / 'val' / 'hr'),
                'dataroot_lq': str(data_root / 'val' / 'lr'), 'io_backend': {'type': 'disk'}
            },
        },
        'network_g': {
            'type': 'SwinIR', 'upscale': 4, 'in_chans': 3, 'img_size': 8, 'window_size': 4, 'img_range': 1.0,
            'depths': [2], 'embed_dim': 12, 'num_heads': [2], 'mlp_ratio': 2, 'upsampler': 'pixelshuffledirect',
            'resi_connection': '1conv'
        },
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0.9,
            'optim_g': {'type': 'Adam', 'lr': 2e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [10], 'gamma': 0.5},
            'total_iter': 30,
            'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
            'sparsity': block,
        },
        'val': {
            'val_freq': 1000, 'save_img': False,
            'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}
        },
        'logger': {'print_freq': 5, 'save_checkpoint_freq': 10, 'use_tb_logger': True,
                   'wandb': {'project': None, 'resume_id': None}},
    }


def eval_options(train_opt, weights):
    """The ``basicsr test`` options for the model a training run wrote."""
    opt = copy.deepcopy(train_opt)
    opt['name'] = f'test_{train_opt["name"]}'
    opt['datasets'] = {'test_1': dict(opt['datasets']['val'], name='tinytest')}
    opt['path'] = {'pretrain_network_g': str(weights), 'strict_load_g': True, 'param_key_g': 'params_ema'}
    opt['val'].pop('val_freq')
    del opt['train']
    return opt


def write_options(path, opt):
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return str(path)
