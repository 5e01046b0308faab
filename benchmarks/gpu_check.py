"""Every CUDA claim of issp-basicsr checked by one command on a machine with one CUDA GPU.

    python benchmarks/gpu_check.py [--out DIR] [--quick] [--dry-run] [--only NAME ...]

It writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (device, driver, torch, each check's status and figures)
and ``DIR/gpu_check.log`` (every check's output), rewritten after every check, so a run killed part-way still
leaves the results so far. Each check runs in its own process group with its own time limit, so one that hangs
cannot eat the GPU lease; the whole run stays under 6 minutes (2 with ``--quick``).

Exit status: 0 when no gating check (correctness) failed, 1 when one failed or crashed, 2 without a CUDA device
(one line says so; ``--dry-run`` works anywhere and exits 0), 3 when a package the checks need is missing.
Targets of the cost checks (step < 1 % of an iteration, throughput within 2 % of dense) are reported, never gating.
docs/GPU.md explains every check.
"""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_BUDGET_S = {False: 345, True: 110}  # full run, --quick: the sum every check's limit is clipped to
MIN_CHECK_S = 10  # a check left with less than this is skipped
DEFAULT_OUT = os.path.join('experiments', 'gpu_check')  # experiments/ is git-ignored
# 'cuda' on a GPU machine. Developing this script on a CPU, GPU_CHECK_DEVICE=cpu runs the checks' code there
# (CPU timers, no sync detector, gloo): it finds mistakes in the script, its figures mean nothing.
DEVICE = os.environ.get('GPU_CHECK_DEVICE', 'cuda')
LOG_TAIL_CHARS = 3000
STATUSES = ('pass', 'fail', 'error', 'skipped', 'running', 'not run')
REQUIRED_MODULES = ('torch', 'basicsr', 'lmdb', 'cv2', 'skimage', 'yaml', 'pytest')


class CheckFailed(Exception):
    """A correctness check found a wrong result (status fail, as opposed to error: the check itself broke)."""


class CheckSkipped(Exception):
    """The check cannot run here (status skipped, with the reason)."""


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    gates: bool  # a fail or an error makes the exit status 1
    budget_s: int
    quick_budget_s: int
    sizes: str
    quick_sizes: str
    run: Optional[Callable] = None  # None: always skipped, with skip_reason
    skip_reason: str = ''

    def budget(self, quick):
        return self.quick_budget_s if quick else self.budget_s

    def describe_sizes(self, quick):
        return self.quick_sizes if quick else self.sizes


class Context:
    """What a check function gets: the run's settings, a scratch folder and a figures dict saved as it grows."""

    def __init__(self, quick, work, partial_path):
        self.quick = quick
        self.work = work
        self.partial_path = partial_path
        self.figures = {}

    def record(self, key, value):
        """Add a figure and save the figures so far (a check killed at its time limit keeps them)."""
        self.figures[key] = value
        with open(self.partial_path, 'w') as f:
            json.dump(self.figures, f, indent=1, default=str)

    def pick(self, full, quick):
        return quick if self.quick else full


# ----------------------------------------------------------------------------------------------- helpers
def child_env(**extra):
    """The environment of the commands a check launches: this checkout first on the path, unbuffered output."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', **extra)
    env['PYTHONPATH'] = REPO + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    env.setdefault('OMP_NUM_THREADS', str(min(os.cpu_count() or 1, 16)))  # the CPU twins of tests/test_cuda.py
    return env


def stream(cmd, cwd, env=None):
    """Run ``cmd``, copying its output line by line to this check's log as it comes (a check killed at its limit
    still leaves what its command printed); returns (exit status, output)."""
    print(f'$ {" ".join(cmd)}', flush=True)
    lines = []
    with subprocess.Popen(cmd, cwd=cwd, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as process:
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    return process.returncode, ''.join(lines)


def run_command(cmd, cwd, env=None, what='command'):
    """Run ``cmd`` (see :func:`stream`); CheckFailed with its last line if it fails."""
    status, output = stream(cmd, cwd, env)
    if status != 0:
        raise CheckFailed(f'{what} exited with {status}: {last_line(output)}')
    return output


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ''


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def cli(*args):
    """``basicsr ARGS`` through this checkout's module (no console script needed on the GPU machine)."""
    return [sys.executable, '-m', 'issp_basicsr.cli', *args]


def median_ms(times):
    return round(statistics.median(times), 4)


