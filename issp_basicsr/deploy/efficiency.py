"""``basicsr report-efficiency``: what pruning buys, measured. Per layer and in total: dense and non-zero parameters,
dense MACs and the MACs the non-zeros need at the given input size, checkpoint sizes (plain and compressed), and the
latency of dense and sparse execution on this machine. Printed as a table and written as JSON. Given the
``torch.export`` program of ``export --slim`` (``-i model.pt2``), it compares the slim network with the dense one
instead: parameters, MACs and latency of each.

Counting rules (exact, checked by the tests):

* Conv2d: dense MACs = N * Ho * Wo * Cout * Cin/groups * kh * kw; sparse MACs = N * Ho * Wo * non-zero weights.
* Linear: dense MACs = tokens * in * out (tokens = input numel / in); sparse MACs = tokens * non-zero weights.
* Bias additions are not MACs. Matrix products without weights (SwinIR's attention, q @ k and attn @ v) are counted
  once by ``torch.utils.flop_counter`` and reported as "other" MACs: pruning does not reduce them.
* Parameters: every parameter of the model (biases, norms, tables included) in the totals; non-zero = bit pattern
  not zero.

The report itself needs only PyTorch; :func:`main` builds the network from a BasicSR option file.
"""
import argparse
import json
import logging
import os
import platform
import time
import zipfile

import torch
from torch import nn

from .compressed import compress_checkpoint, serialized_size
from .sparse_modules import DEFAULT_MAX_DENSITY, convert_to_sparse, plan_sparse_layers


def _nonzero(tensor):
    return int(torch.count_nonzero(tensor.detach()))


