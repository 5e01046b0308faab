"""A small SR data set built from the photos that ship inside scikit-image (a BasicSR dependency) and matplotlib
(a dependency of this package): no download.

Layout under ``root`` (default ``datasets/sample``)::

    sample_train_HR_sub.lmdb              HR sub-images (192x192, step 96) of the training photos
    sample_train_LR_bicubic_X4_sub.lmdb   the matching MATLAB-bicubic LR sub-images (48x48 at x4), same keys
    val/GTmod4/<photo>.png                2 held-out photos (the demo's), HR cropped to a multiple of 4
    val/LRbicx4/<photo>.png               their MATLAB-bicubic LR
    test/GTmod4/, test/LRbicx4/           the larger held-out set (6 photos, the 2 of val/ among them)

(one LR LMDB and one GTmod/LRbicx pair per scale). No held-out photo is ever cut into training sub-images.
"""
import importlib.util
import os

from ..errors import OptionError
from .imaging import bicubic_downscale, is_built, mod_crop, read_color, remove_output, stem, write_mod_pairs
from .subimages import check_geometry, cut_pair, write_lmdbs

# Natural RGB photos of skimage/data. Left out: retina (mostly flat black border), color (a synthetic colour
# wheel), phantom and chessboard (synthetic), and the gray-scale images.
TRAIN_PHOTOS = ('astronaut.png', 'coffee.png', 'hubble_deep_field.jpg', 'ihc.png', 'motorcycle_left.png',
                'motorcycle_right.png')
HELD_OUT_PHOTOS = ('chelsea.png', 'rocket.jpg')
# The larger held-out set: the two of val/, matplotlib's one photo, and three gray-scale natural photos of
# skimage/data, read as 3 equal channels (what BasicSR's imfrombytes and cv2.IMREAD_COLOR give a gray PNG).
# Left out: brick, grass, gravel (textures), clock_motion (synthetic motion blur), cell, text, page, microaneurysms.
TEST_PHOTOS = ('chelsea.png', 'rocket.jpg', 'grace_hopper.jpg', 'camera.png', 'coins.png', 'moon.png')
SCALES = (2, 3, 4)
HR_MULTIPLE = 12  # training HR is cropped to a multiple of 12 = lcm(2, 3, 4): one HR LMDB serves every scale
CROP_SIZE, STEP, THRESH_SIZE = 192, 96, 0
COMPRESS_LEVEL = 1
DEFAULT_ROOT = os.path.join('datasets', 'sample')


def skimage_data_dir():
    """The ``skimage/data`` folder of the installed scikit-image, found without importing it."""
    spec = importlib.util.find_spec('skimage')
    if spec is None or not spec.submodule_search_locations:
        raise OptionError('scikit-image is not installed: pip install scikit-image (a BasicSR dependency)')
    return os.path.join(list(spec.submodule_search_locations)[0], 'data')


def matplotlib_data_dir():
    """matplotlib's ``mpl-data/sample_data`` folder (None when matplotlib is not installed)."""
    spec = importlib.util.find_spec('matplotlib')
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], 'mpl-data', 'sample_data')


def sample_paths(root=DEFAULT_ROOT, scale=4):
    """The paths an option file needs for the sample set at ``scale`` (``test_*``: the larger held-out set)."""
    return {
        'train_gt': os.path.join(root, 'sample_train_HR_sub.lmdb'),
        'train_lq': os.path.join(root, f'sample_train_LR_bicubic_X{scale}_sub.lmdb'),
        'val_gt': os.path.join(root, 'val', f'GTmod{scale}'),
        'val_lq': os.path.join(root, 'val', f'LRbicx{scale}'),
        'test_gt': os.path.join(root, 'test', f'GTmod{scale}'),
        'test_lq': os.path.join(root, 'test', f'LRbicx{scale}'),
    }