def cuda_timer(torch):
    """A function timing ``fn()`` on the GPU with CUDA events, in ms (synchronises after each call)."""
    if DEVICE == 'cpu':
        def cpu_timed(fn):
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        return cpu_timed

    def timed(fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    return timed


def swinir_light(img_size=64):
    from basicsr.archs.swinir_arch import SwinIR
    return SwinIR(upscale=4, in_chans=3, img_size=img_size, window_size=8, img_range=1.0, depths=[6, 6, 6, 6],
                  embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler='pixelshuffledirect',
                  resi_connection='1conv')


def edsr_l():
    from basicsr.archs.edsr_arch import EDSR
    return EDSR(num_in_ch=3, num_out_ch=3, num_feat=256, num_block=32, upscale=4, res_scale=0.1)


MODELS = {'swinir': ('SwinIR-light x4', swinir_light, 2e-4), 'edsr': ('EDSR-L x4', edsr_l, 1e-4)}


def cuda_modules():
    """Import torch and the plugin (BasicSR fixes first); CheckSkipped without CUDA."""
    import torch
    import issp_basicsr  # noqa: F401
    if DEVICE == 'cuda' and not torch.cuda.is_available():
        raise CheckSkipped('no CUDA device')
    torch.backends.cudnn.benchmark = True  # as basicsr train sets it
    return torch


def synchronize(torch):
    if DEVICE == 'cuda':
        torch.cuda.synchronize()


def free_memory(torch):
    if DEVICE == 'cuda':
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ checks
def check_cuda_tests(ctx):
    """pytest -m cuda tests/test_cuda.py: CUDA selection equal to the CPU's, freeze/fine-tune, checksums."""
    import xml.etree.ElementTree as ET
    junit = os.path.join(ctx.work, 'cuda_tests.xml')
    cmd = [sys.executable, '-m', 'pytest', '-m', 'cuda', 'tests/test_cuda.py', '-v', '-rfEs', '-p', 'no:cacheprovider',
           f'--junitxml={junit}']
    if ctx.quick:
        cmd += ['-k', 'not edsr']
    returncode, output = stream(cmd, REPO)
    ctx.record('pytest_exit_status', returncode)
    if not os.path.exists(junit):
        raise CheckFailed(f'pytest wrote no report (exit {returncode}): {last_line(output)}')
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == 'testsuite' else suite.find('testsuite')
    counts = {key: int(suite.get(key, 0)) for key in ('tests', 'failures', 'errors', 'skipped')}
    counts['passed'] = counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']
    failed = []
    for case in suite.iter('testcase'):
        for tag in ('failure', 'error'):
            problem = case.find(tag)
            if problem is not None:
                failed.append(f'{case.get("name")}: {(problem.get("message") or "").splitlines()[0][:200]}')
    for key, value in counts.items():
        ctx.record(key, value)
    ctx.record('failed_tests', failed)
    if failed or returncode != 0:
        raise CheckFailed(f'{counts["failures"] + counts["errors"]} of {counts["tests"]} CUDA tests failed' +
                          (f' (first: {failed[0]})' if failed else f' (pytest exit {returncode})'))
    if counts['passed'] == 0 or counts['skipped']:
        raise CheckFailed(f'{counts["skipped"]} of {counts["tests"]} CUDA tests were skipped on a CUDA machine')
    return f'{counts["passed"]} CUDA tests passed'


def sync_cases(quick):
    """(model, method, scope, pattern) of the no-sync check: per-layer issp and iht on both models (the brief),
    plus the global and 2:4 selections on SwinIR-light."""
    cases = [(m, method, 'layer', 'unstructured') for m in ('swinir', 'edsr') for method in ('issp', 'iht')]
    cases += [('swinir', 'issp', 'global', 'unstructured'), ('swinir', 'issp', 'layer', '2:4')]
    return cases


def set_sync_debug_mode(torch, mode):
    if DEVICE == 'cuda':
        torch.cuda.set_sync_debug_mode(mode)


def steps_without_sync(torch, key, method, scope, pattern, steps):
    """Train one model with Adam and run Sparsifier.step after each optimizer step inside the sync detector;
    returns None, or what went wrong."""
    import torch.nn.functional as F
    from issp_basicsr.sparsity import build_sparsifier
    _, build, lr = MODELS[key]
    torch.manual_seed(0)
    model = build().to(DEVICE)
    block = dict(method=method, ratio=0.95 if pattern == 'unstructured' else 0.5, prune_iter=10**9, scope=scope,
                 pattern=pattern)
    if method == 'issp':
        block['alpha'] = 0.95
    if pattern != 'unstructured':
        block['exclude'] = ['conv_first']
    sparsifier = build_sparsifier(model, **block)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    patch = 16 if key == 'swinir' else 12
    for it in range(1, steps + 1):
        lq = torch.rand(1, 3, patch, patch, device=DEVICE)
        gt = torch.rand(1, 3, patch * 4, patch * 4, device=DEVICE)
        optimizer.zero_grad(set_to_none=True)
        F.l1_loss(model(lq), gt).backward()
        optimizer.step()
        synchronize(torch)
        set_sync_debug_mode(torch, 'error')
        try:
            sparsifier.step(it)
        except RuntimeError as exc:
            traceback.print_exc()
            return f'step {it}: {str(exc).splitlines()[0][:200]}'
        finally:
            set_sync_debug_mode(torch, 0)
    selected = sum(int(mask.sum()) for mask in sparsifier.masks().values())  # the steps did select
    if selected != sparsifier.num_pruned():
        return f'{selected} weights selected, {sparsifier.num_pruned()} expected'
    return None


def check_no_host_syncs(ctx):
    """torch.cuda.set_sync_debug_mode('error') around pruning-stage Sparsifier.step calls: a host sync raises."""
    torch = cuda_modules()
    steps = ctx.pick(50, 10)
    # the detector itself: a .item() inside the mode must raise
    probe = torch.ones(4, device=DEVICE)
    set_sync_debug_mode(torch, 'error')
    try:
        probe.sum().item()
        detector = False
    except RuntimeError:
        detector = True
    finally:
        set_sync_debug_mode(torch, 0)
    ctx.record('detector_raises_on_item', detector)
    if not detector and DEVICE == 'cuda':
        raise CheckFailed("set_sync_debug_mode('error') did not raise on .item(): the check would prove nothing")
    failures = []
    for key, method, scope, pattern in sync_cases(ctx.quick):
        label = f'{MODELS[key][0]} {method} {scope} {pattern}'
        error = steps_without_sync(torch, key, method, scope, pattern, steps)
        ctx.record(label, error or f'{steps} steps, no host sync')
        if error:
            failures.append(f'{label}: {error}')
        free_memory(torch)
    if failures:
        raise CheckFailed('; '.join(failures))
    return f'{steps} pruning steps per case, {len(sync_cases(ctx.quick))} cases, no host sync'


def cost_sizes(quick):
    """model -> (training batch, LR patch): the brief's sizes, smaller under --quick."""
    return {'swinir': (8, 48), 'edsr': (4, 32)} if quick else {'swinir': (32, 64), 'edsr': (16, 48)}


def measure_cost(torch, key, batch, patch, repeats, warmup=3):
    """One model's figures: training iteration and Sparsifier.step, each timed with CUDA events."""
    import torch.nn.functional as F
    from issp_basicsr.sparsity import build_sparsifier
    timed = cuda_timer(torch)
    title, build, lr = MODELS[key]
    torch.manual_seed(0)
    model = build().to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    total = warmup + repeats
    sparsifier = build_sparsifier(model, method='issp', ratio=0.95, alpha=0.95, prune_iter=total + 1)
    lq = torch.rand(batch, 3, patch, patch, device=DEVICE)
    gt = torch.rand(batch, 3, patch * 4, patch * 4, device=DEVICE)

    def iteration():
        optimizer.zero_grad(set_to_none=True)
        F.l1_loss(model(lq), gt).backward()
        optimizer.step()

    if DEVICE == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    train_ms, step_ms = [], []
    for it in range(1, total + 1):
        train = timed(iteration)
        step = timed(lambda: sparsifier.step(it))
        if it > warmup:
            train_ms.append(train)
            step_ms.append(step)
    freeze_ms = timed(lambda: sparsifier.step(total + 1))
    finetune_ms = []
    for it in range(total + 2, total + 2 + repeats):
        iteration()
        finetune_ms.append(timed(lambda: sparsifier.step(it)))
    train, step = statistics.median(train_ms), statistics.median(step_ms)
    share = 100 * step / (train + step)
    return title, {
        'batch': batch, 'lr_patch': patch, 'repeats': repeats,
        'train_iteration_ms_median': round(train, 3), 'prune_step_ms_median': round(step, 4),
        'prune_step_ms_min': round(min(step_ms), 4), 'step_share_percent': round(share, 3),
        'target_step_under_1_percent': share < 1.0, 'freeze_step_ms': round(freeze_ms, 3),
        'finetune_step_ms_median': median_ms(finetune_ms),
        'peak_memory_gib': round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == 'cuda' else None,
        'prunable_weights': sparsifier.num_weights(),
    }


def check_step_cost(ctx):
    """Sparsifier.step (issp, ratio 0.95, pruning stage) vs one training iteration, CUDA events, medians."""
    torch = cuda_modules()
    shares = {}
    for key, (batch, patch) in cost_sizes(ctx.quick).items():
        title, figures = measure_cost(torch, key, batch, patch, ctx.pick(20, 10))
        ctx.record(title, figures)
        shares[title] = figures['step_share_percent']
        free_memory(torch)
    return ', '.join(f'{t}: step {s:.2f} % of an iteration' for t, s in shares.items()) + ' (target < 1 %)'


# ---- training runs on the sample set
def ensure_sample(ctx):
    """The sample set (scikit-image photos, no download) under the scratch folder, built once per run."""
    root = os.path.join(ctx.work, 'datasets', 'sample')
    run_command(cli('datasets', 'sample', '--root', root, '--scales', '4'), cwd=ctx.work,
                what='basicsr datasets sample')
    return root


def train_options(name, sample_root, method_block, total_iter, batch, gt_size, workers, save_freq=10**6,
                  print_freq=10, validate=False):
    """A ``basicsr train`` option dict: SwinIR-light x4 (paper settings, img_size = the LR patch) on the sample set."""
    lq_patch = gt_size // 4
    net = {'type': 'SwinIR', 'upscale': 4, 'in_chans': 3, 'img_size': lq_patch, 'window_size': 8, 'img_range': 1.0,
           'depths': [6, 6, 6, 6], 'embed_dim': 60, 'num_heads': [6, 6, 6, 6], 'mlp_ratio': 2,
           'upsampler': 'pixelshuffledirect', 'resi_connection': '1conv'}
    datasets = {'train': {
        'name': 'sample', 'type': 'PairedImageDataset',
        'dataroot_gt': os.path.join(sample_root, 'sample_train_HR_sub.lmdb'),
        'dataroot_lq': os.path.join(sample_root, 'sample_train_LR_bicubic_X4_sub.lmdb'),
        'io_backend': {'type': 'lmdb'}, 'gt_size': gt_size, 'use_hflip': True, 'use_rot': True,
        'num_worker_per_gpu': workers, 'batch_size_per_gpu': batch, 'dataset_enlarge_ratio': 100,
        'prefetch_mode': None}}
    opt = {
        'name': name, 'model_type': 'ISSPSRModel', 'scale': 4, 'num_gpu': 1 if DEVICE == 'cuda' else 0,
        'manual_seed': 0,
        'datasets': datasets, 'network_g': net,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0.999,
            'optim_g': {'type': 'Adam', 'lr': 2.0e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [10**6], 'gamma': 0.5},
            'total_iter': total_iter, 'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
            'sparsity': method_block},
        'logger': {'print_freq': print_freq, 'save_checkpoint_freq': save_freq, 'use_tb_logger': False,
                   'wandb': {'project': None, 'resume_id': None}},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }
    if validate:
        datasets['val'] = {'name': 'sample_val', 'type': 'PairedImageDataset',
                           'dataroot_gt': os.path.join(sample_root, 'val', 'GTmod4'),
                           'dataroot_lq': os.path.join(sample_root, 'val', 'LRbicx4'), 'io_backend': {'type': 'disk'}}
        opt['val'] = {'val_freq': total_iter, 'save_img': False,
                      'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}}
    return opt


def write_yaml(path, opt):
    import yaml
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return path


def log_throughput(log_text, skip_before=20):
    """Iterations per second between the first and the last progress line at or after ``skip_before`` of a
    BasicSR training log (its lines start with ``YYYY-mm-dd HH:MM:SS,mmm``; progress lines name ``iter:``)."""
    import re
    points = []
    for line in log_text.splitlines():
        match = re.match(r'(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO: \[.*?iter:\s*([\d,]+)', line)
        if match:
            stamp = datetime.datetime.strptime(match.group(1), '%Y-%m-%d %H:%M:%S,%f')
            points.append((int(match.group(2).replace(',', '')), stamp))
    points = [(it, stamp) for it, stamp in points if it >= skip_before]
    if len(points) < 2:
        return None
    (first_it, first), (last_it, last) = points[0], points[-1]
    seconds = (last - first).total_seconds()
    return (last_it - first_it) / seconds if seconds > 0 else None


def experiment_log(work, name):
    folder = os.path.join(work, 'experiments', name)
    logs = sorted(n for n in os.listdir(folder) if n.startswith('train_') and n.endswith('.log'))
    with open(os.path.join(folder, logs[-1])) as f:
        return f.read()


def check_train_throughput(ctx):
    """basicsr train, SwinIR-light x4 on the sample set: dense (method dense) vs ISS-P, iterations per second."""
    cuda_modules()
    sample = ensure_sample(ctx)
    iters, batch = ctx.pick(100, 40), ctx.pick(32, 8)
    rates = {}
    for method, block in (('dense', {'method': 'dense', 'prune_iter': iters}),
                          ('issp', {'method': 'issp', 'ratio': 0.95, 'alpha': 0.95, 'prune_iter': iters})):
        name = f'throughput_{method}'
        path = write_yaml(os.path.join(ctx.work, f'{name}.yml'), train_options(name, sample, block, iters, batch, 192,
                                                                                workers=6))
        start = time.time()
        run_command(cli('train', '-opt', path), cwd=ctx.work, what=f'basicsr train ({method})')
        rate = log_throughput(experiment_log(ctx.work, name), skip_before=20 if iters >= 60 else 10)
        if rate is None:
            raise CheckFailed(f'no progress lines to time in the {method} log')
        rates[method] = rate
        ctx.record(f'{method}_iterations_per_s', round(rate, 3))
        ctx.record(f'{method}_run_s', round(time.time() - start, 1))
    ratio = rates['issp'] / rates['dense']
    ctx.record('batch', batch)
    ctx.record('lr_patch', 48)
    ctx.record('iterations', iters)
    ctx.record('issp_over_dense', round(ratio, 4))
    ctx.record('target_within_2_percent', ratio >= 0.98)
    return f'ISS-P at {100 * ratio:.1f} % of dense throughput (target >= 98 %)'


def check_torchrun_nccl(ctx):
    """1-process torchrun ISS-P run with NCCL, a checkpoint, then --auto_resume from it to the same end."""
    torch = cuda_modules()
    sample = ensure_sample(ctx)
    total, freeze = ctx.pick(20, 10), ctx.pick(10, 5)
    name = 'torchrun_nccl'
    block = {'method': 'issp', 'ratio': 0.9, 'alpha': 0.95, 'prune_iter': freeze}
    opt = train_options(name, sample, block, total, batch=4, gt_size=96, workers=0, save_freq=freeze,
                        print_freq=5, validate=True)
    path = write_yaml(os.path.join(ctx.work, f'{name}.yml'), opt)
    def launch(*extra):
        return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=1', f'--master_port={free_port()}',
                '-m', 'issp_basicsr.cli', 'train', '-opt', path, '--launcher', 'pytorch', *extra]

    env = child_env(NCCL_DEBUG='INFO')
    first = run_command(launch(), cwd=ctx.work, env=env, what='torchrun (first run)')
    nccl = [line for line in first.splitlines() if 'NCCL INFO' in line]
    ctx.record('nccl_evidence', nccl[0][:200] if nccl else None)
    if not nccl and DEVICE == 'cuda':
        raise CheckFailed('no NCCL INFO line in the output of the NCCL run (NCCL_DEBUG=INFO): NCCL was not used')
    log = experiment_log(ctx.work, name)
    if 'World size (gpu number): 1' not in log:
        raise CheckFailed('the log does not say "World size (gpu number): 1"')
    root = os.path.join(ctx.work, 'experiments', name)
    states, models = os.path.join(root, 'training_states'), os.path.join(root, 'models')
    final = torch.load(os.path.join(states, f'{total}.state'), map_location='cpu', weights_only=True)
    masks = final['sparsifier']['selected']
    if not final['sparsifier']['frozen']:
        raise CheckFailed(f'the state at {total} is not frozen (prune_iter {freeze})')
    check_zeros(torch, os.path.join(models, f'net_g_{total}.pth'), masks, 'first run')
    for path_ in (os.path.join(states, f'{total}.state'), os.path.join(models, f'net_g_{total}.pth'),
                  os.path.join(models, 'net_g_latest.pth')):
        os.remove(path_)
    resumed_out = run_command(launch('--auto_resume'), cwd=ctx.work, env=env, what='torchrun --auto_resume')
    line = next((text for text in resumed_out.splitlines() if 'Resuming training from epoch: ' in text), None)
    ctx.record('resume_line', line.split('INFO: ')[-1] if line else None)
    if line is None or f'iter: {freeze}.' not in line:
        raise CheckFailed(f'the resumed run did not resume from iteration {freeze} ({line!r})')
    again = torch.load(os.path.join(states, f'{total}.state'), map_location='cpu', weights_only=True)
    moved = [n for n in masks if not torch.equal(masks[n], again['sparsifier']['selected'][n])]
    if moved:
        raise CheckFailed(f'the resumed run ended with other masks ({len(moved)} layers, first {moved[0]})')
    check_zeros(torch, os.path.join(models, f'net_g_{total}.pth'), masks, 'resumed run')
    from issp_basicsr.distributed import mask_checksum
    if not torch.equal(again['mask_checksums'][0], mask_checksum(masks)):
        raise CheckFailed('the checksum recorded by the resumed run is not that of its masks')
    ctx.record('iterations', total)
    ctx.record('prune_iter', freeze)
    ctx.record('layers', len(masks))
    return f'NCCL run to {total}, resumed from {freeze} with --auto_resume to the same masks'


