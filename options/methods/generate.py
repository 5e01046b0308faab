"""Write the method-comparison option files: every method at ratio 0.95 on SwinIR-light x4 and EDSR-L x4, plus
ISS-P on RCAN x4 (BasicSR's RCAN arch).

Each file is its base file (``options/issp_swinir_x4.yml``, ``options/issp_edsr_l_x4.yml``) with only ``name``
and the ``train: sparsity:`` block replaced, as text, so the runs of one backbone share every other setting
(network, data, iterations, schedule, seed) and the base file's comments. The RCAN file is the EDSR-L base with
``network_g`` replaced too.

    python options/methods/generate.py           # (re)write the files
    python options/methods/generate.py --check   # exit 1 if a file is missing or differs from what it would write
"""
import argparse
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from issp_basicsr.sparsity import METHODS as ALL_METHODS, SparsityConfig  # noqa: E402  (the core imports without BasicSR)

# the weight-granularity comparison files: methods that exist at channel granularity only (assl) are left out
METHODS = {name: method for name, method in ALL_METHODS.items() if not method.channel_only}

RATIO = 0.95
BACKBONES = {  # prefix of the generated files -> base file
    'swinir_light_x4': 'options/issp_swinir_x4.yml',
    'edsr_l_x4': 'options/issp_edsr_l_x4.yml',
}
RCAN_BASE = 'edsr_l_x4'
RCAN_NETWORK = {  # BasicSR's RCAN arch with the RCAN paper's size (10 groups of 20 blocks, 64 features)
    'type': 'RCAN', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_group': 10, 'num_block': 20,
    'squeeze_factor': 16, 'upscale': 4, 'res_scale': 1, 'img_range': 255.0, 'rgb_mean': [0.4488, 0.4371, 0.4040]
}
# the SRP paper's growing-penalty settings; reg_max is reached at iteration reg_max / reg_step * reg_interval
REG_INTERVAL, REG_MAX = 20, 0.5
# BasicSR-specific notes added to a method's summary from the core's registry
NOTES = {'l1': ' (to prune a trained dense model instead, add --force_yml path:pretrain_network_g=PATH)'}


def description(method):
    return METHODS[method].summary + NOTES.get(method, '')


def base_source(prefix, root=ROOT):
    """(text, path) of a backbone's base file."""
    base_path = BACKBONES[prefix]
    full = os.path.join(root, base_path)
    if not os.path.isfile(full):
        raise SystemExit(f'generate: base file {base_path} does not exist')
    with open(full) as handle:
        return handle.read(), base_path


def sparsity_block(method, base):
    """The block of ``method``, from the base block's schedule (prune_iter, LR hold, exclude, interval, alpha), with
    the keys the method's definition in the core's registry takes."""
    definition = METHODS[method]
    keys = definition.accepted_keys
    block = {'method': method}
    if definition.prunes:
        block.update(ratio=RATIO, scope='layer', pattern='unstructured')
    if 'alpha' in keys:
        block['alpha'] = base.get('alpha', SparsityConfig.alpha)
    block['prune_iter'] = base['prune_iter']
    if 'interval' in keys:
        block['interval'] = base.get('interval', 1)
    if definition.penalty:
        block.update(reg_step=REG_MAX * REG_INTERVAL / base['prune_iter'], reg_interval=REG_INTERVAL, reg_max=REG_MAX)
    if definition.prunes:
        block['exclude'] = list(base.get('exclude') or [])
    block['hold_lr_during_pruning'] = base.get('hold_lr_during_pruning', False)
    return block


def _dump(mapping, indent, comment=None):
    text = yaml.safe_dump(mapping, default_flow_style=None, sort_keys=False, width=120)
    lines = [' ' * indent + line for line in text.splitlines()]
    if comment:
        lines.insert(1, ' ' * (indent + 2) + '# ' + comment)
    return [line + '\n' for line in lines]


def replace_block(text, key, new_lines, parent=None):
    """Replace the block ``key:`` (under top-level ``parent:`` when given) and its deeper-indented lines."""
    lines = text.splitlines(keepends=True)
    start = 0
    if parent is not None:
        start = next(i for i, line in enumerate(lines) if re.match(rf'^{parent}:\s*(#.*)?$', line)) + 1
    match = None
    for i in range(start, len(lines)):
        match = re.match(rf'^(\s*){key}:\s*(#.*)?$', lines[i])
        if match:
            start = i
            break
        if parent is not None and lines[i].strip() and not lines[i].startswith((' ', '#')):
            match = None
            break
    if not match:
        raise SystemExit(f'generate: no {parent + ":" if parent else ""}{key} block found')
    indent = len(match.group(1))
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return ''.join(lines[:start] + new_lines(indent) + lines[end:])


def strip_header(text):
    """Drop the base file's leading comment lines (they describe the base run) and blank lines."""
    lines = text.splitlines(keepends=True)
    while lines and (lines[0].startswith('#') or not lines[0].strip()):
        lines.pop(0)
    return ''.join(lines)


def render(base_text, base_path, name, block, comment, network=None):
    text = strip_header(base_text)
    text = re.sub(r'^name:.*$', f'name: {name}', text, count=1, flags=re.M)
    text = replace_block(text, 'sparsity', lambda indent: _dump({'sparsity': block}, indent, comment), parent='train')
    if network is not None:
        text = replace_block(text, 'network_g', lambda indent: _dump({'network_g': network}, indent))
    header = (f'# Generated by options/methods/generate.py from {base_path}: only name'
              f'{", network_g" if network is not None else ""} and train:sparsity differ.\n'
              f'# Do not edit; change the base file or the generator and run: python options/methods/generate.py\n')
    return header + text


def outputs(root=ROOT):
    """``{path relative to root: text}`` of every generated file."""
    files = {}
    for prefix in BACKBONES:
        base_text, base_path = base_source(prefix, root)
        base_block = yaml.safe_load(base_text)['train']['sparsity']
        for method in METHODS:
            name = f'methods_{prefix}_{method}' + ('' if method == 'dense' else f'_r{RATIO:g}')
            files[f'options/methods/{prefix}_{method}.yml'] = render(base_text, base_path, name,
                                                                     sparsity_block(method, base_block),
                                                                     description(method))
        if prefix == RCAN_BASE:
            files['options/methods/rcan_x4_issp.yml'] = render(base_text, base_path, f'methods_rcan_x4_issp_r{RATIO:g}',
                                                               sparsity_block('issp', base_block),
                                                               description('issp'), network=RCAN_NETWORK)
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true', help='only check that the files are up to date')
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        full = os.path.join(ROOT, path)
        current = open(full).read() if os.path.isfile(full) else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            with open(full, 'w') as handle:
                handle.write(text)
    if args.check and stale:
        print('generate: out of date: ' + ', '.join(stale), file=sys.stderr)
        return 1
    print('wrote: ' + ', '.join(stale) if stale else 'all up to date')
    return 0


if __name__ == '__main__':
    sys.exit(main())
