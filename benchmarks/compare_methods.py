"""Compare pruning methods on equal budgets: dense, IHT, ISS-R, L1-norm, scratch and ISS-P at several ratios.

Every run is ``basicsr train`` on an option file generated from one base file; the generated files differ only
in ``name``, ``manual_seed`` and the ``train: sparsity:`` block, so every method gets the same network, data,
iterations, schedule and seed. Each run ends with a validation on the held-out images of the base file's val set
(PSNR/SSIM on Y, crop border = scale) beside bicubic; this script collects those into a markdown table
(mean ± std over seeds; the verdict lines say when a margin is inside the seed spread), and draws the report
figures (one curve per method) for each ratio. docs/Comparison.md documents both budgets and the columns.

    python benchmarks/compare_methods.py                         # CPU budget on the sample set: lr 2e-4, 6,000 it.
    python benchmarks/compare_methods.py --base options/compare_swinir_sample_x2_lr2e-3.yml \
        --out results/compare_lr2e-3                             # the earlier budget: lr 2e-3, 3,000 iterations
    python benchmarks/compare_methods.py --iters 500 --seeds 0   # a quicker look
    python benchmarks/compare_methods.py --estimate              # time a short probe, print the grid's cost
    python benchmarks/compare_methods.py --full --dry-run        # the paper's settings: write the files only

Finished runs are skipped when the script is started again, stopped ones resume from their last checkpoint
(``--rerun`` trains them anew).
"""
import argparse
import copy
import glob
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_METHODS = ['dense', 'iht', 'issr', 'l1', 'scratch', 'issp']
DEFAULT_RATIOS = [0.9, 0.95, 0.99]
SAMPLE_BASE = os.path.join(ROOT, 'options', 'compare_swinir_sample_x2.yml')
# the paper's SwinIR-light x4 settings; the method family's ISS-P file is the same run
FULL_BASES = [os.path.join(ROOT, 'options', 'issp_swinir_x4.yml'),
              os.path.join(ROOT, 'options', 'methods', 'swinir_light_x4_issp.yml')]
FULL_BASE = next((path for path in FULL_BASES if os.path.isfile(path)), FULL_BASES[0])
# keys of the base file's sparsity block that describe the schedule and the unit, shared by every method that
# takes them
SCHEDULE_KEYS = ('prune_iter', 'interval', 'exclude', 'hold_lr_during_pruning', 'scope', 'pattern', 'ratios',
                 'granularity')
# The core's penalty defaults (reg_step 1e-4 every 20 iterations, up to 0.5) reach reg_max at iteration 100k, the
# paper's prune_iter. On a shorter budget the benchmark keeps that shape: reg_max is reached at prune_iter.
PATH_KEYS = ('dataroot_gt', 'dataroot_lq', 'meta_info_file')


# ------------------------------------------------------------------------------------- option files
def load_yaml(path):
    with open(path) as handle:
        return yaml.safe_load(handle)


def set_key(opt, dotted, value):
    """``network_g:embed_dim=24`` style override (``:`` or ``.`` separated keys)."""
    keys = dotted.replace('.', ':').split(':')
    node = opt
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def scaled(value, factor):
    return max(1, int(round(value * factor)))


