"""Paired HR/LR sub-images written straight into BasicSR LMDBs.

The cutting follows BasicSR's scripts/data_preparation/extract_subimages.py (HR sub-images of ``crop_size`` every
``step`` pixels, LR sub-images at the same places divided by the scale, named ``<image>_s<index:03d>``), but the
sub-images go directly into LMDBs made by ``basicsr.utils.lmdb_util.LmdbMaker`` rather than into PNG folders
first: the same records, half the disk and one pass over the images.
"""
from tqdm import tqdm

from ..errors import OptionError
from .imaging import StagedLmdb, encode_png, subimage_boxes


def check_geometry(scales, crop_size, step, flag_prefix='--'):
    """Sub-image size and step must map to whole LR pixels at every scale."""
    for name, value in (('crop-size', crop_size), ('step', step)):
        if value < 1:
            raise OptionError(f'{flag_prefix}{name} must be >= 1, got {value}')
        bad = [s for s in scales if value % s]
        if bad:
            raise OptionError(f'{flag_prefix}{name} {value} is not a multiple of scale {bad[0]}')


def cut_pair(stem, hr, lrs, crop_size, step, thresh_size, compress_level, with_hr=True):
    """Encoded sub-image records of one image: ``(hr_records, {scale: lr_records})``, each record
    ``(key, png_bytes, shape)``. ``hr`` must already be cropped to a multiple of every scale in ``lrs`` and each
    ``lrs[scale]`` must be exactly ``hr`` divided by ``scale``."""
    height, width = hr.shape[:2]
    for scale, lr in lrs.items():
        if lr.shape[:2] != (height // scale, width // scale):
            raise OptionError(f'{stem}: LR x{scale} is {lr.shape[1]}x{lr.shape[0]}, expected '
                              f'{width // scale}x{height // scale} for HR {width}x{height}')
    boxes = subimage_boxes(height, width, crop_size, step, thresh_size)
    hr_records = []
    lr_records = {scale: [] for scale in lrs}
    for index, (top, left) in enumerate(boxes, start=1):
        key = f'{stem}_s{index:03d}'
        if with_hr:
            patch = hr[top:top + crop_size, left:left + crop_size]
            hr_records.append((key, encode_png(patch, compress_level), patch.shape))
        for scale, lr in lrs.items():
            size = crop_size // scale
            patch = lr[top // scale:top // scale + size, left // scale:left // scale + size]
            lr_records[scale].append((key, encode_png(patch, compress_level), patch.shape))
    return hr_records, lr_records


def write_lmdbs(record_stream, total, hr_lmdb, lr_lmdbs, compress_level, desc):
    """Write the records of ``record_stream`` (an iterable of ``cut_pair`` results, ``total`` long) into the LMDB
    at ``hr_lmdb`` (None: skip HR) and ``lr_lmdbs`` ``{scale: path}``; each LMDB appears only when complete.
    Returns the number of sub-images written per LMDB."""
    makers = {}
    try:
        if hr_lmdb is not None:
            makers['hr'] = StagedLmdb(hr_lmdb, compress_level)
        for scale, path in lr_lmdbs.items():
            makers[scale] = StagedLmdb(path, compress_level)
        keys = set()
        for hr_records, lr_records in tqdm(record_stream, total=total, desc=desc, unit='image'):
            for key, _, _ in hr_records or next(iter(lr_records.values()), []):
                if key in keys:
                    raise OptionError(f'two input images give the sub-image key {key}: image names must be unique')
                keys.add(key)
            if 'hr' in makers:
                for record in hr_records:
                    makers['hr'].put(*record)
            for scale, records in lr_records.items():
                for record in records:
                    makers[scale].put(*record)
        if not keys:
            raise OptionError('no sub-images: every input image is smaller than the sub-image size')
    except BaseException:
        for maker in makers.values():
            maker.abort()
        raise
    for maker in makers.values():
        maker.close()
    return len(keys)