@torch.no_grad()
def count_layers(model, example_input):
    """``(rows, other_macs)``: one dict per Conv2d/Linear (in module order) and the MACs of weight-free products."""
    shapes = {}
    hooks = []
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    for name, module in layers:
        hooks.append(module.register_forward_hook(
            lambda mod, args, out, name=name: shapes.setdefault(name, []).append((args[0].shape, out.shape))))
    from torch.utils.flop_counter import FlopCounterMode
    try:
        with FlopCounterMode(display=False) as counter:
            model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    rows, layer_macs = [], 0
    for name, module in layers:
        if name not in shapes:
            continue
        weight = module.weight
        nnz = _nonzero(weight)
        # output positions over every call: each needs weight.numel() MACs dense (Cout * Cin/groups * kh * kw for
        # a convolution, out * in for a Linear), nnz MACs sparse
        if isinstance(module, nn.Conv2d):
            positions = sum(out_shape.numel() // module.out_channels for _, out_shape in shapes[name])
        else:
            positions = sum(in_shape.numel() // module.in_features for in_shape, _ in shapes[name])
        out_shape = shapes[name][0][1]
        dense_macs = positions * weight.numel()
        sparse_macs = positions * nnz
        layer_macs += dense_macs
        params = weight.numel() + (module.bias.numel() if module.bias is not None else 0)
        nonzero = nnz + (_nonzero(module.bias) if module.bias is not None else 0)
        rows.append({
            'name': name, 'type': type(module).__name__, 'weight_shape': list(weight.shape),
            'output_shape': list(out_shape), 'calls': len(shapes[name]), 'params': params, 'nonzero_params': nonzero,
            'weight_density': nnz / weight.numel(), 'dense_macs': dense_macs, 'sparse_macs': sparse_macs
        })
    total_macs = counter.get_total_flops() // 2
    return rows, max(total_macs - layer_macs, 0)


@torch.no_grad()
def best_latencies(models, example_input, repeats):
    """Best-of-``repeats`` seconds per model, the models run in turn so that they share the machine's load."""
    best = [float('inf')] * len(models)
    for model in models:
        model(example_input)  # warm-up (allocations, MKL handles)
    for _ in range(repeats):
        for i, model in enumerate(models):
            start = time.perf_counter()
            model(example_input)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


@torch.no_grad()
def efficiency_report(model, example_input, checkpoint=None, repeats=3, plan='density',
                      max_density=DEFAULT_MAX_DENSITY, latency=True):
    """The report as a dict (see the module docstring). Sizes are those of ``checkpoint`` (a plain one, by default
    ``{'params': model.state_dict()}``) and of its compressed form.

    ``plan``: 'density' (sparse where density <= max_density) or 'timed' (per-layer timing on this input); see
    :func:`~.sparse_modules.plan_sparse_layers`.
    """
    model = model.eval()
    load_before = os.getloadavg()[0]
    rows, other_macs = count_layers(model, example_input)
    parameters = dict(model.named_parameters())
    total_params = sum(p.numel() for p in parameters.values())
    total_nonzero = sum(_nonzero(p) for p in parameters.values())
    report = {
        'network': type(model).__name__,
        'input_shape': list(example_input.shape),
        'machine': {'cpu': platform.processor() or platform.machine(), 'cpus': os.cpu_count(),
                    'threads': torch.get_num_threads(), 'torch': torch.__version__,
                    'device': str(example_input.device), 'load_average': list(os.getloadavg())},
        'layers': rows,
        'total': {
            'params': total_params, 'nonzero_params': total_nonzero,
            'layer_dense_macs': sum(r['dense_macs'] for r in rows),
            'layer_sparse_macs': sum(r['sparse_macs'] for r in rows),
            'other_macs': other_macs,
        },
    }
    total = report['total']
    total['dense_macs'] = total['layer_dense_macs'] + other_macs
    total['sparse_macs'] = total['layer_sparse_macs'] + other_macs
    state = {'params': model.state_dict()} if checkpoint is None else checkpoint
    compressed = compress_checkpoint(state)
    report['sizes'] = {'dense_bytes': serialized_size(state), 'compressed_bytes': serialized_size(compressed),
                       'keys': list(state.keys())}
    for row in rows:
        entry = compressed['checkpoint']['params'].get(row['name'] + '.weight')
        row['sparse_stored'] = isinstance(entry, dict) and entry.get('kind') == 'sparse'
    if latency:
        decisions = plan_sparse_layers(model, example_input if plan == 'timed' else None, max_density)
        sparse_model = convert_to_sparse(model, plan=decisions)
        for row in rows:
            row['sparse_execution'] = bool(decisions.get(row['name'], {}).get('sparse', False))
        check = float((sparse_model(example_input) - model(example_input)).abs().max())
        dense_s, sparse_s = best_latencies([model, sparse_model], example_input, repeats)
        report['latency'] = {
            'dense_ms': dense_s * 1e3, 'sparse_ms': sparse_s * 1e3, 'speedup': dense_s / sparse_s,
            'repeats': repeats, 'plan': plan, 'max_density': max_density,
            'sparse_layers': sum(row['sparse_execution'] for row in rows), 'max_abs_difference': check,
            'warning': contention_warning(load_before)
        }
    return report


def contention_warning(load, threads=None):
    """A warning when other processes load the CPUs (``load``: the 1-minute load average taken before this process
    started timing) and several threads are timed, else ''.

    With libgomp's default (spinning) wait policy, every parallel region then waits for a descheduled thread:
    measured here under a load average of 2-5 on 2 CPUs, the same dense EDSR-L ran in 2.1 s or 6.5 s from one run to
    the next, and the sparse one (many short products) suffered more. One thread, or OMP_WAIT_POLICY=PASSIVE,
    gives stable figures.
    """
    threads = threads or torch.get_num_threads()
    if threads > 1 and load > (os.cpu_count() or 1) - threads + 0.5 and 'OMP_WAIT_POLICY' not in os.environ:
        return (f'warning: load average {load:.2f} on {os.cpu_count()} CPUs: {threads}-thread timings are unreliable '
                f'here; use --threads 1 or OMP_WAIT_POLICY=PASSIVE')
    return ''


def _human(n):
    for unit, size in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(n) >= size:
            return f'{n / size:.2f}{unit}'
    return str(n)


def format_table(report):
    """The report as a fixed-width text table (one row per layer, then totals, sizes and latency)."""
    header = f'{"layer":<40} {"type":<7} {"params":>9} {"nonzero":>9} {"density":>8} {"dense MACs":>11} ' \
             f'{"sparse MACs":>11} {"sparse exec":>11}'
    lines = [f'{report["network"]}, input {"x".join(map(str, report["input_shape"]))}', header, '-' * len(header)]
    for row in report['layers']:
        mode = {True: 'yes', False: 'no'}.get(row.get('sparse_execution'), '-')
        lines.append(f'{row["name"][:40]:<40} {row["type"]:<7} {_human(row["params"]):>9} '
                     f'{_human(row["nonzero_params"]):>9} {row["weight_density"]:>8.4f} '
                     f'{_human(row["dense_macs"]):>11} {_human(row["sparse_macs"]):>11} {mode:>11}')
    total = report['total']
    lines.append('-' * len(header))
    lines.append(f'{"Conv2d/Linear layers":<48} {"":>9} {"":>9} {"":>8} {_human(total["layer_dense_macs"]):>11} '
                 f'{_human(total["layer_sparse_macs"]):>11}')
    lines.append(f'{"other products (attention)":<48} {"":>9} {"":>9} {"":>8} {_human(total["other_macs"]):>11} '
                 f'{_human(total["other_macs"]):>11}')
    lines.append(f'{"total (all parameters)":<40} {"":<7} {_human(total["params"]):>9} '
                 f'{_human(total["nonzero_params"]):>9} {total["nonzero_params"] / max(total["params"], 1):>8.4f} '
                 f'{_human(total["dense_macs"]):>11} {_human(total["sparse_macs"]):>11}')
    sizes = report['sizes']
    lines.append(f'checkpoint ({"+".join(sizes["keys"])}): plain {sizes["dense_bytes"] / 1e6:.3f} MB, compressed '
                 f'{sizes["compressed_bytes"] / 1e6:.3f} MB ({sizes["compressed_bytes"] / sizes["dense_bytes"]:.3f}x)')
    if 'latency' in report:
        lat, machine = report['latency'], report['machine']
        lines.append(f'latency ({machine["threads"]} threads, load {machine["load_average"][0]:.2f}, '
                     f'best of {lat["repeats"]}): dense {lat["dense_ms"]:.1f} ms, sparse {lat["sparse_ms"]:.1f} ms, '
                     f'speed-up {lat["speedup"]:.2f}x '
                     f'({lat["sparse_layers"]} sparse layers, plan {lat["plan"]}, '
                     f'max |sparse - dense| {lat["max_abs_difference"]:.1e})')
        if lat.get('warning'):
            lines.append(lat['warning'])
    return '\n'.join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='basicsr report-efficiency',
                                     description=__doc__.split('\n\n')[0].replace('``', ''))
    parser.add_argument('-opt', required=True, help='BasicSR option file (network_g, path:pretrain_network_g)')
    parser.add_argument('-i', '--input', help='checkpoint (plain or compressed), or the .pt2 program of export '
                        '--slim to time dense vs slim; default path:pretrain_network_g')
    parser.add_argument('--param-key', help='params or params_ema; default path:param_key_g, else params')
    parser.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='LR input size (default 64 64, rounded up to the window size of SwinIR; a .pt2 '
                        'program runs only at the size it was exported at, which is the default then)')
    parser.add_argument('--json', help='where to write the JSON (default <name>_efficiency.json)')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per model (best is reported)')
    parser.add_argument('--plan', choices=('density', 'timed'), default='density',
                        help='which layers run sparse: by density threshold, or by timing each layer')
    parser.add_argument('--max-density', type=float, default=DEFAULT_MAX_DENSITY,
                        help=f'density threshold of --plan density (default {DEFAULT_MAX_DENSITY})')
    parser.add_argument('--threads', type=int, help='torch.set_num_threads for the timings')
    parser.add_argument('--no-latency', action='store_true', help='counts and sizes only')
    return parser.parse_args(argv)


