"""A small SR data set built from the photos that ship inside scikit-image (a BasicSR dependency): no download.

Layout under ``root`` (default ``datasets/sample``)::

    sample_train_HR_sub.lmdb              HR sub-images (192x192, step 96) of the training photos
    sample_train_LR_bicubic_X4_sub.lmdb   the matching MATLAB-bicubic LR sub-images (48x48 at x4), same keys
    val/GTmod4/<photo>.png                held-out photos, HR cropped to a multiple of 4
    val/LRbicx4/<photo>.png               their MATLAB-bicubic LR

(one LR LMDB and one GTmod/LRbicx pair per scale). The held-out photos are never cut into training sub-images.
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


def sample_paths(root=DEFAULT_ROOT, scale=4):
    """The four paths an option file needs for the sample set at ``scale``."""
    return {
        'train_gt': os.path.join(root, 'sample_train_HR_sub.lmdb'),
        'train_lq': os.path.join(root, f'sample_train_LR_bicubic_X{scale}_sub.lmdb'),
        'val_gt': os.path.join(root, 'val', f'GTmod{scale}'),
        'val_lq': os.path.join(root, 'val', f'LRbicx{scale}'),
    }


def _photos(names, data_dir):
    paths = [os.path.join(data_dir, name) for name in names]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise OptionError(f'{missing[0]}: not found in this scikit-image installation')
    return paths


def build_sample(root=DEFAULT_ROOT, scales=SCALES, force=False, train_photos=TRAIN_PHOTOS,
                 held_out_photos=HELD_OUT_PHOTOS, crop_size=CROP_SIZE, step=STEP, data_dir=None, log=print):
    """Build the sample set under ``root`` for ``scales``; parts already built are kept unless ``force``.

    Returns ``{scale: sample_paths(root, scale)}``. Seconds on one core.
    """
    scales = sorted(set(scales))
    bad = [s for s in scales if s not in SCALES]
    if bad:
        raise OptionError(f'--scales: the sample set supports scales {", ".join(map(str, SCALES))}, got {bad[0]}')
    check_geometry(scales, crop_size, step)
    overlap = set(train_photos) & set(held_out_photos)
    if overlap:
        raise OptionError(f'{sorted(overlap)[0]} cannot be both a training and a held-out photo')
    data_dir = data_dir or skimage_data_dir()
    paths = {scale: sample_paths(root, scale) for scale in scales}
    outputs = [paths[scales[0]]['train_gt']] + [p[key] for p in paths.values()
                                                 for key in ('train_lq', 'val_gt', 'val_lq')]
    if force:
        for output in outputs:
            remove_output(output)
    if all(is_built(output) for output in outputs):
        log(f'Sample set already built in {root} (scales {", ".join(map(str, scales))}); --force rebuilds it.')
        return paths
    os.makedirs(root, exist_ok=True)

    train = _photos(train_photos, data_dir)
    held_out = _photos(held_out_photos, data_dir)
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

    for scale in scales:
        gt_dir, lq_dir = paths[scale]['val_gt'], paths[scale]['val_lq']
        if is_built(gt_dir) and is_built(lq_dir):
            continue
        write_mod_pairs([(stem(path), path) for path in held_out], gt_dir, lq_dir, scale,
                        desc=f'sample: held-out photos x{scale}')
    log(f'Sample set ready in {root}: training {", ".join(map(stem, train))}; '
        f'held out {", ".join(map(stem, held_out))}')
    return paths
