"""``basicsr export``: compress a trained checkpoint, restore a plain one, or write ONNX.

    basicsr export -i experiments/NAME/models/net_g_latest.pth -o model.sparse.pth [--ema] [--half]
    basicsr export --dense -i model.sparse.pth -o model.pth
    basicsr export --onnx -opt OPTIONS [-i CHECKPOINT] -o model.onnx [--input-size H W] [--ema]

The compressed format is described in :mod:`issp_basicsr.deploy.compressed`; ``--dense`` gives back the plain
BasicSR checkpoint bit for bit (unless it was compressed with ``--half``).
"""
import argparse
import os

import torch

from .compressed import decompress_checkpoint, load_checkpoint, read_torch_file, save_compressed, state_dict_from


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='basicsr export', description=__doc__.split('\n\n')[0].replace('``', ''),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n')[1])
    parser.add_argument('-i', '--input', help='checkpoint to read (plain .pth, or compressed with --dense)')
    parser.add_argument('-o', '--output', required=True, help='file to write')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--dense', action='store_true', help='restore a plain BasicSR checkpoint from a compressed one')
    mode.add_argument('--onnx', action='store_true', help='write the dense-with-zeros network as ONNX (needs -opt)')
    mode.add_argument('--slim', action='store_true', help='remove the pruned channels, write a torch.export program '
                      '(.pt2, needs -opt)')
    parser.add_argument('--ema', action='store_true', help='keep only params_ema (stored as params)')
    parser.add_argument('--half', action='store_true', help='store float tensors as float16 (lossy, ~half size)')
    parser.add_argument('-opt', help='BasicSR option file naming network_g (for --onnx)')
    parser.add_argument('--input-size', type=int, nargs=2, default=(64, 64), metavar=('H', 'W'),
                        help='LR input size the ONNX graph is traced at (default 64 64)')
    return parser.parse_args(argv)


def compress_command(args):
    source = read_torch_file(args.input)
    compressed = save_compressed(source, args.output, half=args.half, ema=args.ema, source=args.input)
    plain_size = os.path.getsize(args.input)
    size = os.path.getsize(args.output)
    sparse = dense = 0
    for entries in compressed['checkpoint'].values():
        for entry in entries.values():
            if isinstance(entry, dict) and entry.get('kind') == 'sparse':
                sparse += 1
            else:
                dense += 1
    kept = '+'.join(compressed['checkpoint'])
    print(f'{args.output}: {size / 1e6:.3f} MB ({size / plain_size:.3f} of {args.input}, {plain_size / 1e6:.3f} MB); '
          f'{kept}; {sparse} pruned weights stored sparse, {dense} tensors dense'
          f'{"; float16" if args.half else ""}')
    return 0


def dense_command(args):
    compressed = read_torch_file(args.input)
    checkpoint = decompress_checkpoint(compressed, source=args.input)
    was_half = bool(compressed.get('half'))
    torch.save(checkpoint, args.output)
    wrapped = any(key in checkpoint for key in ('params', 'params_ema'))
    print(f'{args.output}: plain checkpoint ({"+".join(checkpoint) if wrapped else "bare state dict"}), '
          f'{os.path.getsize(args.output) / 1e6:.3f} MB{" (from float16)" if was_half else ""}')
    return 0


def load_trained_network(args, flag):
    """(options, network_g of ``-opt`` with the checkpoint's weights) for ``--onnx``/``--slim``."""
    from ..errors import OptionError
    from .network_options import build_network, checkpoint_path, param_key, read_options
    if not args.opt:
        raise OptionError(f'{flag} needs -opt OPTIONS (the option file that names network_g)')
    opt = read_options(args.opt)
    net = build_network(opt, args.opt)
    path = checkpoint_path(opt, args.input, args.opt)
    key = 'params_ema' if args.ema else param_key(opt, None)
    try:
        net.load_state_dict(state_dict_from(load_checkpoint(path), key, path), strict=True)
    except RuntimeError as error:
        raise OptionError(f'{path} does not fit network_g of {args.opt}: {str(error).splitlines()[0]}') from None
    return opt, net


def onnx_command(args):
    from ..errors import OptionError
    from .network_options import example_input
    from .onnx_export import check_onnx, export_onnx
    _, net = load_trained_network(args, '--onnx')
    x = example_input(net, *args.input_size)
    try:
        export_onnx(net, args.output, x)
    except ImportError as error:
        raise OptionError(f'--onnx: {error}') from None
    difference = check_onnx(net, args.output, x)
    check = ('onnxruntime not installed: not checked (pip install issp-basicsr[onnx])' if difference is None else
             f'onnxruntime max |difference| {difference:.2e} on a {x.shape[2]}x{x.shape[3]} input')
    print(f'{args.output}: ONNX, input lq {list(x.shape)}; {check}')
    if difference is not None and difference > 1e-3:
        raise OptionError(f'{args.output}: onnxruntime output differs from PyTorch by {difference:.2e}')
    return 0


def slim_command(args):
    """``--slim``: the all-zero channels of a granularity-channel checkpoint removed, saved with torch.export."""
    from .network_options import example_input
    from .slim import export_slim, format_summary
    opt, net = load_trained_network(args, '--slim')
    exclude = (((opt.get('train') or {}).get('sparsity') or {}).get('exclude')) or ()
    x = example_input(net, *args.input_size)
    summary = export_slim(net, args.output, x, exclude=tuple(exclude))
    print(format_summary(summary, args.output, x))
    return 0


def main(argv):
    from ..errors import OptionError
    from ..option_checks import check_output_file
    args = parse_args(argv)
    check_output_file('-o', args.output)  # before any work: a missing folder is one line, not a traceback
    if args.slim:
        if args.half or args.dense:
            raise OptionError('--half does not apply to --slim')
        return slim_command(args)
    if args.onnx:
        if args.half:
            raise OptionError('--half does not apply to --onnx')
        return onnx_command(args)
    if not args.input:
        raise OptionError('-i/--input is required')
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        raise OptionError(f'-o {args.output} would overwrite the input')
    if args.dense:
        if args.ema or args.half:
            raise OptionError('--ema and --half are chosen when compressing, not with --dense')
        return dense_command(args)
    return compress_command(args)