def _photos(names, data_dirs):
    """The path of each photo: the first of ``data_dirs`` (skimage/data, then matplotlib's sample_data) that has it."""
    paths = []
    for name in names:
        found = [os.path.join(d, name) for d in data_dirs if d and os.path.isfile(os.path.join(d, name))]
        if not found:
            raise OptionError(f'{name}: not found in this installation ({", ".join(d for d in data_dirs if d)})')
        paths.append(found[0])
    return paths


def build_sample(root=DEFAULT_ROOT, scales=SCALES, force=False, train_photos=TRAIN_PHOTOS,
                 held_out_photos=HELD_OUT_PHOTOS, test_photos=TEST_PHOTOS, crop_size=CROP_SIZE, step=STEP,
                 data_dir=None, log=print):
    """Build the sample set under ``root`` for ``scales``; parts already built are kept unless ``force``.

    ``held_out_photos`` go to ``val/``, ``test_photos`` to ``test/``; neither may share a photo with
    ``train_photos``. Photos are looked up in ``data_dir`` (default skimage/data), then in matplotlib's sample_data.

    Returns ``{scale: sample_paths(root, scale)}``. Seconds on one core.
    """
    scales = sorted(set(scales))
    bad = [s for s in scales if s not in SCALES]
    if bad:
        raise OptionError(f'--scales: the sample set supports scales {", ".join(map(str, SCALES))}, got {bad[0]}')
    check_geometry(scales, crop_size, step)
    overlap = set(train_photos) & (set(held_out_photos) | set(test_photos))
    if overlap:
        raise OptionError(f'{sorted(overlap)[0]} cannot be both a training and a held-out photo')
    data_dirs = (data_dir or skimage_data_dir(), matplotlib_data_dir())
    paths = {scale: sample_paths(root, scale) for scale in scales}
    held_out_sets = [('val', held_out_photos)] + ([('test', test_photos)] if test_photos else [])
    outputs = [paths[scales[0]]['train_gt']] + [p[key] for p in paths.values() for key in (
        'train_lq', *(f'{split}_{kind}' for split, _ in held_out_sets for kind in ('gt', 'lq')))]
    if force:
        for output in outputs:
            remove_output(output)
    if all(is_built(output) for output in outputs):
        log(f'Sample set already built in {root} (scales {", ".join(map(str, scales))}); --force rebuilds it.')
        return paths
    os.makedirs(root, exist_ok=True)

    train = _photos(train_photos, data_dirs)
    held_out = {split: _photos(photos, data_dirs) for split, photos in held_out_sets}
    hr_lmdb = paths[scales[0]]['train_gt']
    # a new HR LMDB means new LR LMDBs too: their sub-images must come from the same cut
    new_hr = not is_built(hr_lmdb)
    lr_lmdbs = {scale: paths[scale]['train_lq'] for scale in scales
                if new_hr or not is_built(paths[scale]['train_lq'])}
    if lr_lmdbs:

        def records():
            for path in train:
                hr = mod_crop(read_color(path), HR_MULTIPLE)
                lrs = {scale: bicubic_downscale(hr, scale) for scale in lr_lmdbs}
                yield cut_pair(stem(path), hr, lrs, crop_size, step, THRESH_SIZE, COMPRESS_LEVEL, with_hr=new_hr)

        count = write_lmdbs(records(), len(train), hr_lmdb if new_hr else None, lr_lmdbs, COMPRESS_LEVEL,
                            desc='sample: training sub-images')
        log(f'Wrote {count} training sub-images of {len(train)} photos to {root}')

    for split, photos in held_out.items():
        for scale in scales:
            gt_dir, lq_dir = paths[scale][f'{split}_gt'], paths[scale][f'{split}_lq']
            if is_built(gt_dir) and is_built(lq_dir):
                continue
            write_mod_pairs([(stem(path), path) for path in photos], gt_dir, lq_dir, scale,
                            desc=f'sample: held-out photos ({split}) x{scale}')
    message = f'Sample set ready in {root}: training {", ".join(map(stem, train))}; ' \
              f'held out {", ".join(map(stem, held_out["val"]))}'
    if 'test' in held_out:
        message += f'; test set {", ".join(map(stem, held_out["test"]))}'
    log(message)
    return paths