def main(argv):
    from ..errors import OptionError
    from .compressed import load_checkpoint, state_dict_from
    from .network_options import build_network, checkpoint_path, example_input, param_key, read_options
    args = parse_args(argv)
    if args.repeats < 1:
        raise OptionError(f'--repeats must be >= 1, got {args.repeats}')
    if args.threads:
        torch.set_num_threads(args.threads)
    opt = read_options(args.opt)
    out = args.json or f'{opt.get("name", "model")}_efficiency.json'
    from ..option_checks import check_output_file
    check_output_file('--json', out)  # before the measurement, not after it
    net = build_network(opt, args.opt)
    path = checkpoint_path(opt, args.input, args.opt)
    if str(path).endswith('.pt2') or (zipfile.is_zipfile(path) and program_file(path)):
        return slim_main(args, opt, net, path, out)
    checkpoint = load_checkpoint(path)
    key = param_key(opt, args.param_key)
    state_dict = state_dict_from(checkpoint, key, path)
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise OptionError(f'{path} does not fit network_g of {args.opt}: {str(error).splitlines()[0]}') from None
    x = example_input(net, *(args.input_size or (64, 64)))
    # sizes of the evaluated weights alone, as BasicSR saves one network: {'params': state dict}
    report = efficiency_report(net, x, checkpoint={'params': state_dict}, repeats=args.repeats, plan=args.plan,
                               max_density=args.max_density, latency=not args.no_latency)
    report.update(options=os.path.abspath(args.opt), checkpoint=os.path.abspath(path), param_key=key)
    print(format_table(report))
    with open(out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'JSON written to {out}')
    return 0


# ------------------------------------------------------------------------------------------ dense vs slim
def program_file(path):
    """Whether ``path`` is a ``torch.export`` archive (``torch.export.save`` writes an ``archive_format`` entry)
    rather than a zip checkpoint of ``torch.save``."""
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith('archive_format') for name in archive.namelist())


