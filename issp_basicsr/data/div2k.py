"""DIV2K / Flickr2K / DF2K training data: HR and bicubic-LR sub-images in BasicSR LMDBs.

The standard BasicSR preparation (docs/DatasetPreparation.md): HR sub-images of 480x480 every 240 pixels, LR
sub-images at the same places (240/160/120 at x2/x3/x4), one LMDB per resolution with meta_info.txt. The LR
images come from the official ``*_LR_bicubic/X<s>`` folders when they are there, and are made with BasicSR's
MATLAB-style bicubic ``imresize`` from the HR otherwise.

Output (``--output datasets/DIV2K``, name from the output folder)::

    DIV2K_train_HR_sub.lmdb
    DIV2K_train_LR_bicubic_X2_sub.lmdb   (X3, X4)
    prepare_info.json                    the settings the LMDBs were cut with
"""
import json
import math
import os
import re
from functools import partial
from multiprocessing import Pool

from ..errors import OptionError
from .imaging import (bicubic_downscale, is_built, is_image, list_images, mod_crop, read_color, remove_output,
                      require_folder, sorted_scales, stem)
from .subimages import check_geometry, cut_pair, write_lmdbs

CROP_SIZE, STEP, THRESH_SIZE = 480, 240, 0
COMPRESS_LEVEL = 1
HELD_OUT_WORDS = re.compile(r'(valid|val|test)', re.IGNORECASE)
SEARCH_DEPTH = 3


def _has_images(folder):
    return any(is_image(name) for name in os.listdir(folder))


def find_hr_folders(root):
    """The training HR folders of a download: ``root`` itself when it holds images, else every ``*_HR`` / ``HR``
    folder up to three levels down whose name does not say valid/val/test (DIV2K_train_HR, Flickr2K_HR, ...)."""
    require_folder(root)
    if _has_images(root):
        return [root]
    found = []
    base_depth = root.rstrip(os.sep).count(os.sep)
    for folder, subfolders, _ in os.walk(root):
        subfolders.sort()
        if folder.rstrip(os.sep).count(os.sep) - base_depth >= SEARCH_DEPTH:
            subfolders[:] = []
        name = os.path.basename(folder.rstrip(os.sep))
        if (name.upper() == 'HR' or name.upper().endswith('_HR')) and not HELD_OUT_WORDS.search(name):
            if _has_images(folder):
                found.append(folder)
            subfolders[:] = []
    if not found:
        raise OptionError(f'{root}: no HR images (expected image files, or a folder such as DIV2K_train_HR or '
                          'Flickr2K_HR inside it)')
    return found


def find_lr_folder(hr_folder, scale):
    """The official bicubic LR folder next to an HR folder (``DIV2K_train_HR`` -> ``DIV2K_train_LR_bicubic/X4``),
    or None."""
    parent, name = os.path.split(os.path.abspath(hr_folder))
    prefix = name[:-2] if name.upper().endswith('HR') else name
    for sub in (f'X{scale}', f'x{scale}'):
        folder = os.path.join(parent, f'{prefix}LR_bicubic', sub)
        if os.path.isdir(folder):
            return folder
    return None


def _lr_file(lr_folder, image_name, scale):
    for name in (f'{image_name}x{scale}', image_name):
        for ext in ('.png', '.jpg', '.jpeg', '.bmp'):
            path = os.path.join(lr_folder, name + ext)
            if os.path.isfile(path):
                return path
    raise OptionError(f'{os.path.join(lr_folder, f"{image_name}x{scale}.png")}: LR image of {image_name} is missing')


def _cut_one(job, scales, multiple, crop_size, step, thresh_size, with_hr):
    """Worker: one HR image (and its official LR images where given) -> encoded sub-image records."""
    hr_path, lr_folders = job
    name = stem(hr_path)
    hr = mod_crop(read_color(hr_path), multiple)
    lrs = {}
    for scale in scales:
        if lr_folders.get(scale):
            lr = read_color(_lr_file(lr_folders[scale], name, scale))
            height, width = hr.shape[0] // scale, hr.shape[1] // scale
            if lr.shape[0] < height or lr.shape[1] < width:
                raise OptionError(f'{_lr_file(lr_folders[scale], name, scale)}: {lr.shape[1]}x{lr.shape[0]} is '
                                  f'smaller than HR/{scale} ({width}x{height})')
            lrs[scale] = lr[:height, :width]
        else:
            lrs[scale] = bicubic_downscale(hr, scale)
    return cut_pair(name, hr, lrs, crop_size, step, thresh_size, COMPRESS_LEVEL, with_hr=with_hr)