def common_options(base, iters=None, batch=None, overrides=(), base_dir=ROOT, keep_freqs=False):
    """The part every run shares: the base file with the budget applied, paths made absolute (the runs train
    in the output folder), and evaluation fixed to PSNR/SSIM on Y with crop border = scale."""
    opt = copy.deepcopy(base)
    apply_overrides(opt, overrides)  # before the budget, so that it scales an overridden total_iter or milestone
    train = opt['train']
    block = dict(train.get('sparsity') or {})
    old_total = train['total_iter']
    if iters is not None:
        factor = iters / old_total
        train['total_iter'] = iters
        if 'prune_iter' in block:
            block['prune_iter'] = min(iters, scaled(block['prune_iter'], factor))
        scheduler = train.get('scheduler') or {}
        for key in ('milestones', 'periods'):
            if key in scheduler:
                scheduler[key] = [scaled(m, factor) for m in scheduler[key]]
    total = train['total_iter']
    block.setdefault('prune_iter', max(1, total // 3))
    train['sparsity'] = block
    if batch is not None:
        opt['datasets']['train']['batch_size_per_gpu'] = batch
    scale = opt['scale']
    if opt.get('val') is not None:
        opt['val']['metrics'] = {
            'psnr': {'type': 'calculate_psnr', 'crop_border': scale, 'test_y_channel': True},
            'ssim': {'type': 'calculate_ssim', 'crop_border': scale, 'test_y_channel': True},
        }
        opt['val']['save_img'] = False
    logger = opt.setdefault('logger', {})
    logger['use_tb_logger'] = True
    logger['wandb'] = {'project': None, 'resume_id': None}
    if not keep_freqs:
        logger['print_freq'] = max(1, total // 60)
        logger['save_checkpoint_freq'] = max(1, total // 6)  # a stopped grid resumes its runs from here
        if opt.get('val') is not None:
            opt['val']['val_freq'] = max(1, total // 10)
    opt['path'] = dict(opt.get('path') or {}, resume_state=None)
    opt['model_type'] = 'ISSPSRModel'
    apply_overrides(opt, overrides)  # and after it, so that an explicit frequency or metric wins
    for dataset in opt['datasets'].values():
        for key in PATH_KEYS:
            if isinstance(dataset.get(key), str) and not os.path.isabs(dataset[key]):
                dataset[key] = os.path.normpath(os.path.join(base_dir, dataset[key]))
    return opt


def apply_overrides(opt, overrides):
    """``--set KEY=VALUE``: VALUE read as YAML, numbers as YAML 1.2 reads them (2e-4 is the float 0.0002, not
    the string PyYAML's YAML 1.1 makes of it); a quoted value stays a string."""
    import re
    for override in overrides:
        key, sep, text = override.partition('=')
        if not sep or not key.strip():
            raise SystemExit(f'compare_methods: --set {override}: write KEY:SUBKEY=VALUE')
        value = yaml.safe_load(text)
        if isinstance(value, str) and value == text.strip() and re.fullmatch(
                r'[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?', value):
            value = float(value) if any(c in value for c in '.eE') else int(value)
        set_key(opt, key.strip(), value)


def sparsity_block(method, ratio, shared_block):
    """The one part that differs between methods: method, ratio, the schedule keys the method takes, and its own
    keys (from the base block when it has them, else the core's defaults), all read from the method's definition
    in the core's registry."""
    from issp_basicsr.sparsity import SparsityConfig, get_method
    definition = get_method(method)
    keys = definition.accepted_keys
    block = {'method': method}
    if ratio is not None and 'ratio' in keys:
        block['ratio'] = ratio
    for key in SCHEDULE_KEYS:
        if key in shared_block and key in keys:
            block[key] = copy.deepcopy(shared_block[key])
    for key in definition.keys:
        if key in block:
            continue
        if key in shared_block:
            block[key] = copy.deepcopy(shared_block[key])
        elif key == 'alpha':  # written out, so the option file says which shrink factor the run used
            block[key] = SparsityConfig.alpha
    if definition.penalty and not any(k in shared_block for k in ('reg_step', 'reg_interval', 'reg_max')):
        block.update(penalty_schedule(block.get('prune_iter', SparsityConfig.prune_iter)))
    SparsityConfig.from_dict(block)  # fail here, naming the key, rather than in the middle of the grid
    return block


def penalty_schedule(prune_iter):
    """reg_step / reg_interval / reg_max for issr and greg: the core's reg_interval and reg_max, with reg_step
    chosen so that the penalty reaches reg_max at prune_iter, as the defaults do at the paper's 100k."""
    from issp_basicsr.sparsity import SparsityConfig
    defaults = SparsityConfig()
    interval = min(defaults.reg_interval, max(1, prune_iter // 10))
    steps = max(1, prune_iter // interval)
    return {'reg_step': defaults.reg_max / steps, 'reg_interval': interval, 'reg_max': defaults.reg_max}


def run_name(prefix, method, ratio, seed):
    return f'{prefix}_{method}_s{seed}' if ratio is None else f'{prefix}_{method}_r{ratio:g}_s{seed}'


def plan_runs(common, methods, ratios, seeds, prefix='cmp'):
    """[(name, method, ratio, seed, options)]; dense has no ratio and runs once per seed."""
    shared_block = common['train']['sparsity']
    runs = []
    for seed in seeds:
        for method in methods:
            for ratio in ([None] if method == 'dense' else ratios):
                opt = copy.deepcopy(common)
                opt['name'] = run_name(prefix, method, ratio, seed)
                opt['manual_seed'] = seed
                opt['train']['sparsity'] = sparsity_block(method, ratio, shared_block)
                runs.append((opt['name'], method, ratio, seed, opt))
    return runs


def write_options(opt, folder):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'{opt["name"]}.yml')
    with open(path, 'w') as handle:
        yaml.safe_dump(opt, handle, sort_keys=False)
    return path


def stale(out, name, option_file):
    """True when ``experiments/<name>`` was trained from other options than ``option_file`` (BasicSR keeps a copy
    of the option file there): such a run must neither count as finished nor be resumed."""
    used = os.path.join(out, 'experiments', name, os.path.basename(option_file))
    if not os.path.isfile(used):
        return False
    return load_yaml(used) != load_yaml(option_file)


# ------------------------------------------------------------------------------------------ running
def finished(out, name):
    for log in glob.glob(os.path.join(out, 'experiments', name, f'train_{name}_*.log')):
        with open(log, errors='replace') as handle:
            if 'End of training' in handle.read():
                return True
    return False


def train_command(option_file, resume=True):
    """``basicsr train`` with ``--auto_resume``: a run stopped half-way continues from its last checkpoint
    (the sparsifier state and RNG are part of it) when the script is started again."""
    command = [sys.executable, '-m', 'issp_basicsr.cli', 'train', '-opt', option_file]
    return command + ['--auto_resume'] if resume else command


def run_training(option_file, out, name, threads=None, resume=True):
    """One ``basicsr train`` in ``out``; its console output goes to ``out/console/<name>.txt``.
    Returns None, or a one-line reason when it failed."""
    os.makedirs(os.path.join(out, 'console'), exist_ok=True)
    console = os.path.join(out, 'console', f'{name}.txt')
    env = dict(os.environ)
    if threads and 'OMP_NUM_THREADS' not in os.environ:
        env['OMP_NUM_THREADS'] = str(threads)
    with open(console, 'w') as handle:
        code = subprocess.call(train_command(option_file, resume), cwd=out, stdout=handle, stderr=subprocess.STDOUT,
                               env=env)
    if code == 0:
        return None
    with open(console, errors='replace') as handle:
        tail = handle.read().strip().splitlines()[-1:] or ['']
    return f'{name} failed (exit {code}): {tail[0]} (see {console})'


def run_all(todo, out, jobs):
    """Train ``[(name, option file, resume)]``, ``jobs`` at a time; a failed run is reported and the others go on."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    failures = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool, tqdm(total=len(todo), desc='runs', unit='run') as bar:
        futures = [pool.submit(run_training, path, out, name, threads, resume) for name, path, resume in todo]
        for future in as_completed(futures):
            failure = future.result()
            if failure:
                failures.append(failure)
                bar.write(f'compare_methods: {failure}')
            bar.update()
    return failures, threads


# -------------------------------------------------------------------------------------------- results
def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def cell(values, digits):
    mean, std = mean_std(values)
    if mean is None:
        return '–'
    return f'{mean:.{digits}f}' + (f' ± {std:.{digits}f}' if std is not None else '')


def collect(out, runs):
    """{(method, ratio): [experiment, ...]} of the finished runs, read back with the report module."""
    from issp_basicsr.report import load_experiment
    results = {}
    for name, method, ratio, seed, _ in runs:
        path = os.path.join(out, 'experiments', name)
        if finished(out, name) and not stale(out, name, os.path.join(out, 'options', f'{name}.yml')):
            results.setdefault((method, ratio), []).append(load_experiment(path))
    return results


def comparison_table(results, methods, ratios):
    """Rows: bicubic, then each method; columns: PSNR and SSIM per ratio, mean ± std over seeds."""
    experiments = [e for group in results.values() for e in group]
    datasets = [d for e in experiments for d in e.datasets()]
    if not datasets:
        return '(no finished run has validation results)', None
    dataset = datasets[0]
    header = ['method'] + [f'{m} @ {r:g}' for r in ratios for m in ('PSNR', 'SSIM')] + ['sparsity @ ' + ', '.join(
        f'{r:g}' for r in ratios)]
    # bicubic is computed on the same held-out images by every run: one value
    bicubic = [cell([experiments[0].final_metric(dataset, m)[1]], d) for m, d in (('psnr', 2), ('ssim', 4))]
    rows = [['bicubic'] + bicubic * len(ratios) + ['–']]
    best = {}
    for ratio in ratios:
        scores = {m: mean_std([e.final_metric(dataset, 'psnr')[0] for e in results.get(
            (m, None if m == 'dense' else ratio), [])])[0] for m in methods if m != 'dense'}
        scores = {m: s for m, s in scores.items() if s is not None}
        if scores:
            best[ratio] = max(scores, key=scores.get)
    for method in methods:
        row = [method]
        sparsities = []
        for ratio in ratios:
            group = results.get((method, None if method == 'dense' else ratio), [])
            psnr = cell([e.final_metric(dataset, 'psnr')[0] for e in group], 2)
            if best.get(ratio) == method:
                psnr = f'**{psnr}**'
            row += [psnr, cell([e.final_metric(dataset, 'ssim')[0] for e in group], 4)]
            sparsities.append(cell([e.sparsity for e in group], 3))
        row.append(' / '.join(sparsities))
        rows.append(row)
    from issp_basicsr.report.table import markdown_table
    return markdown_table(header, rows), dataset


def spread_note(margin, std_a, std_b):
    """How a margin between two means over seeds compares with their spread: ``inside the seed spread`` when
    ``|margin|`` is at most the larger of the two standard deviations, ``outside ...`` when above it."""
    stds = [s for s in (std_a, std_b) if s is not None]
    if not stds:
        return 'one seed each: no spread to compare with'
    spread = max(stds)
    where = 'inside' if abs(margin) <= spread else 'outside'
    return f'{where} the seed spread (larger std {spread:.2f} dB)'


def verdict(results, methods, ratios, dataset):
    """Plain sentences: which method won each ratio and ISS-P's margin over the best other pruning method,
    with whether that margin is inside the spread over seeds."""
    lines = []
    for ratio in ratios:
        scores = {}
        for method in methods:
            if method == 'dense':
                continue
            mean, std = mean_std([e.final_metric(dataset, 'psnr')[0] for e in results.get((method, ratio), [])])
            if mean is not None:
                scores[method] = (mean, std)
        if not scores:
            continue
        winner = max(scores, key=lambda m: scores[m][0])
        line = f'ratio {ratio:g}: best PSNR {winner} ({scores[winner][0]:.2f} dB)'
        if 'issp' in scores:
            others = {m: s for m, s in scores.items() if m != 'issp'}
            if others:
                rival = max(others, key=lambda m: others[m][0])
                margin = scores['issp'][0] - others[rival][0]
                line += f'; ISS-P {"leads" if margin > 0 else "trails"} the best other method ({rival}) by ' \
                        f'{abs(margin):.2f} dB, {spread_note(margin, scores["issp"][1], others[rival][1])}'
        lines.append(line)
    dense = mean_std([e.final_metric(dataset, 'psnr')[0] for e in results.get(('dense', None), [])])[0]
    bicubic = [e.final_metric(dataset, 'psnr')[1] for g in results.values() for e in g]
    bicubic = next((b for b in bicubic if b is not None), None)
    if dense is not None and bicubic is not None:
        lines.append(f'dense model: {dense:.2f} dB, {dense - bicubic:+.2f} dB over bicubic ({bicubic:.2f} dB)')
    return lines


def machine():
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as handle:
            names = [line.split(':', 1)[1].strip() for line in handle if line.startswith('model name')]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return f'{cpu}, {os.cpu_count()} cores, {device}; Python {platform.python_version()}, torch {torch.__version__}'


def figures(out, results, methods, ratios):
    """The report figures per ratio, one curve per method (first seed), dense included as the reference."""
    from issp_basicsr.report import make_report
    written = {}
    for ratio in ratios:
        experiments, labels = [], []
        for method in methods:
            group = results.get((method, None if method == 'dense' else ratio), [])
            if group:
                experiments.append(group[0].path)
                labels.append(method)
        if experiments:
            folder = os.path.join(out, f'report_r{ratio:g}')
            _, paths, _, _ = make_report(experiments, folder, labels, title=f'Methods at ratio {ratio:g}',
                                         quiet=True)
            written[ratio] = paths
    return written


# ------------------------------------------------------------------------------------------------ main
def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--methods', nargs='+', default=DEFAULT_METHODS)
    parser.add_argument('--ratios', nargs='+', type=float, default=DEFAULT_RATIOS)
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    parser.add_argument('--iters', type=int, help='total_iter of every run (prune_iter and milestones scale along)')
    parser.add_argument('--batch', type=int, help='training batch size of every run')
    parser.add_argument('--base', help=f'base option file (default {os.path.relpath(SAMPLE_BASE, ROOT)}; '
                                       f'with --full {os.path.relpath(FULL_BASE, ROOT)})')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override a base option for every run, e.g. network_g:embed_dim=24 (repeatable)')
    parser.add_argument('--out', default=os.path.join('results', 'compare_methods'), help='output folder')
    parser.add_argument('--full', action='store_true',
                        help="the paper's settings (options/issp_swinir_x4.yml: DIV2K, SwinIR-light, 300k "
                             'iterations, Set5): for a GPU')
    parser.add_argument('--dry-run', action='store_true', help='write the option files and print the commands only')
    parser.add_argument('--jobs', type=int,
                        help='trainings at a time, each with cores/jobs threads unless OMP_NUM_THREADS is set '
                             '(default: one per core, as 1-thread runs of a small model use the cores best; '
                             '1 with --full)')
    parser.add_argument('--rerun', action='store_true',
                        help='train every run afresh (no resume), even those that finished before')
    parser.add_argument('--estimate', type=int, nargs='?', const=200, metavar='ITERS',
                        help='train one short ISS-P probe (default 200 iterations), print s/iteration and the '
                             'projected time of the grid, and stop')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    import issp_basicsr  # noqa: F401  (BasicSR fixes and registrations)

    if args.jobs is None:
        args.jobs = 1 if args.full else max(1, os.cpu_count() or 1)
    base_file = args.base or (FULL_BASE if args.full else SAMPLE_BASE)
    if not os.path.isfile(base_file):
        hint = '' if args.full or args.base else ' (build the sample set and its options: basicsr datasets sample)'
        raise SystemExit(f'compare_methods: {base_file} does not exist{hint}')
    base = load_yaml(base_file)
    common = common_options(base, args.iters, args.batch, args.set, base_dir=os.getcwd(), keep_freqs=args.full)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    if args.estimate:
        return estimate(common, args, out)

    runs = plan_runs(common, args.methods, args.ratios, args.seeds)
    option_files = [write_options(opt, os.path.join(out, 'options')) for *_, opt in runs]
    print(f'{len(runs)} runs of {common["train"]["total_iter"]:,} iterations each; options in {out}/options')
    if args.dry_run:
        for path in option_files:
            print(f'(cd {shlex.quote(out)} && {shlex.join(train_command(path))})')
        return 0

    from issp_basicsr.options import OptionError, check_datasets
    try:
        check_datasets(common)  # one clear line now rather than the same failure in every run
    except OptionError as error:
        raise SystemExit(f'compare_methods: {error}')
    started = time.time()
    changed = {name for (name, *_), path in zip(runs, option_files) if stale(out, name, path)}
    fresh = {name for name, *_ in runs} if args.rerun else changed
    if changed and not args.rerun:
        print(f'{len(changed)} run(s) in {out} were trained with other options: they are trained anew '
              f'(BasicSR archives their old folders)')
    todo = [(name, path, name not in fresh) for (name, *_), path in zip(runs, option_files)
            if name in fresh or not finished(out, name)]
    print(f'{len(runs) - len(todo)} finished before, {len(todo)} to train')
    failures, threads = run_all(todo, out, args.jobs)
    wall = time.time() - started

    results = collect(out, runs)
    table, dataset = comparison_table(results, args.methods, args.ratios)
    from issp_basicsr.report import summary_table
    per_run = summary_table([e for group in results.values() for e in group])
    written = figures(out, results, args.methods, args.ratios)
    lines = verdict(results, args.methods, args.ratios, dataset) if dataset else []
    command = 'python benchmarks/compare_methods.py ' + shlex.join(argv if argv is not None else sys.argv[1:])
    report = [
        '# Pruning methods on equal budgets', '',
        f'Command: `{command.strip()}`  ',
        f'Machine: {machine()}; {args.jobs} training(s) at a time, OMP_NUM_THREADS '
        f'{os.environ.get("OMP_NUM_THREADS", threads)} each  ',
        f'Base options: `{os.path.relpath(base_file, ROOT)}`, {common["train"]["total_iter"]:,} iterations, '
        f'prune_iter {common["train"]["sparsity"].get("prune_iter")}, batch '
        f'{common["datasets"]["train"].get("batch_size_per_gpu")}, seeds {", ".join(map(str, args.seeds))}; '
        f'evaluated on {dataset} (PSNR/SSIM on Y, crop border {common["scale"]}); wall time of this invocation '
        f'{wall / 60:.1f} min.', '',
        table, '', *[f'- {line}' for line in lines], '', '## Every run', '', per_run, '', '## Figures', '',
    ]
    for ratio, paths in written.items():
        report += [f'Ratio {ratio:g}: ' + ', '.join(f'[{os.path.basename(p)}]({os.path.relpath(p, out)})'
                                                   for p in paths)]
    if failures:
        report += ['', '## Failed runs', ''] + [f'- {failure}' for failure in failures]
    with open(os.path.join(out, 'results.md'), 'w') as handle:
        handle.write('\n'.join(report) + '\n')
    print(table)
    print()
    print('\n'.join(lines + [f'FAILED: {failure}' for failure in failures]))
    print(f'\nwrote {os.path.join(out, "results.md")}')
    return 1 if failures else 0


def estimate(common, args, out):
    """Train one short probe with the grid's settings and project the grid's wall time from its s/iteration."""
    from issp_basicsr.report import load_experiment
    probe = copy.deepcopy(common)
    total = common['train']['total_iter']
    probe['train']['total_iter'] = args.estimate
    block = sparsity_block('issp', args.ratios[0], common['train']['sparsity'])
    block['prune_iter'] = min(block.get('prune_iter', 1), args.estimate)
    probe['train']['sparsity'] = block
    probe['name'] = 'cmp_probe'
    probe['logger']['print_freq'] = max(1, args.estimate // 10)
    probe['logger']['save_checkpoint_freq'] = args.estimate
    if probe.get('val') is not None:
        probe['val']['val_freq'] = args.estimate
    path = write_options(probe, os.path.join(out, 'options'))
    started = time.time()
    failure = run_training(path, out, 'cmp_probe', threads=max(1, (os.cpu_count() or 1) // max(1, args.jobs)))
    if failure:
        raise SystemExit(f'compare_methods: {failure}')
    wall = time.time() - started
    experiment = load_experiment(os.path.join(out, 'experiments', 'cmp_probe'), read_weights=False)
    _, per_iter = experiment.curve('time/iter')  # BasicSR's running mean over the last (up to 200) iterations
    per_iter = per_iter[-1] if per_iter else wall / args.estimate
    count = len(plan_runs(common, args.methods, args.ratios, args.seeds))
    overhead = max(0.0, wall - per_iter * args.estimate)  # start-up, bicubic, two validations, saving
    validations = common['train']['total_iter'] // common['val']['val_freq'] if common.get('val') else 0
    grid = count * (per_iter * total + overhead * (1 + validations / 2) / 2) / max(1, args.jobs)
    print(f'probe: {args.estimate} iterations in {wall:.1f} s, {per_iter * 1000:.1f} ms/iteration '
          f'(start-up, bicubic, 2 validations and saving {overhead:.1f} s)')
    print(f'grid: {count} runs x {total:,} iterations, {args.jobs} at a time ~ {grid / 60:.0f} min on this machine '
          f'(if the runs at a time do not slow each other down)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
