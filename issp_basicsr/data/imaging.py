"""Image and LMDB building blocks shared by the data-preparation commands.

Everything goes through BasicSR's own utilities (MATLAB-style ``imresize``, ``LmdbMaker``) so that prepared data
is bit-for-bit what BasicSR's scripts would give. Outputs are built in a staging folder and renamed into place
when complete, so an interrupted run never leaves a half-written LMDB that a later run would mistake for done.
"""
import contextlib
import os
import shutil

import cv2
import numpy as np
from basicsr.data.transforms import mod_crop  # noqa: F401  (re-exported: the one mod-crop of the package)
from basicsr.utils.lmdb_util import LmdbMaker
from basicsr.utils.matlab_functions import imresize
from tqdm import tqdm

from ..errors import OptionError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm', '.webp')
STAGING = '.incomplete'


def stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def sorted_scales(scales):
    """``scales`` sorted without repeats; an OptionError unless they are integers >= 1."""
    scales = sorted(set(scales))
    if not scales or min(scales) < 1:
        raise OptionError(f'--scales must be integers >= 1, got {scales}')
    return scales


def is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.')


def list_images(folder):
    """The image files directly inside ``folder``, sorted by name."""
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if is_image(name) and os.path.isfile(os.path.join(folder, name)))


def require_folder(path, what='input folder'):
    """A one-line OptionError naming ``path`` unless it is an existing folder."""
    if not os.path.isdir(path):
        raise OptionError(f'{path}: {what} does not exist' if not os.path.exists(path) else
                          f'{path}: {what} is not a folder')


def read_color(path):
    """An 8-bit, 3-channel BGR image as BasicSR reads it (gray is replicated, alpha dropped, 16-bit scaled)."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise OptionError(f'{path}: not a readable image')
    return image


def bicubic_downscale(image, scale):
    """MATLAB ``imresize(img, 1/scale, 'bicubic')`` of a uint8 image, rounded back to uint8 (BasicSR's LR)."""
    low = imresize(image.astype(np.float32) / 255., 1 / scale)
    return np.clip(low * 255., 0, 255).round().astype(np.uint8)


def positions(length, crop_size, step, thresh_size):
    """Start offsets of sub-images along one axis, as BasicSR's extract_subimages.py places them: every
    ``step`` pixels, plus one flush with the far edge when the remainder exceeds ``thresh_size``."""
    if length < crop_size:
        return []
    starts = list(range(0, length - crop_size + 1, step))
    if length - (starts[-1] + crop_size) > thresh_size:
        starts.append(length - crop_size)
    return starts


def subimage_boxes(height, width, crop_size, step, thresh_size):
    """(top, left) of each sub-image, row by row; sub-image i (from 1) is named ``<image>_s<i:03d>``."""
    return [(top, left) for top in positions(height, crop_size, step, thresh_size)
            for left in positions(width, crop_size, step, thresh_size)]


def encode_png(image, compress_level):
    ok, encoded = cv2.imencode('.png', image, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise OptionError('could not encode a PNG image')
    return encoded.tobytes()


def write_png(path, image):
    if not cv2.imwrite(path, image):
        raise OptionError(f'{path}: could not write the image')


def write_mod_pairs(named_paths, gt_dir, lq_dir, scale, desc):
    """``GTmod<scale>``/``LRbicx<scale>`` folders as BasicSR's test sets have them: each image (``[(name, path)]``)
    cropped to a multiple of ``scale``, and its MATLAB-bicubic LR under the same name; both appear when complete."""
    with staged_folder(gt_dir) as gt_stage, staged_folder(lq_dir) as lq_stage:
        for name, path in tqdm(named_paths, desc=desc, unit='image'):
            hr = mod_crop(read_color(path), scale)
            write_png(os.path.join(gt_stage, f'{name}.png'), hr)
            write_png(os.path.join(lq_stage, f'{name}.png'), bicubic_downscale(hr, scale))


def _staging_path(final):
    parent, name = os.path.split(os.path.abspath(final))
    return os.path.join(parent, STAGING, name)


def _discard(path):
    if os.path.isdir(path):
        shutil.rmtree(path)


def remove_output(path):
    """Delete a previously built output (``--force``) and any staging leftovers of it."""
    _discard(path)
    _discard(_staging_path(path))


def _finish(staging, final):
    _discard(final)
    os.replace(staging, final)
    parent = os.path.dirname(staging)
    if not os.listdir(parent):
        os.rmdir(parent)


@contextlib.contextmanager
def staged_folder(final):
    """Yield a fresh staging folder that becomes ``final`` when the block finishes without an error."""
    staging = _staging_path(final)
    _discard(staging)
    os.makedirs(staging)
    try:
        yield staging
    except BaseException:
        _discard(staging)
        raise
    _finish(staging, final)


class StagedLmdb:
    """BasicSR's ``LmdbMaker`` writing to a staging folder, moved to ``final`` (a ``*.lmdb`` path) on close.

    The result is what ``PairedImageDataset`` with ``io_backend: lmdb`` reads: data.mdb plus meta_info.txt with
    one ``<key>.png (h,w,c) <compress level>`` line per image.
    """

    def __init__(self, final, compress_level=1, map_size=1024**4):
        if not final.endswith('.lmdb'):
            raise OptionError(f'{final}: an LMDB folder name must end in .lmdb')
        self.final = final
        self.staging = _staging_path(final)
        _discard(self.staging)
        os.makedirs(os.path.dirname(self.staging), exist_ok=True)
        self.compress_level = compress_level
        self.maker = LmdbMaker(self.staging, map_size=map_size, compress_level=compress_level)
        self.count = 0

    def put(self, key, encoded, shape):
        if '.' in key:  # BasicSR splits meta_info lines at the first dot to get the key back
            raise OptionError(f'LMDB key {key!r} must not contain a dot')
        self.maker.put(encoded, key, tuple(shape) if len(shape) == 3 else (*shape, 1))
        self.count += 1

    def close(self):
        self.maker.close()
        _finish(self.staging, self.final)

    def abort(self):
        with contextlib.suppress(Exception):
            self.maker.close()
        _discard(self.staging)


def is_built(path):
    """An output counts as built when it exists at its final path (staging folders are renamed last)."""
    if path.endswith('.lmdb'):
        return all(os.path.isfile(os.path.join(path, name)) for name in ('data.mdb', 'meta_info.txt'))
    return os.path.isdir(path) and bool(list_images(path))
