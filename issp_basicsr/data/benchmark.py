"""The five standard SR test sets (Set5, Set14, B100, Urban100, Manga109) from the folders a user downloaded.

For every set and scale: the HR image cropped to a multiple of the scale (``GTmod<s>``) and its MATLAB-bicubic
LR (``LRbicx<s>``), same file names, as BasicSR's PairedImageDataset reads them::

    <output>/Set5/GTmod4/baby.png
    <output>/Set5/LRbicx4/baby.png

HR images are found in, by order of preference: a sub-folder named HR, GT, original or GTmod12; image files
directly in the set folder; the ``*_HR.*`` files of the ``image_SRF_<s>`` folders of the widespread
Huang et al. archive (the smallest factor, whose HR is the least cropped).
"""
import os
import re

from ..errors import OptionError
from .imaging import is_built, list_images, remove_output, require_folder, sorted_scales, stem, write_mod_pairs

# canonical name -> folder names accepted for it (compared case-insensitively)
SETS = {
    'Set5': ('Set5', ),
    'Set14': ('Set14', ),
    'B100': ('B100', 'BSD100', 'BSDS100'),
    'Urban100': ('Urban100', ),
    'Manga109': ('Manga109', ),
}
HR_FOLDER_NAMES = ('hr', 'gt', 'original', 'gtmod12')
SRF_FOLDER = re.compile(r'^image_SRF_(\d+)$', re.IGNORECASE)
HR_SUFFIX = re.compile(r'(_SRF_\d+)?_HR$', re.IGNORECASE)


def find_set_folder(root, canonical):
    """The folder of one test set inside ``root`` (up to two levels down), or None."""
    accepted = {name.lower() for name in SETS[canonical]}
    if os.path.basename(os.path.abspath(root)).lower() in accepted:  # --input pointed at the set itself
        return root
    for folder, subfolders, _ in os.walk(root):
        subfolders.sort()
        if folder[len(root):].count(os.sep) >= 2:
            subfolders[:] = []
        for sub in subfolders:
            if sub.lower() in accepted:
                return os.path.join(folder, sub)
    return None


def find_hr_images(set_folder):
    """``[(name, path)]`` of the HR images of one set folder (see the module docstring for the layouts)."""
    subfolders = {name.lower(): os.path.join(set_folder, name) for name in sorted(os.listdir(set_folder))
                  if os.path.isdir(os.path.join(set_folder, name))}
    for name in HR_FOLDER_NAMES:
        if name in subfolders and list_images(subfolders[name]):
            return [(_clean_name(path), path) for path in list_images(subfolders[name])]
    direct = list_images(set_folder)
    if direct:
        hr_only = [path for path in direct if HR_SUFFIX.search(stem(path))]
        return [(_clean_name(path), path) for path in (hr_only or direct)]
    srf = sorted((int(SRF_FOLDER.match(os.path.basename(path)).group(1)), path) for path in subfolders.values()
                 if SRF_FOLDER.match(os.path.basename(path)))
    if srf:
        hr_only = [path for path in list_images(srf[0][1]) if HR_SUFFIX.search(stem(path))]
        if hr_only:
            return [(_clean_name(path), path) for path in hr_only]
    raise OptionError(f'{set_folder}: no HR images (expected image files, an HR/ folder, or image_SRF_<s>/ '
                      'folders with *_HR images)')


def _clean_name(path):
    return HR_SUFFIX.sub('', stem(path))


def benchmark_paths(output, set_name, scale):
    return (os.path.join(output, set_name, f'GTmod{scale}'), os.path.join(output, set_name, f'LRbicx{scale}'))


def prepare_benchmark(input_dir, output, scales=(2, 3, 4), sets=None, force=False, log=print):
    """Prepare the test sets found under ``input_dir``; returns ``{set: {scale: (gt_folder, lq_folder)}}``.

    ``sets`` None: every one of the five that is there (at least one must be); a list: exactly those."""
    require_folder(input_dir)
    scales = sorted_scales(scales)
    unknown = [name for name in (sets or []) if name not in SETS]
    if unknown:
        raise OptionError(f'--sets: unknown test set {unknown[0]!r} (known: {", ".join(SETS)})')
    folders = {name: find_set_folder(input_dir, name) for name in (sets or SETS)}
    for name, folder in folders.items():
        if folder is None and sets:
            raise OptionError(f'{os.path.join(input_dir, name)}: test set folder not found')
    if not any(folders.values()):
        raise OptionError(f'{input_dir}: none of {", ".join(SETS)} found (one folder per set expected)')
    result = {}
    for name, folder in folders.items():
        if folder is None:
            log(f'{name}: not found under {input_dir}, skipped')
            continue
        images = find_hr_images(folder)
        result[name] = {}
        for scale in scales:
            gt_dir, lq_dir = benchmark_paths(output, name, scale)
            result[name][scale] = (gt_dir, lq_dir)
            if force:
                remove_output(gt_dir)
                remove_output(lq_dir)
            elif is_built(gt_dir) and is_built(lq_dir):
                log(f'{name} x{scale}: already prepared in {os.path.dirname(gt_dir)}')
                continue
            os.makedirs(os.path.dirname(gt_dir), exist_ok=True)
            write_mod_pairs(images, gt_dir, lq_dir, scale, desc=f'{name} x{scale}')
        log(f'{name}: {len(images)} images from {folder}')
    return result

