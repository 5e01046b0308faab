"""Data preparation and option files: the sample set, DIV2K-style LMDBs, the test sets, and every options/*.yml."""
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml
from conftest import write_options

import issp_basicsr.archs  # noqa: F401  (registers CAT for the CAT-R option files)
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils.options import ordered_yaml
from issp_basicsr import cli
from issp_basicsr.data import build_sample, prepare_benchmark, prepare_div2k, sample_paths
from issp_basicsr.data.imaging import bicubic_downscale, mod_crop, positions
from issp_basicsr.data.sample import (HELD_OUT_PHOTOS, TEST_PHOTOS, TRAIN_PHOTOS, matplotlib_data_dir,
                                      skimage_data_dir)
from issp_basicsr.options import OptionError, check_model, check_sparsity
from issp_basicsr.sparsity import prunable_layers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = os.path.join(REPO, 'options')
SUBSET_TRAIN, SUBSET_HELD_OUT = ('astronaut.png', 'coffee.png'), ('chelsea.png', )


def read_meta(lmdb_path):
    with open(os.path.join(lmdb_path, 'meta_info.txt')) as f:
        return [line.split() for line in f]


def lmdb_image(lmdb_path, key):
    import lmdb
    env = lmdb.open(lmdb_path, readonly=True, lock=False)
    with env.begin() as txn:
        data = txn.get(key.encode())
    env.close()
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def paired(gt, lq, scale, phase, **extra):
    opt = dict(name='t', type='PairedImageDataset', dataroot_gt=gt, dataroot_lq=lq, phase=phase, scale=scale,
               io_backend={'type': 'lmdb' if gt.endswith('.lmdb') else 'disk'}, **extra)
    return PairedImageDataset(opt)


def take(dataset, index):
    """One item, then the dataset's LMDB environments closed (LMDB allows one open environment per process)."""
    item = dataset[index]
    for env in getattr(dataset.file_client.client, '_client', {}).values():
        env.close()
    return item


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
    """The sample set from two training photos and one held-out photo, scales 2, 3 and 4."""
    root = str(tmp_path_factory.mktemp('sample'))
    messages = []
    paths = build_sample(root, (2, 3, 4), train_photos=SUBSET_TRAIN, held_out_photos=SUBSET_HELD_OUT,
                         log=messages.append)
    return root, paths, messages


