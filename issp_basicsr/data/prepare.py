"""``basicsr datasets``: build the sample set, prepare DIV2K/Flickr2K/DF2K LMDBs or the five test sets.

    basicsr datasets sample    [--root datasets/sample] [--scales 2 3 4] [--force]
    basicsr datasets div2k     --input PATH [--output datasets/DIV2K] [--scales 2 3 4] [--workers N] [--force]
    basicsr datasets df2k      (the same, output datasets/DF2K; flickr2k likewise)
    basicsr datasets benchmark --input FOLDER [--output datasets/benchmark] [--scales 2 3 4] [--sets ...]

Every command skips what is already built (``--force`` rebuilds it); see datasets/README.md.
"""
import argparse
import os

from .benchmark import SETS, prepare_benchmark
from .div2k import CROP_SIZE, STEP, THRESH_SIZE, prepare_div2k
from .sample import DEFAULT_ROOT, SCALES, build_sample

TRAINING_SETS = {'div2k': 'DIV2K', 'df2k': 'DF2K', 'flickr2k': 'Flickr2K'}


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr datasets', description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command', metavar='{sample,div2k,benchmark}', required=True)

    sample = commands.add_parser('sample', help='build the small sample set from scikit-image photos (seconds)')
    sample.add_argument('--root', default=DEFAULT_ROOT, help=f'output folder (default {DEFAULT_ROOT})')
    sample.add_argument('--scales', type=int, nargs='+', default=list(SCALES), help='2, 3 and/or 4')
    sample.add_argument('--force', action='store_true', help='rebuild what is already there')

    div2k = commands.add_parser('div2k', aliases=['df2k', 'flickr2k'],
                                help='HR/LR sub-image LMDBs of DIV2K, Flickr2K or DF2K for training')
    div2k.add_argument('--input', required=True,
                       help='the download: a folder of HR images, or one holding DIV2K_train_HR (and optionally '
                       'DIV2K_train_LR_bicubic), Flickr2K_HR, ...')
    div2k.add_argument('--output', help='output folder (default datasets/DIV2K, datasets/DF2K, datasets/Flickr2K)')
    div2k.add_argument('--name', help='LMDB name prefix (default: the output folder name)')
    div2k.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4])
    div2k.add_argument('--crop-size', type=int, default=CROP_SIZE, help=f'HR sub-image size (default {CROP_SIZE})')
    div2k.add_argument('--step', type=int, default=STEP, help=f'HR sub-image step (default {STEP})')
    div2k.add_argument('--thresh-size', type=int, default=THRESH_SIZE,
                       help='add an edge sub-image when more than this many pixels are left (default 0)')
    div2k.add_argument('--workers', type=int, default=None, help='worker processes (default min(4, CPUs))')
    div2k.add_argument('--force', action='store_true', help='rebuild what is already there')

    bench = commands.add_parser('benchmark', help='Set5, Set14, B100, Urban100, Manga109: HR mod-scale crop and '
                                'MATLAB-bicubic LR')
    bench.add_argument('--input', required=True, help='the folder holding the downloaded Set5/, Set14/, ... folders')
    bench.add_argument('--output', default=os.path.join('datasets', 'benchmark'),
                       help='output folder (default datasets/benchmark)')
    bench.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4])
    bench.add_argument('--sets', nargs='+', choices=list(SETS), help='only these sets (default: all found)')
    bench.add_argument('--force', action='store_true', help='rebuild what is already there')
    return parser


def main(argv):
    args = build_parser().parse_args(argv)
    from ..option_checks import check_output_folder
    output = args.root if args.command == 'sample' else (args.output or os.path.join(
        'datasets', TRAINING_SETS.get(args.command, 'benchmark')))
    check_output_folder('--root' if args.command == 'sample' else '--output', output)
    if args.command == 'sample':
        build_sample(args.root, args.scales, force=args.force)
    elif args.command in TRAINING_SETS:
        name = TRAINING_SETS[args.command]
        output = args.output or os.path.join('datasets', name)
        prepare_div2k(args.input, output, args.scales, name=args.name, crop_size=args.crop_size, step=args.step,
                      thresh_size=args.thresh_size, workers=args.workers, force=args.force)
    else:
        prepare_benchmark(args.input, args.output, args.scales, sets=args.sets, force=args.force)
    return 0