def lmdb_paths(output, name, scales):
    return (os.path.join(output, f'{name}_train_HR_sub.lmdb'),
            {scale: os.path.join(output, f'{name}_train_LR_bicubic_X{scale}_sub.lmdb') for scale in scales})


def prepare_div2k(input_dir, output, scales=(2, 3, 4), name=None, crop_size=CROP_SIZE, step=STEP,
                  thresh_size=THRESH_SIZE, workers=None, force=False, log=print):
    """Prepare HR/LR sub-image LMDBs of the training images under ``input_dir``; returns
    ``(hr_lmdb, {scale: lr_lmdb})``. Finished LMDBs are kept unless ``force``."""
    scales = sorted_scales(scales)
    check_geometry(scales, crop_size, step)
    hr_folders = find_hr_folders(input_dir)
    name = name or os.path.basename(os.path.abspath(output))
    hr_lmdb, lr_lmdbs = lmdb_paths(output, name, scales)
    # HR cropped to a multiple of 12 (and of every scale asked): the HR LMDB then serves x2, x3 and x4 alike.
    multiple = math.lcm(12, *scales)
    settings = {'crop_size': crop_size, 'step': step, 'thresh_size': thresh_size, 'hr_multiple': multiple,
                'hr_folders': [os.path.abspath(f) for f in hr_folders]}
    info_path = os.path.join(output, 'prepare_info.json')
    if force:
        for path in [hr_lmdb, *lr_lmdbs.values()]:
            remove_output(path)
    elif is_built(hr_lmdb) and os.path.isfile(info_path):
        with open(info_path) as f:
            previous = json.load(f)
        if previous != settings:
            raise OptionError(f'{info_path}: {output} was prepared with other settings ({previous}); '
                              'use --force to rebuild it')
    missing = {scale: path for scale, path in lr_lmdbs.items() if not is_built(path)}
    with_hr = not is_built(hr_lmdb)
    if with_hr:
        missing = dict(lr_lmdbs)  # LR sub-images must come from the same cut as the HR ones
    if not missing and not with_hr:
        log(f'{output}: already prepared for x{", x".join(map(str, scales))}; --force rebuilds it.')
        return hr_lmdb, lr_lmdbs

    jobs = []
    for folder in hr_folders:
        lr_folders = {scale: find_lr_folder(folder, scale) for scale in missing}
        for scale, lr_folder in lr_folders.items():
            source = lr_folder or 'MATLAB bicubic of the HR images'
            log(f'{folder}: LR x{scale} from {source}')
        jobs += [(path, lr_folders) for path in list_images(folder)]
    os.makedirs(output, exist_ok=True)
    worker = partial(_cut_one, scales=sorted(missing), multiple=multiple, crop_size=crop_size, step=step,
                     thresh_size=thresh_size, with_hr=with_hr)
    workers = workers or min(4, os.cpu_count() or 1)
    desc = f'{name}: sub-images -> LMDB'
    if workers > 1 and len(jobs) > 1:
        with Pool(workers) as pool:
            count = write_lmdbs(pool.imap(worker, jobs, chunksize=1), len(jobs), hr_lmdb if with_hr else None,
                                missing, COMPRESS_LEVEL, desc)
    else:
        count = write_lmdbs(map(worker, jobs), len(jobs), hr_lmdb if with_hr else None, missing, COMPRESS_LEVEL,
                            desc)
    with open(info_path, 'w') as f:
        json.dump(settings, f, indent=1)
    log(f'Wrote {count} sub-images of {len(jobs)} images to {output}')
    return hr_lmdb, lr_lmdbs