def check_zeros(torch, network_path, masks, where):
    """The saved weights (params and params_ema) are exactly zero where the mask says, and only there."""
    saved = torch.load(network_path, map_location='cpu', weights_only=True)
    for key in ('params', 'params_ema'):
        for name, mask in masks.items():
            zeros = saved[key][f'{name}.weight'].reshape(-1) == 0
            if not torch.equal(zeros, mask):
                raise CheckFailed(f'{where}: {key} {name}: zeros differ from the mask')


# ---- inference
def semi_structured_linear(torch, linear, sparse_rows=32, sparse_cols=64):
    """An nn.Module computing ``linear`` (fp16, 2:4-pruned weight) with a ``to_sparse_semi_structured`` weight.

    SwinIR-light's Linear sizes (60, 120, 180) are not multiples of the kernels' tile (32 rows x 64 columns for
    CUTLASS, 16 x 16 for cuSPARSELt): the weight is zero-padded to the next multiples, the input's features likewise,
    and the output cropped. Zero columns keep every group of 4 at 2 non-zeros or fewer.
    """
    import torch.nn.functional as F
    from torch import nn

    out_features, in_features = linear.weight.shape
    rows = -(-out_features // sparse_rows) * sparse_rows
    cols = -(-in_features // sparse_cols) * sparse_cols
    padded = F.pad(linear.weight.detach(), (0, cols - in_features, 0, rows - out_features)).contiguous()
    bias = None if linear.bias is None else F.pad(linear.bias.detach(), (0, rows - out_features))

    class Module(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(padded), requires_grad=False)
            self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
            self.pad = cols - in_features
            self.out_features = out_features
            self.padded_dense = padded

        def forward(self, x):
            x = F.pad(x, (0, self.pad)) if self.pad else x
            return F.linear(x, self.weight, self.bias)[..., :self.out_features]

    return Module()


def check_inference_2to4(ctx):
    """SwinIR-light, Linear layers pruned 2:4 by the core, to_sparse_semi_structured, fp16 latency vs dense."""
    torch = cuda_modules()
    import torch.nn.functional as F
    from torch import nn
    from issp_basicsr.sparsity import build_sparsifier
    timed = cuda_timer(torch)
    size, repeats = ctx.pick(256, 128), ctx.pick(20, 10)
    torch.manual_seed(0)
    model = swinir_light(img_size=size).to(DEVICE).eval()
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    sparsifier = build_sparsifier(model, method='iht', ratio=0.5, pattern='2:4', prune_iter=1, exclude=convs)
    sparsifier.step(1)  # freeze: the 2 smaller of every 4 consecutive input weights are 0
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    for name, linear in linears.items():
        zeros = (linear.weight.detach().reshape(-1, 4) == 0).sum(dim=1)
        if not bool((zeros >= 2).all()):
            raise CheckFailed(f'{name}: a group of 4 input weights has fewer than 2 zeros after 2:4 pruning')
    ctx.record('linear_layers', len(linears))
    model = model.half()
    backend = 'cuSPARSELt'
    probe_layer = next(iter(linears.values()))
    probe = torch.rand(64, probe_layer.in_features, device=DEVICE, dtype=torch.float16)
    try:
        with torch.inference_mode():
            semi_structured_linear(torch, probe_layer)(probe)
    except Exception as exc:  # noqa: BLE001  (cuSPARSELt missing or refusing: torch's CUTLASS kernels)
        print(f'cuSPARSELt: {type(exc).__name__}: {exc}; trying CUTLASS', flush=True)
        torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS = True
        backend = 'CUTLASS'
    ctx.record('backend', backend)
    import copy
    sparse = copy.deepcopy(model)
    for name, linear in list(sparse.named_modules()):
        if isinstance(linear, nn.Linear):
            replacement = semi_structured_linear(torch, linear)
            restored = replacement.weight.to_dense()
            if not torch.equal(restored, replacement.padded_dense):
                raise CheckFailed(f'{name}: the semi-structured weight does not give back the pruned weight')
            parent, _, child = name.rpartition('.')
            setattr(sparse.get_submodule(parent) if parent else sparse, child, replacement)
    x = torch.rand(1, 3, size, size, device=DEVICE, dtype=torch.float16)
    with torch.inference_mode():
        dense_out, sparse_out = model(x), sparse(x)
        error = float((sparse_out.float() - dense_out.float()).norm() / dense_out.float().norm())
        finite = bool(torch.isfinite(sparse_out).all())
        ctx.record('relative_error', error)
        if not finite or not error < 1e-2:
            raise CheckFailed(f'2:4 semi-structured output differs from dense: relative error {error:.3g}')
        for _ in range(3):
            model(x), sparse(x)
        dense_ms, sparse_ms = [], []
        for _ in range(repeats):
            dense_ms.append(timed(lambda: model(x)))
            sparse_ms.append(timed(lambda: sparse(x)))
        ctx.record(f'model_{size}x{size}', {'dense_fp16_ms': median_ms(dense_ms),
                                            'sparse_2to4_ms': median_ms(sparse_ms),
                                            'speedup': round(statistics.median(dense_ms) / statistics.median(sparse_ms),
                                                             3)})
        tokens = size * size
        layers = []
        shapes = {}
        for name, linear in linears.items():
            shapes.setdefault(tuple(linear.weight.shape), []).append(name)
        for (out_f, in_f), names in shapes.items():
            linear = linears[names[0]]
            replacement = semi_structured_linear(torch, linear)
            inputs = torch.rand(tokens, in_f, device=DEVICE, dtype=torch.float16)
            padded_inputs = F.pad(inputs, (0, replacement.pad)) if replacement.pad else inputs
            for _ in range(3):
                linear(inputs), replacement(inputs)
            dense_t = [timed(lambda: linear(inputs)) for _ in range(50)]
            sparse_t = [timed(lambda: replacement(inputs)) for _ in range(50)]
            kernel_t = [timed(lambda: F.linear(padded_inputs, replacement.weight, replacement.bias))
                        for _ in range(50)]
            layers.append({'shape': f'{in_f}->{out_f}', 'layers': len(names), 'tokens': tokens,
                           'dense_ms': median_ms(dense_t), 'sparse_ms': median_ms(sparse_t),
                           'sparse_kernel_only_ms': median_ms(kernel_t),
                           'speedup': round(statistics.median(dense_t) / statistics.median(sparse_t), 3)})
            ctx.record('per_layer', layers)
    model_figures = ctx.figures[f'model_{size}x{size}']
    return (f'{backend}: outputs within {error:.1e}; SwinIR-light {size}x{size} fp16 '
            f'{model_figures["dense_fp16_ms"]:.2f}'
            f' ms dense, {model_figures["sparse_2to4_ms"]:.2f} ms 2:4')


def check_inference_csr(ctx):
    """EDSR-L at 0.99 with issp_basicsr.deploy's CSR layers on CUDA vs dense (expected slower)."""
    torch = cuda_modules()
    from issp_basicsr.deploy.sparse_modules import convert_to_sparse
    from issp_basicsr.sparsity import build_sparsifier
    timed = cuda_timer(torch)
    size, repeats = ctx.pick(64, 32), ctx.pick(10, 5)
    torch.manual_seed(0)
    model = edsr_l().to(DEVICE).eval()
    build_sparsifier(model, method='iht', ratio=0.99, prune_iter=1).step(1)
    sparse = convert_to_sparse(model)
    ctx.record('sparse_layers', sum(1 for d in sparse.sparse_plan.values() if d['sparse']))
    x = torch.rand(1, 3, size, size, device=DEVICE)
    with torch.no_grad():
        allow = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # exact float32 dense reference
        dense_out = model(x)
        sparse_out = sparse(x)
        error = float((sparse_out - dense_out).norm() / dense_out.norm())
        ctx.record('relative_error', error)
        if not bool(torch.isfinite(sparse_out).all()) or not error < 1e-4:
            raise CheckFailed(f'CUDA CSR output differs from dense: relative error {error:.3g}')
        figures = {}
        for label, tf32 in (('dense_fp32_ms', False), ('dense_tf32_ms', True)):
            torch.backends.cudnn.allow_tf32 = tf32
            model(x)
            figures[label] = median_ms([timed(lambda: model(x)) for _ in range(repeats)])
        torch.backends.cudnn.allow_tf32 = allow
        sparse(x)
        figures['sparse_csr_ms'] = median_ms([timed(lambda: sparse(x)) for _ in range(repeats)])
        figures['sparse_over_dense_fp32'] = round(figures['sparse_csr_ms'] / figures['dense_fp32_ms'], 2)
    ctx.record(f'edsr_l_0.99_{size}x{size}', figures)
    return (f'outputs within {error:.1e}; EDSR-L 0.99 {size}x{size}: dense {figures["dense_fp32_ms"]:.2f} ms, CSR '
            f'{figures["sparse_csr_ms"]:.2f} ms')


CHECKS = [
    Check('cuda_tests', 'correctness: pytest -m cuda (CUDA selection = CPU selection, freeze, checksums)', True,
          120, 45,
          'tests/test_cuda.py: SwinIR-light x4 (11 sparsity cases) and EDSR-L x4 (9) after 3 Adam steps, 5 steps each; '
          'tie layers fp32/fp16/bf16 x 4 variants',
          'tests/test_cuda.py without the EDSR-L cases', check_cuda_tests),
    Check('no_host_syncs', "no host syncs: set_sync_debug_mode('error') around Sparsifier.step", True, 45, 15,
          '50 pruning-stage steps: SwinIR-light and EDSR-L x issp/iht per layer, SwinIR-light issp global and 2:4',
          '10 steps per case, the same cases', check_no_host_syncs),
    Check('step_cost', 'cost: pruning step vs training iteration (CUDA events, median)', False, 45, 15,
          'SwinIR-light batch 32 LR 64, EDSR-L batch 16 LR 48, median of 20',
          'SwinIR-light batch 8 LR 48, EDSR-L batch 4 LR 32, median of 10', check_step_cost),
    Check('torchrun_nccl', 'launch: 1-process torchrun, NCCL, checkpoint, --auto_resume', True, 60, 30,
          'SwinIR-light x4 on the sample set, batch 4, LR 24, 20 iterations, freeze and checkpoint at 10',
          '10 iterations, freeze and checkpoint at 5', check_torchrun_nccl),
    Check('mixed_precision', 'mixed precision training (bf16/fp16 autocast)', True, 0, 0, '-', '-',
          skip_reason='not offered by the plugin in this round: BasicSR 1.4.2 has no autocast and issp-basicsr adds '
          'no train:amp key yet'),
    Check('inference_2to4', 'inference: 2:4 semi-structured Linear layers (fp16) vs dense', True, 30, 15,
          'SwinIR-light x4 on a 256x256 LR input (65,536 tokens); each Linear shape on [65536, C], median of 50',
          'a 128x128 LR input (16,384 tokens)', check_inference_2to4),
    Check('inference_csr', 'inference: CUDA CSR layers (issp_basicsr.deploy) vs dense', False, 30, 12,
          'EDSR-L x4 at ratio 0.99, 1x3x64x64, median of 10', '1x3x32x32, median of 5', check_inference_csr),
    Check('inference_slim', 'inference: slim (channel-pruned) model', False, 0, 0, '-', '-',
          skip_reason='the slim (channel-pruned) model does not exist yet'),
    Check('train_throughput', 'cost: basicsr train throughput, dense vs ISS-P', False, 90, 0,
          'SwinIR-light x4 on the sample set, batch 32, LR 48, 100 iterations each (timed from iteration 20)',
          'skipped under --quick', check_train_throughput),
]
CHECK_NAMES = [check.name for check in CHECKS]


# ------------------------------------------------------------------------------------------------ report
def summarize(checks):
    counts = {status: 0 for status in STATUSES}
    for result in checks.values():
        counts[result['status']] += 1
    return counts


def exit_status(report):
    """1 when a gating check failed or errored, else 0."""
    return 1 if any(r['gates'] and r['status'] in ('fail', 'error') for r in report['checks'].values()) else 0


def format_value(value):
    if isinstance(value, float):
        return f'{value:.4g}'
    if isinstance(value, dict):
        return ', '.join(f'{k} {format_value(v)}' for k, v in value.items())
    if isinstance(value, list):
        return '; '.join(format_value(v) for v in value) if value else '-'
    return str(value)


def render_markdown(report):
    env = report['environment']
    counts = summarize(report['checks'])
    lines = [
        f'# GPU check, {report["started"]}', '',
        f'Device: {env.get("device", "?")}, driver {env.get("driver", "?")}, CUDA {env.get("cuda", "?")}, '
        f'torch {env.get("torch", "?")}, Python {env.get("python", "?")}, {env.get("cpus", "?")} CPUs. '
        f'Mode: {"quick" if report["quick"] else "full"}. Exit status: {report.get("exit_status", "?")}.', '',
        'Result: ' + ', '.join(f'{n} {s}' for s, n in counts.items() if n) +
        ('' if report.get('finished') else ' (the run had not finished when this was written)'), '',
        '| check | status | gating | seconds | result |', '| --- | --- | --- | --- | --- |',
    ]
    for name, result in report['checks'].items():
        lines.append(f'| {name} | {result["status"]} | {"yes" if result["gates"] else "no"} | '
                     f'{result.get("seconds", "-")} | {result.get("reason", "").replace("|", "/")} |')
    for name, result in report['checks'].items():
        if not result.get('figures') and not result.get('log_tail'):
            continue
        lines += ['', f'## {name}: {result["title"]}', '', f'Sizes: {result["sizes"]}', '']
        for key, value in result.get('figures', {}).items():
            lines.append(f'- {key}: {format_value(value)}')
        if result.get('log_tail'):
            lines += ['', '```', result['log_tail'], '```']
    return '\n'.join(lines) + '\n'


def write_report(out_dir, report):
    """DIR/gpu_check.json and DIR/gpu_check.md, each written to a temporary file and renamed into place."""
    os.makedirs(out_dir, exist_ok=True)
    for name, text in (('gpu_check.json', json.dumps(report, indent=1, default=str) + '\n'),
                       ('gpu_check.md', render_markdown(report))):
        path = os.path.join(out_dir, name)
        with open(path + '.tmp', 'w') as f:
            f.write(text)
        os.replace(path + '.tmp', path)


def new_report(checks, quick, environment):
    return {
        'started': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'quick': quick, 'finished': False, 'environment': environment,
        'checks': {c.name: {'title': c.title, 'gates': c.gates, 'sizes': c.describe_sizes(quick),
                            'budget_s': c.budget(quick), 'status': 'not run', 'reason': ''} for c in checks},
    }


# ------------------------------------------------------------------------------------------------ running
def environment():
    import torch
    env = {'torch': torch.__version__, 'cuda': torch.version.cuda, 'python': platform.python_version(),
           'cpus': os.cpu_count(), 'host': platform.node()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f'{props.major}.{props.minor}',
                   memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                   cudnn=torch.backends.cudnn.version(), device_count=torch.cuda.device_count())
        try:
            smi = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                 capture_output=True, text=True, timeout=20)
            env['driver'] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            env['driver'] = None
        try:
            available = torch.backends.cusparselt.is_available()
            env['cusparselt'] = torch.backends.cusparselt.version() if available else None
        except AttributeError:
            env['cusparselt'] = None
    for module in ('basicsr', 'issp_basicsr'):
        try:
            env[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001  (a version is a nicety)
            env[module] = None
    try:
        env['commit'] = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except OSError:
        env['commit'] = None
    return env


def run_check_here(name, quick, work, result_path):
    """The child side: run one check in this process and write its result (``--run-check``)."""
    check = next(c for c in CHECKS if c.name == name)
    ctx = Context(quick, work, result_path + '.partial')
    result = {'figures': ctx.figures}
    try:
        result.update(status='pass', reason=check.run(ctx) or '')
    except CheckFailed as exc:
        result.update(status='fail', reason=str(exc))
    except CheckSkipped as exc:
        result.update(status='skipped', reason=str(exc))
    except Exception as exc:  # noqa: BLE001  (any crash is the check's result: status error)
        traceback.print_exc()
        result.update(status='error', reason=f'{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}'
                      [:300])
    with open(result_path, 'w') as f:
        json.dump(result, f, indent=1, default=str)
    return 0


def run_check_process(check, quick, work, timeout, log, cmd=None):
    """Run one check in a child process (own process group, killed at ``timeout``); returns its result dict.

    ``cmd`` replaces the child's command (tests); it writes the result to ``WORK/NAME.result.json`` and, as it goes,
    its figures so far to ``WORK/NAME.result.json.partial``.
    """
    result_path = os.path.join(work, f'{check.name}.result.json')
    cmd = cmd or [sys.executable, os.path.abspath(__file__), '--run-check', check.name, '--work', work,
                  '--result', result_path] + (['--quick'] if quick else [])
    log.write(f'\n===== {check.name} (limit {timeout:.0f} s) =====\n')
    log.flush()
    start = time.time()
    with open(os.path.join(work, f'{check.name}.log'), 'w+') as own:
        process = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=own, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the check and everything it launched
            process.wait()
            timed_out = True
        own.seek(0)
        output = own.read()
    log.write(output)
    log.flush()
    seconds = round(time.time() - start, 1)
    if timed_out:
        figures = {}
        if os.path.exists(result_path + '.partial'):
            with open(result_path + '.partial') as f:
                figures = json.load(f)
        result = {'status': 'error', 'reason': f'timed out after {timeout:.0f} s (killed)', 'figures': figures}
    elif os.path.exists(result_path):
        with open(result_path) as f:
            result = json.load(f)
    else:
        result = {'status': 'error', 'reason': f'the check process exited with {process.returncode} without a result: '
                  f'{last_line(output)}', 'figures': {}}
    result['seconds'] = seconds
    if result['status'] in ('fail', 'error'):
        result['log_tail'] = output[-LOG_TAIL_CHARS:]
    return result


def dry_run(checks, quick):
    total = TOTAL_BUDGET_S[quick]
    print(f'gpu_check: {len(checks)} checks, {"quick" if quick else "full"} mode, at most {total} s in all '
          f'({total / 60:.1f} min); each runs in its own process with its own limit')
    for check in checks:
        limit = 'skipped' if check.run is None or check.budget(quick) == 0 else f'limit {check.budget(quick):>3} s'
        print(f'  {check.name:<17} {"gating" if check.gates else "report":<6}  {limit:<11}  {check.title}')
        detail = check.skip_reason if check.run is None else check.describe_sizes(quick)
        print(f'  {"":<17} {"":<6}  {"":<11}  {detail}')
    return 0


def missing_modules():
    return [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]


def import_problem():
    """None when the plugin, BasicSR's archs and lmdb import, else the error in one line (BasicSR 1.4.2 imports
    ``distutils``, gone from Python 3.12 unless setuptools' shim provides it)."""
    try:
        import issp_basicsr  # noqa: F401
        import basicsr.archs.swinir_arch  # noqa: F401
        import lmdb  # noqa: F401
    except Exception as exc:  # noqa: BLE001  (any import failure is reported the same way)
        return f'{type(exc).__name__}: {exc}'.splitlines()[0]
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default=DEFAULT_OUT,
                        help=f'folder for gpu_check.json/.md/.log (default {DEFAULT_OUT})')
    parser.add_argument('--quick', action='store_true', help='smaller sizes: under 2 minutes')
    parser.add_argument('--dry-run', action='store_true', help='list the checks, sizes and limits, run nothing')
    parser.add_argument('--only', nargs='+', choices=CHECK_NAMES, help='run only these checks')
    parser.add_argument('--work', help='scratch folder (default: a new temporary folder, removed at the end)')
    parser.add_argument('--run-check', choices=CHECK_NAMES, help=argparse.SUPPRESS)
    parser.add_argument('--result', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_check:
        return run_check_here(args.run_check, args.quick, args.work, args.result)
    checks = [c for c in CHECKS if not args.only or c.name in args.only]
    if args.dry_run:
        return dry_run(checks, args.quick)
    missing = missing_modules()
    if 'torch' in missing:
        print('gpu_check: torch is not installed; nothing to check (--dry-run lists the checks)')
        return 2
    import torch
    if DEVICE == 'cuda' and not torch.cuda.is_available():
        print(f'gpu_check: no CUDA device visible to torch {torch.__version__} (torch.cuda.is_available() is '
              'False); nothing to check here (--dry-run lists the checks)')
        return 2
    problem = f'missing Python packages: {", ".join(missing)}' if missing else import_problem()
    if problem:
        print(f'gpu_check: {problem} (docs/GPU.md says how to bring the packages to an offline GPU machine)')
        return 3

    report = new_report(checks, args.quick, environment())
    os.makedirs(args.out, exist_ok=True)
    work = args.work or tempfile.mkdtemp(prefix='gpu_check_')
    os.makedirs(work, exist_ok=True)
    deadline = time.time() + TOTAL_BUDGET_S[args.quick]
    write_report(args.out, report)
    env = report['environment']
    print(f'gpu_check: {env.get("device")} (driver {env.get("driver")}), torch {env["torch"]}, '
          f'{"quick" if args.quick else "full"} mode, results in {args.out}', flush=True)
    with open(os.path.join(args.out, 'gpu_check.log'), 'w') as log:
        for check in checks:
            entry = report['checks'][check.name]
            budget = check.budget(args.quick)
            if check.run is None or budget == 0:
                entry.update(status='skipped', reason=check.skip_reason or 'not run in --quick mode', seconds=0)
            elif deadline - time.time() < MIN_CHECK_S:
                entry.update(status='skipped', reason='no time left in the total budget', seconds=0)
            else:
                entry['status'] = 'running'
                write_report(args.out, report)
                entry.update(run_check_process(check, args.quick, work, min(budget, deadline - time.time()), log))
            print(f'  {check.name:<17} {entry["status"]:<8} {entry.get("seconds", 0):>6} s  {entry["reason"]}',
                  flush=True)
            report['exit_status'] = exit_status(report)
            write_report(args.out, report)
    report['finished'] = True
    report['exit_status'] = exit_status(report)
    write_report(args.out, report)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    counts = summarize(report['checks'])
    print('gpu_check: ' + ', '.join(f'{n} {s}' for s, n in counts.items() if n) +
          f'; exit status {report["exit_status"]}; see {os.path.join(args.out, "gpu_check.md")}')
    return report['exit_status']


if __name__ == '__main__':
    sys.exit(main())