def read_program(path):
    """``(module, input shape)`` of a ``torch.export`` program: its graph runs only at the shape it was exported
    at, so that shape is the one to time."""
    from ..errors import OptionError
    if not os.path.isfile(path):
        raise OptionError(f'{path}: program does not exist')
    logger = logging.getLogger('torch.export')
    level = logger.level
    logger.setLevel(logging.ERROR)  # a damaged archive is logged as a traceback before it raises
    try:
        program = torch.export.load(path)
    except Exception as error:  # torch's message runs to paragraphs
        raise OptionError(f'{path}: not a readable torch.export program ({type(error).__name__})') from None
    finally:
        logger.setLevel(level)
    inputs = program.graph_signature.user_inputs
    shapes = [tuple(node.meta['val'].shape) for node in program.graph.nodes
              if node.op == 'placeholder' and node.name in inputs]
    if len(shapes) != 1:
        raise OptionError(f'{path}: a program of {len(shapes)} inputs, not one image')
    return program.module(), shapes[0]


@torch.no_grad()
def slim_report(dense, slim, example_input, repeats=3, compare=True):
    """Parameters, MACs and latency of the dense network and its slim program on ``example_input``, as a dict.

    ``compare``: the dense network holds the masked weights the program was made from, so their outputs must agree
    (``max_abs_difference``); without them only the timings mean anything.
    """
    from .slim import count_macs
    dense = dense.eval()
    load_before = os.getloadavg()[0]
    params = [sum(p.numel() for p in model.parameters()) for model in (dense, slim)]
    macs = [count_macs(model, example_input) for model in (dense, slim)]
    difference = float((dense(example_input) - slim(example_input)).abs().max()) if compare else None
    dense_s, slim_s = best_latencies([dense, slim], example_input, repeats)
    return {
        'network': type(dense).__name__, 'input_shape': list(example_input.shape),
        'machine': {'cpu': platform.processor() or platform.machine(), 'cpus': os.cpu_count(),
                    'threads': torch.get_num_threads(), 'torch': torch.__version__,
                    'device': str(example_input.device), 'load_average': list(os.getloadavg())},
        'dense': {'params': params[0], 'macs': macs[0], 'ms': dense_s * 1e3},
        'slim': {'params': params[1], 'macs': macs[1], 'ms': slim_s * 1e3},
        'speedup': dense_s / slim_s, 'mac_ratio': macs[0] / max(macs[1], 1), 'repeats': repeats,
        'max_abs_difference': difference, 'warning': contention_warning(load_before),
    }


def format_slim_table(report):
    dense, slim, machine = report['dense'], report['slim'], report['machine']
    lines = [f'{report["network"]}, input {"x".join(map(str, report["input_shape"]))}, {machine["threads"]} threads, '
             f'load {machine["load_average"][0]:.2f}, best of {report["repeats"]}',
             f'{"":6} {"params":>9} {"MACs":>9} {"latency":>10}']
    for name, row in (('dense', dense), ('slim', slim)):
        lines.append(f'{name:6} {_human(row["params"]):>9} {_human(row["macs"]):>9} {row["ms"]:>8.1f} ms')
    check = ('dense weights: the initial ones (no path:pretrain_network_g), outputs not compared'
             if report['max_abs_difference'] is None else f'max |slim - dense| {report["max_abs_difference"]:.1e}')
    lines.append(f'speed-up {report["speedup"]:.2f}x, MAC ratio {report["mac_ratio"]:.2f}x '
                 f'({report["speedup"] / report["mac_ratio"]:.0%} of it); {check}')
    if report['warning']:
        lines.append(report['warning'])
    return '\n'.join(lines)


def slim_main(args, opt, net, path, out):
    """``-i model.pt2``: network_g of the option file (with path:pretrain_network_g when it names one) against the
    slim program."""
    from ..errors import OptionError
    from .compressed import load_checkpoint, state_dict_from
    from .network_options import param_key
    slim, shape = read_program(path)
    if args.input_size and tuple(args.input_size) != shape[2:]:
        raise OptionError(f'--input-size {args.input_size[0]} {args.input_size[1]}: {path} was exported for '
                          f'{shape[2]}x{shape[3]} inputs and runs at no other size')
    pretrained = (opt.get('path') or {}).get('pretrain_network_g')
    if pretrained:
        try:
            net.load_state_dict(state_dict_from(load_checkpoint(pretrained), param_key(opt, args.param_key),
                                                pretrained), strict=True)
        except RuntimeError as error:
            raise OptionError(f'{pretrained} does not fit network_g of {args.opt}: '
                              f'{str(error).splitlines()[0]}') from None
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    report = slim_report(net, slim, x, repeats=args.repeats, compare=bool(pretrained))
    report.update(options=os.path.abspath(args.opt), program=os.path.abspath(path),
                  dense_weights=os.path.abspath(pretrained) if pretrained else None)
    print(format_slim_table(report))
    with open(out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'JSON written to {out}')
    return 0