# ------------------------------------------------------------------------------------------------ sample set
def test_sample_lmdbs_are_read_by_paired_image_dataset_with_matching_shapes(sample):
    _, paths, _ = sample
    for scale in (2, 3, 4):
        train = paired(paths[scale]['train_gt'], paths[scale]['train_lq'], scale, 'train', gt_size=96,
                       use_hflip=True, use_rot=True)
        # astronaut 504x504 after the mod-12 crop: 5x5 sub-images of 192 every 96 (the last flush with the edge);
        # coffee 396x600: 4x6
        assert len(train) == 25 + 24
        item = take(train, 0)
        assert tuple(item['gt'].shape) == (3, 96, 96) and tuple(item['lq'].shape) == (3, 96 // scale, 96 // scale)
        whole = take(paired(paths[scale]['train_gt'], paths[scale]['train_lq'], scale, 'val'), 0)
        assert tuple(whole['gt'].shape) == (3, 192, 192)
        assert tuple(whole['lq'].shape) == (3, 192 // scale, 192 // scale)
        meta = read_meta(paths[scale]['train_lq'])
        assert meta[0] == ['astronaut_s001.png', f'({192 // scale},{192 // scale},3)', '1']
        assert [m[0] for m in meta] == [m[0] for m in read_meta(paths[scale]['train_gt'])]
    assert positions(504, 192, 96, 0) == [0, 96, 192, 288, 312] and positions(396, 192, 96, 0) == [0, 96, 192, 204]


def test_sample_sub_images_are_crops_of_the_photo_and_of_its_bicubic_lr(sample):
    _, paths, _ = sample
    photo = mod_crop(cv2.imread(os.path.join(skimage_data_dir(), 'coffee.png'), cv2.IMREAD_COLOR), 12)
    # coffee_s007 is row 2, column 1: top 96, left 0
    hr = lmdb_image(paths[4]['train_gt'], 'coffee_s007')
    np.testing.assert_array_equal(hr, photo[96:288, 0:192])
    lr = lmdb_image(paths[4]['train_lq'], 'coffee_s007')
    np.testing.assert_array_equal(lr, bicubic_downscale(photo, 4)[24:72, 0:48])


def test_held_out_photos_are_never_training_sub_images(sample):
    root, paths, messages = sample
    for scale in (2, 3, 4):
        keys = {line[0].split('_s')[0] for line in read_meta(paths[scale]['train_gt'])}
        assert keys == {'astronaut', 'coffee'}
        assert sorted(os.listdir(paths[scale]['val_gt'])) == ['chelsea.png']
        val = paired(paths[scale]['val_gt'], paths[scale]['val_lq'], scale, 'val')
        gt, lq = val[0]['gt'], val[0]['lq']
        assert tuple(gt.shape) == (3, 300, 451 - 451 % scale)  # chelsea is 451x300: HR cropped to a multiple
        assert tuple(lq.shape) == (3, 300 // scale, 451 // scale)
    assert sample_paths(root, 4) == paths[4]
    assert 'held out chelsea' in messages[-1]


def test_sample_is_idempotent_and_force_rebuilds(sample):
    root, paths, _ = sample
    data = os.path.join(paths[4]['train_lq'], 'data.mdb')
    stamp = os.stat(data).st_mtime_ns
    messages = []
    build_sample(root, (4, ), train_photos=SUBSET_TRAIN, held_out_photos=SUBSET_HELD_OUT, log=messages.append)
    assert messages == [f'Sample set already built in {root} (scales 4); --force rebuilds it.']
    assert os.stat(data).st_mtime_ns == stamp
    # a part that went missing is rebuilt alone; the rest is kept
    gt_stamp = os.stat(os.path.join(paths[4]['train_gt'], 'data.mdb')).st_mtime_ns
    os.remove(data)
    build_sample(root, (4, ), train_photos=SUBSET_TRAIN, held_out_photos=SUBSET_HELD_OUT, log=messages.append)
    assert os.path.isfile(data)
    assert os.stat(os.path.join(paths[4]['train_gt'], 'data.mdb')).st_mtime_ns == gt_stamp
    assert not os.path.exists(os.path.join(root, '.incomplete'))


def test_sample_rejects_unsupported_scales_and_overlapping_splits(tmp_path):
    with pytest.raises(OptionError, match='--scales: the sample set supports scales 2, 3, 4, got 5'):
        build_sample(str(tmp_path), (4, 5))
    with pytest.raises(OptionError, match='chelsea.png cannot be both a training and a held-out photo'):
        build_sample(str(tmp_path), (4, ), train_photos=('chelsea.png', ), held_out_photos=('chelsea.png', ))
    assert not os.listdir(tmp_path)


def source_photo(name):
    for folder in (skimage_data_dir(), matplotlib_data_dir()):
        if os.path.isfile(os.path.join(folder, name)):
            return cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR)
    raise AssertionError(f'{name} is not installed')


def test_the_larger_held_out_set_is_six_installed_photos_none_used_in_training():
    assert len(TEST_PHOTOS) == len(set(TEST_PHOTOS)) == 6
    assert not set(TEST_PHOTOS) & set(TRAIN_PHOTOS)
    assert set(HELD_OUT_PHOTOS) <= set(TEST_PHOTOS)  # val/ stays the demo's two photos, both in test/ too
    assert os.path.isfile(os.path.join(matplotlib_data_dir(), 'grace_hopper.jpg'))
    for name in TEST_PHOTOS:
        assert source_photo(name).ndim == 3


def test_test_set_is_mod_cropped_with_bicubic_lr_and_never_training_data(sample):
    root, paths, messages = sample
    stems = sorted(os.path.splitext(name)[0] + '.png' for name in TEST_PHOTOS)
    for scale in (2, 3, 4):
        assert paths[scale]['test_gt'] == os.path.join(root, 'test', f'GTmod{scale}')
        assert sorted(os.listdir(paths[scale]['test_gt'])) == sorted(os.listdir(paths[scale]['test_lq'])) == stems
        keys = {line[0].split('_s')[0] for line in read_meta(paths[scale]['train_gt'])}
        assert not keys & {os.path.splitext(name)[0] for name in TEST_PHOTOS}
        for name in TEST_PHOTOS:
            photo = source_photo(name)
            h, w = photo.shape[:2]
            png = os.path.splitext(name)[0] + '.png'
            gt = cv2.imread(os.path.join(paths[scale]['test_gt'], png), cv2.IMREAD_UNCHANGED)
            lq = cv2.imread(os.path.join(paths[scale]['test_lq'], png), cv2.IMREAD_UNCHANGED)
            assert gt.shape == (h - h % scale, w - w % scale, 3)
            np.testing.assert_array_equal(gt, photo[:h - h % scale, :w - w % scale])
            np.testing.assert_array_equal(lq, bicubic_downscale(gt, scale))
        test = paired(paths[scale]['test_gt'], paths[scale]['test_lq'], scale, 'val')
        assert len(test) == 6
    # camera is gray-scale: its three channels are equal
    camera = cv2.imread(os.path.join(paths[2]['test_gt'], 'camera.png'), cv2.IMREAD_UNCHANGED)
    assert (camera[..., 0] == camera[..., 1]).all() and (camera[..., 1] == camera[..., 2]).all()
    assert messages[-1].endswith('test set chelsea, rocket, grace_hopper, camera, coins, moon')


def test_test_set_is_idempotent_and_a_missing_part_is_rebuilt_alone(sample):
    root, paths, _ = sample
    stamps = {scale: os.stat(os.path.join(paths[scale]['test_lq'], 'moon.png')).st_mtime_ns for scale in (3, )}
    messages = []
    build_sample(root, (2, 3), train_photos=SUBSET_TRAIN, held_out_photos=SUBSET_HELD_OUT, log=messages.append)
    assert messages == [f'Sample set already built in {root} (scales 2, 3); --force rebuilds it.']
    import shutil
    shutil.rmtree(paths[2]['test_gt'])
    build_sample(root, (2, 3), train_photos=SUBSET_TRAIN, held_out_photos=SUBSET_HELD_OUT, log=messages.append)
    assert len(os.listdir(paths[2]['test_gt'])) == 6
    assert os.stat(os.path.join(paths[3]['test_lq'], 'moon.png')).st_mtime_ns == stamps[3]
    assert not os.path.exists(os.path.join(root, '.incomplete'))


def test_test_photos_may_not_be_training_photos_nor_missing(tmp_path):
    with pytest.raises(OptionError, match='^camera.png cannot be both a training and a held-out photo$'):
        build_sample(str(tmp_path), (2, ), train_photos=('camera.png', ))
    with pytest.raises(OptionError, match=r'^nowhere.png: not found in this installation \('):
        build_sample(str(tmp_path), (2, ), train_photos=SUBSET_TRAIN, test_photos=('nowhere.png', ))
    assert not os.path.exists(tmp_path / 'test')


# ------------------------------------------------------------------------------------- DIV2K-style training data
def textured(height, width, seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def make_div2k(root, lr_x2=True):
    """A DIV2K-like download: two training images (one not a multiple of 12), a validation folder, official
    LR x2 for the training images only (deliberately a constant image, so its use can be seen)."""
    hr_dir = root / 'DIV2K_train_HR'
    hr_dir.mkdir(parents=True)
    images = {'0001': textured(96, 120, 1), '0002': textured(100, 74, 2)}
    for stem, image in images.items():
        cv2.imwrite(str(hr_dir / f'{stem}.png'), image)
    (root / 'DIV2K_valid_HR').mkdir()
    cv2.imwrite(str(root / 'DIV2K_valid_HR' / '0801.png'), textured(96, 96, 3))
    if lr_x2:
        lr_dir = root / 'DIV2K_train_LR_bicubic' / 'X2'
        lr_dir.mkdir(parents=True)
        for stem, image in images.items():
            h, w = image.shape[:2]
            cv2.imwrite(str(lr_dir / f'{stem}x2.png'), np.full(((h + 1) // 2, (w + 1) // 2, 3), 77, np.uint8))
    return images


def test_div2k_sub_image_lmdbs_from_official_and_bicubic_lr(tmp_path):
    images = make_div2k(tmp_path / 'DIV2K')
    out = str(tmp_path / 'out' / 'DIV2K')
    messages = []
    hr_lmdb, lr_lmdbs = prepare_div2k(str(tmp_path / 'DIV2K'), out, (2, 4), crop_size=48, step=24, workers=1,
                                      log=messages.append)
    assert hr_lmdb == os.path.join(out, 'DIV2K_train_HR_sub.lmdb')
    assert lr_lmdbs == {s: os.path.join(out, f'DIV2K_train_LR_bicubic_X{s}_sub.lmdb') for s in (2, 4)}
    # 0001: 96x120 -> rows 0,24,48 x cols 0,24,48,72 = 12; 0002: 96x72 after the mod-12 crop -> 3 x 2 = 6
    keys = [m[0] for m in read_meta(hr_lmdb)]
    assert len(keys) == 18 and keys[0] == '0001_s001.png' and keys[-1] == '0002_s006.png'
    assert all(m[1] == '(48,48,3)' for m in read_meta(hr_lmdb))
    assert all(m[1] == '(24,24,3)' for m in read_meta(lr_lmdbs[2]))
    assert all(m[1] == '(12,12,3)' for m in read_meta(lr_lmdbs[4]))
    assert 'valid' not in ''.join(keys)
    # x2 from the official folder (the constant 77), x4 made with MATLAB bicubic from the cropped HR
    assert (lmdb_image(lr_lmdbs[2], '0002_s004') == 77).all()
    hr = mod_crop(images['0002'], 12)
    np.testing.assert_array_equal(lmdb_image(hr_lmdb, '0002_s004'), hr[24:72, 24:72])
    np.testing.assert_array_equal(lmdb_image(lr_lmdbs[4], '0002_s004'), bicubic_downscale(hr, 4)[6:18, 6:18])
    assert any('LR x2 from' in m and m.endswith(os.path.join('DIV2K_train_LR_bicubic', 'X2')) for m in messages)
    assert any(m.endswith('LR x4 from MATLAB bicubic of the HR images') for m in messages)
    dataset = paired(hr_lmdb, lr_lmdbs[4], 4, 'train', gt_size=32, use_hflip=False, use_rot=False)
    assert len(dataset) == 18 and tuple(take(dataset, 5)['lq'].shape) == (3, 8, 8)

    # idempotent; a new scale is added beside the existing LMDBs; other settings need --force
    prepare_div2k(str(tmp_path / 'DIV2K'), out, (2, 3, 4), crop_size=48, step=24, workers=1, log=messages.append)
    assert [m[0] for m in read_meta(os.path.join(out, 'DIV2K_train_LR_bicubic_X3_sub.lmdb'))] == keys
    with pytest.raises(OptionError, match='prepare_info.json: .* was prepared with other settings'):
        prepare_div2k(str(tmp_path / 'DIV2K'), out, (4, ), crop_size=96, step=48, workers=1, log=messages.append)


def test_flickr2k_style_folder_of_images_with_two_workers_matches_one(tmp_path):
    hr_dir = tmp_path / 'Flickr2K' / 'Flickr2K_HR'
    hr_dir.mkdir(parents=True)
    for index in range(3):
        cv2.imwrite(str(hr_dir / f'00000{index}.png'), textured(72, 84, index))
    one = prepare_div2k(str(hr_dir), str(tmp_path / 'one'), (3, ), crop_size=48, step=24, workers=1, log=print)
    two = prepare_div2k(str(tmp_path / 'Flickr2K'), str(tmp_path / 'two'), (3, ), crop_size=48, step=24,
                        workers=2, log=print)
    assert os.path.basename(one[0]) == 'one_train_HR_sub.lmdb'
    assert read_meta(one[1][3]) == read_meta(two[1][3]) and len(read_meta(one[0])) == 3 * 2 * 3
    for key in ('000000_s001', '000002_s006'):
        np.testing.assert_array_equal(lmdb_image(one[1][3], key), lmdb_image(two[1][3], key))


def test_div2k_input_errors_name_the_path(tmp_path):
    with pytest.raises(OptionError, match=f'^{tmp_path / "nope"}: input folder does not exist$'):
        prepare_div2k(str(tmp_path / 'nope'), str(tmp_path / 'out'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(OptionError, match=f'^{tmp_path / "empty"}: no HR images'):
        prepare_div2k(str(tmp_path / 'empty'), str(tmp_path / 'out'))
    make_div2k(tmp_path / 'DIV2K', lr_x2=True)
    os.remove(tmp_path / 'DIV2K' / 'DIV2K_train_LR_bicubic' / 'X2' / '0002x2.png')
    with pytest.raises(OptionError, match='0002x2.png: LR image of 0002 is missing'):
        prepare_div2k(str(tmp_path / 'DIV2K'), str(tmp_path / 'out'), (2, ), crop_size=48, step=24, workers=1)
    with pytest.raises(OptionError, match='--crop-size 50 is not a multiple of scale 4'):
        prepare_div2k(str(tmp_path / 'DIV2K'), str(tmp_path / 'out'), (2, 4), crop_size=50, step=24)
    assert not glob.glob(str(tmp_path / 'out' / '*.lmdb'))  # nothing half-written is left behind


# ---------------------------------------------------------------------------------------------- test sets
def make_benchmarks(root):
    """Three of the five sets, in three download layouts."""
    (root / 'Set5').mkdir(parents=True)
    cv2.imwrite(str(root / 'Set5' / 'baby.png'), textured(50, 61, 1))
    cv2.imwrite(str(root / 'Set5' / 'bird.bmp'), textured(40, 40, 2))
    (root / 'Set14' / 'HR').mkdir(parents=True)
    (root / 'Set14' / 'LR_bicubic').mkdir()
    cv2.imwrite(str(root / 'Set14' / 'HR' / 'zebra.png'), textured(45, 70, 3))
    for factor, size in ((2, (44, 58)), (4, (44, 56))):  # Huang et al.'s archive: HR cropped per factor
        folder = root / 'BSD100' / f'image_SRF_{factor}'
        folder.mkdir(parents=True)
        cv2.imwrite(str(folder / f'img_001_SRF_{factor}_HR.png'), textured(*size, 4)[:size[0], :size[1]])
        cv2.imwrite(str(folder / f'img_001_SRF_{factor}_LR.png'), textured(11, 14, 5))


def test_benchmark_sets_mod_crop_and_bicubic_lr(tmp_path):
    make_benchmarks(tmp_path / 'downloads')
    out = str(tmp_path / 'benchmark')
    messages = []
    result = prepare_benchmark(str(tmp_path / 'downloads'), out, (2, 3, 4), log=messages.append)
    assert sorted(result) == ['B100', 'Set14', 'Set5']
    assert sum(m.startswith(('Urban100: not found under', 'Manga109: not found under')) for m in messages) == 2
    for scale in (2, 3, 4):
        gt_dir, lq_dir = result['Set5'][scale]
        assert gt_dir == os.path.join(out, 'Set5', f'GTmod{scale}') and lq_dir.endswith(f'LRbicx{scale}')
        assert sorted(os.listdir(gt_dir)) == sorted(os.listdir(lq_dir)) == ['baby.png', 'bird.png']
        hr = cv2.imread(os.path.join(gt_dir, 'baby.png'))
        assert hr.shape == (50 - 50 % scale, 61 - 61 % scale, 3)
        np.testing.assert_array_equal(cv2.imread(os.path.join(lq_dir, 'baby.png')), bicubic_downscale(hr, scale))
        assert os.listdir(result['Set14'][scale][0]) == ['zebra.png']
        assert os.listdir(result['B100'][scale][0]) == ['img_001.png']  # from image_SRF_2, the least cropped
        assert cv2.imread(os.path.join(result['B100'][scale][0], 'img_001.png')).shape[:2] == (44 - 44 % scale,
                                                                                                58 - 58 % scale)
        dataset = paired(gt_dir, lq_dir, scale, 'val')
        assert len(dataset) == 2 and dataset[0]['gt'].shape[1] == dataset[0]['lq'].shape[1] * scale
    # idempotent, and cli.main runs it
    assert cli.main(['datasets', 'benchmark', '--input', str(tmp_path / 'downloads'), '--output', out,
                     '--sets', 'Set5', '--scales', '4']) == 0


def test_benchmark_errors_name_the_path(tmp_path, capsys):
    assert cli.main(['datasets', 'benchmark', '--input', str(tmp_path / 'missing')]) == 2
    assert capsys.readouterr().err == (f'basicsr datasets: error: {tmp_path / "missing"}: input folder does '
                                       'not exist\n')
    (tmp_path / 'downloads' / 'Set5').mkdir(parents=True)
    with pytest.raises(OptionError, match=f'^{tmp_path / "downloads" / "Set5"}: no HR images'):
        prepare_benchmark(str(tmp_path / 'downloads'), str(tmp_path / 'out'))
    with pytest.raises(OptionError, match=f'^{tmp_path / "downloads" / "Urban100"}: test set folder not found$'):
        prepare_benchmark(str(tmp_path / 'downloads'), str(tmp_path / 'out'), sets=['Urban100'])
    (tmp_path / 'elsewhere').mkdir()
    with pytest.raises(OptionError, match='elsewhere: none of Set5, Set14, B100, Urban100, Manga109 found'):
        prepare_benchmark(str(tmp_path / 'elsewhere'), str(tmp_path / 'out'))
    assert cli.main(['datasets', 'div2k', '--input', str(tmp_path / 'elsewhere')]) == 2
    assert capsys.readouterr().err.startswith(f'basicsr datasets: error: {tmp_path / "elsewhere"}: no HR images')


# ------------------------------------------------------------------------------------------------ option files
def load(name):
    with open(os.path.join(OPTIONS, name)) as f:
        return yaml.load(f, Loader=ordered_yaml()[0])


TOP_LEVEL = sorted(os.path.basename(p) for p in glob.glob(os.path.join(OPTIONS, '*.yml')))
PAPER = {  # file -> (scale, arch, method, lr, fine-tuning iterations)
    'issp_swinir_x2.yml': (2, 'SwinIR', 'issp', 2e-4, 200000),
    'issp_swinir_x3.yml': (3, 'SwinIR', 'issp', 2e-4, 200000),
    'issp_swinir_x4.yml': (4, 'SwinIR', 'issp', 2e-4, 200000),
    'iht_swinir_x4.yml': (4, 'SwinIR', 'iht', 2e-4, 200000),
    'issp_edsr_l_x4.yml': (4, 'EDSR', 'issp', 1e-4, 300000),
    'issp_cat_r_x4.yml': (4, 'CAT', 'issp', 2e-4, 500000),
}


# files that train a BasicSR model type with the block (docs/ModelTypes.md); the others use ISSPSRModel
MODEL_TYPE_FILES = {'issp_esrgan_x4.yml': 'ESRGANModel', 'issp_basicvsr_reds.yml': 'VideoRecurrentModel'}


@pytest.mark.parametrize('name', TOP_LEVEL)
def test_every_option_file_parses_and_passes_the_checks(name, tmp_path, monkeypatch):
    opt = load(name)
    check_model(opt)
    if 'train' in opt:
        assert opt['model_type'] == MODEL_TYPE_FILES.get(name, 'ISSPSRModel')
        if opt['network_g'].get('spynet_path'):  # a pretrained SpyNet the architecture loads when built
            import torch
            from basicsr.archs.spynet_arch import SpyNet
            monkeypatch.chdir(tmp_path)
            os.makedirs(os.path.dirname(opt['network_g']['spynet_path']))
            # as BasicSR's file
            flow = {k: v for k, v in SpyNet().state_dict().items() if k.startswith('basic_module.')}
            torch.save({'params': flow}, opt['network_g']['spynet_path'])
        config = check_sparsity(opt)
        assert config is not None and config.hold_lr_during_pruning
    for dataset in opt['datasets'].values():
        for key in ('dataroot_gt', 'dataroot_lq'):
            assert dataset[key].startswith('datasets/'), (name, key)


def test_all_expected_option_files_exist():
    demo = ['demo_issp_swinir_sample_x4.yml', 'test_demo_issp_swinir_sample_x4.yml', 'compare_swinir_sample_x2.yml',
            'compare_swinir_sample_x2_lr2e-3.yml']
    released = ['issp_swinir_x4_released.yml']
    expected = set(PAPER) | {f'test_{n}' for n in PAPER} | set(demo) | set(released) | set(MODEL_TYPE_FILES)
    assert set(TOP_LEVEL) == expected


def test_released_file_differs_from_the_paper_file_in_schedule_and_selection_only():
    """The reference code's released SwinIR run: constant LR (milestones past total_iter), 19:20 flat groups."""
    paper, released = load('issp_swinir_x4.yml'), load('issp_swinir_x4_released.yml')
    assert released['name'] == 'issp_swinir_x4_released'
    assert min(released['train']['scheduler']['milestones']) > released['train']['total_iter']
    assert (released['train']['sparsity']['pattern'], released['train']['sparsity']['nm_layout']) == ('19:20', 'flat')
    for opt in (paper, released):
        opt.pop('name')
        opt['train'].pop('scheduler')
        for key in ('pattern', 'nm_layout'):
            opt['train']['sparsity'].pop(key, None)
    assert json.loads(json.dumps(paper)) == json.loads(json.dumps(released))


@pytest.mark.parametrize('name', sorted(PAPER))
def test_paper_files_have_the_published_settings(name):
    scale, arch, method, lr, finetune = PAPER[name]
    opt = load(name)
    assert opt['name'] == name[:-4] and opt['scale'] == scale and opt['num_gpu'] == 'auto'
    net = dict(opt['network_g'])
    assert net.pop('type') == arch and net['upscale'] == scale
    if arch == 'SwinIR':
        assert (net['embed_dim'], net['depths'], net['num_heads']) == (60, [6, 6, 6, 6], [6, 6, 6, 6])
        assert (net['window_size'], net['mlp_ratio'], net['upsampler'], net['resi_connection']) == \
            (8, 2, 'pixelshuffledirect', '1conv')
        layers = 103
    elif arch == 'CAT':
        assert (net['embed_dim'], net['depth'], net['num_heads'], net['mlp_ratio']) == (180, [6] * 6, [6] * 6, 4)
        assert (net['split_size_0'], net['split_size_1'], net['block_name'], net['upsampler']) == \
            ([4] * 6, [16] * 6, 'CATB_regular', 'pixelshuffle')
        layers = 480
    else:
        assert (net['num_feat'], net['num_block'], net['res_scale']) == (256, 32, 0.1)
        layers = 69
    from basicsr.utils.registry import ARCH_REGISTRY
    assert len(prunable_layers(ARCH_REGISTRY.get(arch)(**net), [])) == layers
    train = opt['datasets']['train']
    assert train['io_backend'] == {'type': 'lmdb'}
    assert train['dataroot_gt'] == 'datasets/DIV2K/DIV2K_train_HR_sub.lmdb'
    assert train['dataroot_lq'] == f'datasets/DIV2K/DIV2K_train_LR_bicubic_X{scale}_sub.lmdb'
    assert train['gt_size'] == 64 * scale and train['batch_size_per_gpu'] == 32
    val = opt['datasets']['val']
    assert val['name'] == 'Set5' and val['dataroot_gt'] == f'datasets/benchmark/Set5/GTmod{scale}'
    for metric in opt['val']['metrics'].values():
        assert metric['crop_border'] == scale and metric['test_y_channel'] is True
    t = opt['train']
    assert t['optim_g'] == {'type': 'Adam', 'lr': lr, 'weight_decay': 0, 'betas': [0.9, 0.99]}
    assert t['pixel_opt']['type'] == 'L1Loss' and t['total_iter'] == 100000 + finetune
    assert max(t['scheduler']['milestones']) < finetune  # counted from prune_iter
    expected = {'method': method, 'ratio': 0.95, 'prune_iter': 100000, 'interval': 1, 'exclude': [],
                'hold_lr_during_pruning': True, 'scope': 'layer', 'pattern': 'unstructured', 'ratios': {}}
    if method == 'issp':
        expected['alpha'] = 0.95
    assert dict(t['sparsity']) == expected


def test_iht_file_differs_from_issp_only_in_name_and_method():
    issp, iht = load('issp_swinir_x4.yml'), load('iht_swinir_x4.yml')
    for opt in (issp, iht):
        opt.pop('name')
        opt['train']['sparsity'].pop('method')
    issp['train']['sparsity'].pop('alpha')
    assert issp == iht


@pytest.mark.parametrize('name', sorted(PAPER))
def test_test_files_match_their_training_file(name):
    train, test = load(name), load(f'test_{name}')
    scale = train['scale']
    assert test['scale'] == scale and test['network_g'] == train['network_g']
    assert test['path']['pretrain_network_g'] == f'experiments/{name[:-4]}/models/net_g_latest.pth'
    sets = [(d['name'], d['dataroot_gt'], d['dataroot_lq']) for _, d in sorted(test['datasets'].items())]
    assert sets == [(s, f'datasets/benchmark/{s}/GTmod{scale}', f'datasets/benchmark/{s}/LRbicx{scale}')
                    for s in ('Set5', 'Set14', 'B100', 'Urban100', 'Manga109')]
    for metric in test['val']['metrics'].values():
        assert metric['crop_border'] == scale and metric['test_y_channel'] is True


def test_demo_reads_the_sample_set(sample):
    demo, test = load('demo_issp_swinir_sample_x4.yml'), load('test_demo_issp_swinir_sample_x4.yml')
    assert_reads_sample_set(demo, 4)
    assert test['network_g'] == demo['network_g']
    assert test['path']['pretrain_network_g'] == f'experiments/{demo["name"]}/models/net_g_latest.pth'


def test_lr_2e_3_comparison_base_is_the_demo_network_at_x2_on_the_sample_set():
    base, demo = load('compare_swinir_sample_x2_lr2e-3.yml'), load('demo_issp_swinir_sample_x4.yml')
    assert_reads_sample_set(base, 2)
    assert base['network_g'] == dict(demo['network_g'], upscale=2)
    assert base['datasets']['train']['gt_size'] == 32  # the demo's LR patch of 16
    assert base['train'] == demo['train']  # the demo's budget and schedule
    assert all(metric['crop_border'] == 2 for metric in base['val']['metrics'].values())


def test_comparison_base_has_the_papers_lr_twice_the_budget_and_the_larger_test_set():
    base, old = load('compare_swinir_sample_x2.yml'), load('compare_swinir_sample_x2_lr2e-3.yml')
    assert_reads_sample_set(base, 2, split='test')
    assert base['datasets']['val']['name'] == 'sample_test'
    train, old_train = base['train'], old['train']
    assert train['optim_g'] == dict(old_train['optim_g'], lr=2e-4) and isinstance(train['optim_g']['lr'], float)
    assert train['total_iter'] == 6000 and train['sparsity']['prune_iter'] == 2000
    assert train['scheduler']['milestones'] == [2 * m for m in old_train['scheduler']['milestones']] == [2000, 3000]
    # nothing else differs: same network, training data, method block (but prune_iter) and metrics
    assert base['network_g'] == old['network_g'] and base['datasets']['train'] == old['datasets']['train']
    assert dict(train['sparsity'], prune_iter=1000) == old_train['sparsity']
    assert base['val']['metrics'] == old['val']['metrics']


def assert_reads_sample_set(opt, scale, split='val'):
    paths = sample_paths('datasets/sample', scale)
    assert opt['num_gpu'] == 0 and opt['scale'] == scale and opt['network_g']['upscale'] == scale
    assert opt['datasets']['train']['dataroot_gt'] == paths['train_gt']
    assert opt['datasets']['train']['dataroot_lq'] == paths['train_lq']
    assert opt['datasets']['val']['dataroot_gt'] == paths[f'{split}_gt']
    assert opt['datasets']['val']['dataroot_lq'] == paths[f'{split}_lq']


@pytest.mark.slow
def test_demo_trains_and_tests_on_the_sample_lmdbs(sample, tmp_path):
    """The demo files, shrunk to a tiny SwinIR and 6 iterations, run end to end on the sample set's LMDBs."""
    root, _, _ = sample
    os.makedirs(tmp_path / 'datasets')
    os.symlink(root, tmp_path / 'datasets' / 'sample')
    tiny = {'embed_dim': 12, 'depths': [1], 'num_heads': [2]}
    demo, test = load('demo_issp_swinir_sample_x4.yml'), load('test_demo_issp_swinir_sample_x4.yml')
    for opt in (demo, test):
        opt['network_g'].update(tiny)
    demo['train'].update(total_iter=6)
    demo['train']['sparsity']['prune_iter'] = 4
    demo['logger'].update(print_freq=2, use_tb_logger=False)
    demo['val']['val_freq'] = 100
    env = dict(os.environ, OMP_NUM_THREADS='1')
    for kind, opt in (('train', demo), ('test', test)):
        path = write_options(tmp_path / f'{kind}.yml', json.loads(json.dumps(opt)))
        result = subprocess.run([sys.executable, '-m', 'issp_basicsr.cli', kind, '-opt', path], cwd=tmp_path,
                                capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    train_log = ''.join(open(p).read() for p in glob.glob(str(tmp_path / 'experiments' / '*' / 'train_*.log')))
    assert 'Final sample_val: psnr' in train_log and '(bicubic ' in train_log
    assert 'Final sparsity: 0.90' in train_log
    test_log = ''.join(open(p).read() for p in glob.glob(str(tmp_path / 'results' / '*' / 'test_*.log')))
    assert 'Final sample_val: psnr' in test_log and '(bicubic ' in test_log
