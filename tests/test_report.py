"""`basicsr report` and benchmarks/compare_methods.py: log and event parsing, figures, table, fair option files."""
import copy
import glob
import importlib.util
import os
import subprocess
import sys

import pytest
import yaml
from conftest import tiny_options, write_options

from issp_basicsr import cli
from issp_basicsr.report import load_experiment, parse_log
from issp_basicsr.sparsity import pruned_count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

SYNTHETIC_LOG = """\
2026-01-01 10:00:00,000 INFO: Sparsity: method issp, ratio 0.95, prune_iter 2000, 103 layers
  name: synthetic
2026-01-01 10:00:01,000 INFO: [synth..][epoch:  0, iter:     500, lr:(2.000e-04,)] [eta: 0:01:00, \
time (data): 0.250 (0.010)] l_pix: 5.0000e-02 sparsity/zeros: 0.0000e+00 sparsity/mask_change: 1.2500e-01 \
sparsity/grad_unimportant: 3.0000e-02 sparsity/grad_kept: 4.0000e-02 
2026-01-01 10:00:02,000 INFO: [synth..][epoch:  1, iter:   1,000, lr:(2.000e-04,1.000e-04,)] [eta: 0:00:30, \
time (data): 0.240 (0.020)] l_pix: 4.0000e-02 sparsity/zeros: 9.5000e-01 
2026-01-01 10:00:03,000 INFO: Validation Set5
\t # psnr: 28.1234\tBest: 28.1234 @ 1000 iter
\t # ssim: 0.8123\tBest: 0.8123 @ 1000 iter

2026-01-01 10:00:03,100 INFO: Validation Set5 @ 1000: psnr 28.1234 (bicubic 26.6900), ssim 0.8123 \
(bicubic 0.7736), sparsity 0.9500 (finetune stage)
2026-01-01 10:00:04,000 INFO: [synth..][epoch:  2, iter:   1,500, lr:(1.000e-04,)] l_pix: 3.0000e-02 
2026-01-01 10:00:05,000 INFO: Validation dense_only
\t # psnr: 25.5000\tBest: 25.5000 @ 1500 iter

2026-01-01 10:00:06,000 INFO: End of training. Time consumed: 0:10:00
2026-01-01 10:00:06,100 INFO: Final Set5: psnr 28.2000 (bicubic 26.6900), ssim 0.8200 (bicubic 0.7736)
2026-01-01 10:00:06,200 INFO: Final sparsity: 0.9501 of 880,000 prunable weights are exactly 0 (target 0.95)
"""


def test_parse_log_reads_training_validation_and_final_lines():
    series, final, info = parse_log(SYNTHETIC_LOG.splitlines(keepends=True))
    assert series['losses/l_pix'] == {500: 0.05, 1000: 0.04, 1500: 0.03}
    assert series['lr'] == {500: 2e-4, 1000: 2e-4, 1500: 1e-4}  # first group's lr
    assert series['sparsity/zeros'] == {500: 0.0, 1000: 0.95}
    assert series['sparsity/mask_change'] == {500: 0.125}
    assert series['sparsity/grad_unimportant'] == {500: 0.03}
    assert series['sparsity/grad_kept'] == {500: 0.04}
    assert series['time/iter'] == {500: 0.25, 1000: 0.24}
    assert series['time/data'] == {500: 0.01, 1000: 0.02}
    # the ISSPSRModel line names its iteration and supersedes the stock block before it
    assert series['metrics/Set5/psnr'] == {1000: 28.1234}
    assert series['metrics/Set5/psnr_bicubic'] == {1000: 26.69}
    assert series['metrics/Set5/ssim'] == {1000: 0.8123}
    assert series['metrics/Set5/ssim_bicubic'] == {1000: 0.7736}
    # a stock SRModel block alone is filed under the last logged training iteration
    assert series['metrics/dense_only/psnr'] == {1500: 25.5}
    assert final == {'Set5': {'psnr': (28.2, 26.69), 'ssim': (0.82, 0.7736)}}
    assert info == {'final_sparsity': 0.9501, 'train_time': '0:10:00'}
    assert not any(tag.startswith('sparsity/') and tag.endswith('stage') for tag in series)


def run_basicsr(args, cwd):
    return subprocess.run([sys.executable, '-m', 'issp_basicsr.cli'] + args, cwd=cwd, capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))


@pytest.fixture(scope='module')
def tiny_run(tiny_pairs, tmp_path_factory):
    """A real 20-iteration ISS-P run (mask frozen at 10, validation at 10 and 20) and a folder holding only a
    log without validation, as a run stopped early or trained without a val set leaves behind."""
    root = tmp_path_factory.mktemp('report_runs')
    opt = tiny_options(tiny_pairs, name='rep_issp', prune_iter=10)
    opt['train']['total_iter'] = 20
    opt['val']['val_freq'] = 10
    opt['val']['metrics']['ssim'] = {'type': 'calculate_ssim', 'crop_border': 4, 'test_y_channel': True}
    opt['logger'].update(print_freq=5, save_checkpoint_freq=20)
    result = run_basicsr(['train', '-opt', write_options(root / 'rep_issp.yml', opt)], root)
    assert result.returncode == 0, result.stderr[-3000:]
    bare = root / 'experiments' / 'bare_log'
    bare.mkdir()
    (bare / 'train_bare_log_20260101_100000.log').write_text(
        '2026-01-01 10:00:01,000 INFO: [bare_..][epoch:  0, iter:       5, lr:(2.000e-04,)] l_pix: 1.0000e-01 \n')
    return root, opt


def test_experiment_from_a_real_run_matches_log_events_and_checkpoint(tiny_run):
    root, opt = tiny_run
    experiment = load_experiment(str(root / 'experiments' / 'rep_issp'))
    assert experiment.method == 'issp' and experiment.ratio == 0.9 and experiment.prune_iter == 10
    assert any(source.endswith(os.path.join('tb_logger', 'rep_issp')) for source in experiment.sources)
    assert sorted(experiment.series['sparsity/zeros']) == [5, 10, 15, 20]
    assert experiment.iterations == 20
    assert sorted(experiment.series['metrics/tinyval/psnr']) == [10, 20]
    assert sorted(experiment.series['metrics/tinyval/ssim_bicubic']) == [10, 20]
    # events (full precision) and the log's rounded values agree
    log_series, final, info = parse_log(open(experiment.sources[0]))
    for tag in ('losses/l_pix', 'sparsity/grad_kept', 'metrics/tinyval/psnr'):
        for step, value in log_series[tag].items():
            assert experiment.series[tag][step] == pytest.approx(value, rel=1e-3), (tag, step)
    psnr, bicubic = experiment.final_metric('tinyval', 'psnr')
    assert (round(psnr, 4), round(bicubic, 4)) == final['tinyval']['psnr']
    # per-layer zeros of the final EMA weights: every Conv2d/Linear in network order, exactly ceil(0.9 n) each
    import torch
    params = torch.load(root / 'experiments' / 'rep_issp' / 'models' / 'net_g_latest.pth',
                        weights_only=True)['params_ema']
    from basicsr.archs.swinir_arch import SwinIR
    from issp_basicsr.sparsity import prunable_layers
    net = SwinIR(**{k: v for k, v in opt['network_g'].items() if k != 'type'})
    assert list(experiment.layer_sparsity) == [name for name, _ in prunable_layers(net, ())]
    for layer, fraction in experiment.layer_sparsity.items():
        n = params[f'{layer}.weight'].numel()
        assert fraction == pruned_count(0.9, n) / n, layer
    total = sum(params[f'{layer}.weight'].numel() for layer in experiment.layer_sparsity)
    zeros = sum(pruned_count(0.9, params[f'{layer}.weight'].numel()) for layer in experiment.layer_sparsity)
    assert experiment.checkpoint_sparsity == zeros / total
    assert experiment.sparsity == info['final_sparsity'] == pytest.approx(zeros / total, abs=1e-4)


@pytest.mark.slow
def test_report_command_writes_figures_table_and_notes(tiny_run, tmp_path, capsys):
    root, _ = tiny_run
    out = tmp_path / 'report'
    code = cli.main(['report', str(root / 'experiments' / 'rep_issp'), str(root / 'experiments' / 'bare_log'),
                     '-o', str(out), '--labels', 'ISS-P', 'bare'])
    assert code == 0
    expected = ['validation_tinyval.png', 'sparsity.png', 'layer_sparsity.png', 'mask_change.png',
                'grad_norms.png', 'loss.png']
    if load_experiment(str(root / 'experiments' / 'rep_issp')).series.get('sparsity/unimportant_abs_mean'):
        expected.append('residue.png')  # once the pruning core logs the residue scalars
    for name in expected:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000, name
    assert sorted(os.listdir(out)) == sorted(expected + ['summary.md'])
    summary = (out / 'summary.md').read_text()
    rows = [line for line in summary.splitlines() if line.startswith('| ')]
    header = [cell.strip() for cell in rows[0].strip('|').split('|')]
    assert header == ['experiment', 'method', 'ratio', 'iterations', 'tinyval PSNR', 'tinyval SSIM',
                      'tinyval bicubic PSNR', 'tinyval bicubic SSIM', 'sparsity', 'train time']
    issp = dict(zip(header, (cell.strip() for cell in rows[1].strip('|').split('|'))))
    experiment = load_experiment(str(root / 'experiments' / 'rep_issp'))
    psnr, bicubic = experiment.final_metric('tinyval', 'psnr')
    assert issp['experiment'] == 'rep_issp' and issp['method'] == 'issp' and issp['ratio'] == '0.9'
    assert issp['iterations'] == '20' and issp['tinyval PSNR'] == f'{psnr:.2f}'
    assert issp['tinyval bicubic PSNR'] == f'{bicubic:.2f}' and issp['sparsity'] == f'{experiment.sparsity:.4f}'
    bare = dict(zip(header, (cell.strip() for cell in rows[2].strip('|').split('|'))))
    assert bare['experiment'] == 'bare_log' and bare['iterations'] == '5' and bare['tinyval PSNR'] == '–'
    # missing pieces are reported, not fatal
    assert 'validation_tinyval.png: bare_log has no validation on tinyval; left out' in summary
    assert 'layer_sparsity.png: bare_log has no readable checkpoint; left out' in summary
    printed = capsys.readouterr().out
    assert printed.startswith(rows[0]) and f'wrote {out / "summary.md"}' in printed


def test_report_of_experiments_without_validation_skips_that_figure(tiny_run, tmp_path):
    root, _ = tiny_run
    out = tmp_path / 'bare'
    assert cli.main(['report', str(root / 'experiments' / 'bare_log'), '-o', str(out)]) == 0
    assert sorted(os.listdir(out)) == ['loss.png', 'summary.md']
    summary = (out / 'summary.md').read_text()
    assert 'validation: no experiment has validation metrics; skipped' in summary
    assert 'sparsity.png: no experiment logged sparsity/zeros; skipped' in summary


def test_report_errors_are_one_line(tmp_path, capsys):
    assert cli.main(['report', str(tmp_path / 'missing'), '-o', str(tmp_path / 'out')]) == 2
    expected = f'basicsr report: error: {tmp_path / "missing"}: no such experiment folder'
    assert capsys.readouterr().err.strip() == expected
    (tmp_path / 'empty').mkdir()
    assert cli.main(['report', str(tmp_path / 'empty'), '-o', str(tmp_path / 'out')]) == 2
    assert 'no training log (train_*.log), TensorBoard events or checkpoint found' in capsys.readouterr().err


# ------------------------------------------------------------------------------------ compare_methods
@pytest.fixture(scope='module')
def compare():
    spec = importlib.util.spec_from_file_location('compare_methods', os.path.join(ROOT, 'benchmarks',
                                                                                  'compare_methods.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_option_files_differ_only_in_sparsity_block_name_and_seed(compare, tiny_pairs, tmp_path):
    base = tiny_options(tiny_pairs, name='base', prune_iter=100, hold_lr_during_pruning=True)
    base['train'].update(total_iter=300, scheduler={'type': 'MultiStepLR', 'milestones': [150, 250], 'gamma': 0.5})
    base_file = write_options(tmp_path / 'base.yml', base)
    out = tmp_path / 'cmp'
    methods = ['dense', 'iht', 'issr', 'l1', 'scratch', 'issp']
    assert compare.main(['--base', base_file, '--iters', '30', '--methods', *methods, '--ratios', '0.9', '0.99',
                         '--seeds', '0', '1', '--out', str(out), '--dry-run']) == 0
    files = sorted((out / 'options').iterdir())
    options = {path.stem: yaml.safe_load(path.read_text()) for path in files}
    # dense once per seed, every other method once per ratio and seed
    assert len(options) == 2 * (1 + 5 * 2)
    assert 'cmp_dense_s1' in options and 'cmp_issp_r0.99_s0' in options
    stripped = []
    for name, opt in options.items():
        assert opt['name'] == name
        block = opt['train'].pop('sparsity')
        method = name.split('_')[1]
        assert block['method'] == method
        assert block['prune_iter'] == 10 and block['hold_lr_during_pruning'] is True  # same stage for all
        if method != 'dense':
            assert block['ratio'] == float(name.split('_r')[1].split('_')[0])
        if method == 'issp':
            assert block['alpha'] == 0.95
        assert opt['manual_seed'] == int(name[-1])
        stripped.append({k: v for k, v in opt.items() if k not in ('name', 'manual_seed')})
    assert all(s == stripped[0] for s in stripped)
    common = stripped[0]
    assert common['train']['total_iter'] == 30 and common['train']['scheduler']['milestones'] == [15, 25]
    assert common['val']['metrics'] == {
        'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True},
        'ssim': {'type': 'calculate_ssim', 'crop_border': 4, 'test_y_channel': True},
    }
    assert os.path.isabs(common['datasets']['train']['dataroot_gt'])


@pytest.mark.slow
def test_compare_methods_trains_and_summarises(compare, tiny_pairs, tmp_path, monkeypatch):
    base = tiny_options(tiny_pairs, name='base', prune_iter=5)
    base['train']['total_iter'] = 10
    base_file = write_options(tmp_path / 'base.yml', base)
    out = tmp_path / 'cmp'
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    args = ['--base', base_file, '--methods', 'iht', 'issp', '--ratios', '0.9', '--seeds', '0', '--out', str(out),
            '--set', 'val:val_freq=1000']  # validate once, at the end
    assert compare.main(args) == 0
    results = (out / 'results.md').read_text()
    rows = {line.split('|')[1].strip(): line for line in results.splitlines() if line.startswith('| ')}
    assert {'bicubic', 'iht', 'issp'} <= set(rows)
    assert 'ratio 0.9: best PSNR' in results
    for name in ('cmp_iht_r0.9_s0', 'cmp_issp_r0.9_s0'):
        experiment = load_experiment(str(out / 'experiments' / name))
        assert experiment.iterations == 10 and experiment.sparsity == pytest.approx(0.9, abs=0.01)
    assert (out / 'report_r0.9' / 'validation_tinyval.png').read_bytes()[:8] == PNG_SIGNATURE
    # a second invocation skips the finished runs
    before = sorted(os.listdir(out / 'experiments'))
    assert compare.main(args) == 0
    assert sorted(os.listdir(out / 'experiments')) == before
    # other options under the same names: the old runs neither count nor resume, they are trained anew
    first_log = glob.glob(str(out / 'experiments' / 'cmp_issp_r0.9_s0' / 'train_*.log'))
    assert compare.main(args + ['--set', 'train:optim_g:lr=0.001']) == 0
    after = sorted(os.listdir(out / 'experiments'))
    assert len([name for name in after if '_archived_' in name]) == 2 and set(before) < set(after)
    experiment = load_experiment(str(out / 'experiments' / 'cmp_issp_r0.9_s0'))
    assert experiment.iterations == 10 and experiment.options['train']['optim_g']['lr'] == 0.001
    assert not set(glob.glob(str(out / 'experiments' / 'cmp_issp_r0.9_s0' / 'train_*.log'))) & set(first_log)


def test_fairness_helper_keeps_copy_of_base(compare, tiny_pairs):
    base = tiny_options(tiny_pairs)
    snapshot = copy.deepcopy(base)
    compare.plan_runs(compare.common_options(base, iters=10), ['issp', 'iht'], [0.95], [0])
    assert base == snapshot


def test_overrides_apply_before_the_budget_and_paths_become_absolute(compare, tiny_pairs):
    base = tiny_options(tiny_pairs)
    common = compare.common_options(base, iters=20, overrides=[
        'datasets:train:dataroot_lq=relative/lq', 'val:val_freq=7', 'train:scheduler:milestones=[10]'],
        base_dir='/data/root')
    assert common['datasets']['train']['dataroot_lq'] == '/data/root/relative/lq'
    assert common['val']['val_freq'] == 7  # an explicit override wins over the budget's frequency
    assert common['train']['total_iter'] == 20


def fake_results(scores, dataset='set', bicubic=28.0):
    """{(method, ratio): [Experiment, ...]} with final PSNRs ``scores[(method, ratio)]``, one per seed."""
    from issp_basicsr.report import Experiment
    return {key: [Experiment(name=f'{key[0]}_{i}', path='.', final={dataset: {'psnr': (v, bicubic)}})
                  for i, v in enumerate(values)] for key, values in scores.items()}


def test_verdict_says_when_a_margin_is_inside_the_seed_spread(compare):
    results = fake_results({
        ('dense', None): [33.0, 33.2],
        ('issp', 0.9): [30.0, 30.4], ('iht', 0.9): [30.0, 30.2],  # margin 0.10, stds 0.28 / 0.14: inside
        ('issp', 0.99): [28.0, 28.1], ('iht', 0.99): [29.0, 29.3],  # margin -1.10, stds 0.07 / 0.21: outside
        ('issp', 0.95): [29.0, 29.2], ('iht', 0.95): [28.9, 29.1],  # margin 0.10, stds 0.14 / 0.14: inside
    })
    lines = compare.verdict(results, ['dense', 'iht', 'issp'], [0.9, 0.95, 0.99], 'set')
    assert lines == [
        'ratio 0.9: best PSNR issp (30.20 dB); ISS-P leads the best other method (iht) by 0.10 dB, '
        'inside the seed spread (larger std 0.28 dB)',
        'ratio 0.95: best PSNR issp (29.10 dB); ISS-P leads the best other method (iht) by 0.10 dB, '
        'inside the seed spread (larger std 0.14 dB)',
        'ratio 0.99: best PSNR iht (29.15 dB); ISS-P trails the best other method (iht) by 1.10 dB, '
        'outside the seed spread (larger std 0.21 dB)',
        'dense model: 33.10 dB, +5.10 dB over bicubic (28.00 dB)',
    ]


def test_spread_note_boundary_and_single_seed(compare):
    assert compare.spread_note(0.2, 0.2, 0.1) == 'inside the seed spread (larger std 0.20 dB)'  # |margin| == std
    assert compare.spread_note(-0.21, 0.05, 0.2) == 'outside the seed spread (larger std 0.20 dB)'
    assert compare.spread_note(-0.1, None, 0.3) == 'inside the seed spread (larger std 0.30 dB)'
    assert compare.spread_note(0.5, None, None) == 'one seed each: no spread to compare with'
    results = fake_results({('issp', 0.9): [30.5], ('iht', 0.9): [30.0]})
    assert compare.verdict(results, ['iht', 'issp'], [0.9], 'set') == [
        'ratio 0.9: best PSNR issp (30.50 dB); ISS-P leads the best other method (iht) by 0.50 dB, '
        'one seed each: no spread to compare with']


# ------------------------------------------------------------------------------------------- residue figure
def fake_run(root, name, method='issp', lr=2e-4, alpha=0.95, residue=True, prune_iter=40):
    """An experiment folder as BasicSR leaves it: the option file and a training log every 10 iterations up to
    60; with ``residue`` the log lines carry the unimportant set's mean and max |w| (mean = iteration·1e-5,
    max = 3x the mean)."""
    folder = root / 'experiments' / name
    folder.mkdir(parents=True)
    sparsity = {'method': method, 'ratio': 0.99, 'prune_iter': prune_iter}
    if method == 'issp':
        sparsity['alpha'] = alpha
    options = {'name': name, 'train': {'optim_g': {'type': 'Adam', 'lr': lr}, 'total_iter': 60,
                                       'sparsity': sparsity}}
    (folder / f'{name}.yml').write_text(yaml.safe_dump(options))
    lines = []
    for iteration in range(10, 70, 10):
        scalars = f'l_pix: {0.1 / iteration:.4e} sparsity/zeros: 0.0000e+00 '
        if residue:
            scalars += f'sparsity/unimportant_abs_mean: {iteration * 1e-5:.4e} ' \
                       f'sparsity/unimportant_abs_max: {iteration * 3e-5:.4e} '
        lines.append(f'2026-01-01 10:00:{iteration // 10:02d},000 INFO: [{name[:5]}..][epoch:  0, iter: '
                     f'{iteration:7,d}, lr:({lr:.3e},)] [eta: 0:01:00, time (data): 0.100 (0.010)] {scalars}')
    (folder / f'train_{name}_20260101_100000.log').write_text('\n'.join(lines) + '\n')
    return str(folder)


def test_residue_figure_draws_logged_runs_with_their_reference_and_skips_the_others(tmp_path):
    from issp_basicsr.report.figures import residue_figure, residue_reference, residue_summary
    paths = [fake_run(tmp_path, 'a95_lr2e-4'), fake_run(tmp_path, 'a5_lr2e-3', lr=2e-3, alpha=0.5),
             fake_run(tmp_path, 'iht', method='iht'), fake_run(tmp_path, 'old_core', residue=False)]
    experiments = [load_experiment(p, read_weights=False) for p in paths]
    assert experiments[0].series['sparsity/unimportant_abs_max'][40] == pytest.approx(1.2e-3)
    assert residue_reference(experiments[0]) == pytest.approx((0.95, 2e-4, 0.95 * 2e-4 / 0.05))
    assert residue_reference(experiments[1]) == pytest.approx((0.5, 2e-3, 2e-3))
    assert residue_reference(experiments[2]) == (None, None, None)
    out = tmp_path / 'fig'
    out.mkdir()
    labels = {e.name: e.name for e in experiments}
    path, notes = residue_figure(experiments, str(out), labels)
    assert path == str(out / 'residue.png')
    data = (out / 'residue.png').read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    assert notes == [
        'residue.png: old_core logged no sparsity/unimportant_abs_mean / sparsity/unimportant_abs_max; left out',
        'residue.png: iht is not an ISS-P run with alpha < 1 and a numeric lr; no reference line']
    # the values at the last log of the pruning stage (iteration 40), not of fine-tuning (50, 60)
    rows = residue_summary(experiments)
    assert [row['name'] for row in rows] == ['a95_lr2e-4', 'a5_lr2e-3', 'iht']
    assert rows[0]['mean'] == pytest.approx(4e-4) and rows[0]['max'] == pytest.approx(1.2e-3)
    assert rows[0]['reference'] == pytest.approx(3.8e-3) and rows[2]['reference'] is None


def test_residue_figure_is_skipped_with_a_note_without_the_scalars(tmp_path):
    from issp_basicsr.report import make_report
    from issp_basicsr.report.figures import residue_figure
    old = fake_run(tmp_path, 'old_core', residue=False)
    path, notes = residue_figure([load_experiment(old, read_weights=False)], str(tmp_path), {'old_core': 'x'})
    assert path is None
    assert notes == ['residue.png: no experiment logged sparsity/unimportant_abs_mean or '
                     'sparsity/unimportant_abs_max (the pruning core logs them during the pruning stage); skipped']
    # the report draws it only when some experiment has the scalars
    _, figures, _, _ = make_report([old], str(tmp_path / 'without'), quiet=True, read_weights=False)
    assert 'residue.png' not in map(os.path.basename, figures)
    new = fake_run(tmp_path, 'new_core')
    _, figures, _, _ = make_report([old, new], str(tmp_path / 'with'), quiet=True, read_weights=False)
    assert str(tmp_path / 'with' / 'residue.png') in figures


@pytest.fixture(scope='module')
def residue():
    spec = importlib.util.spec_from_file_location('residue', os.path.join(ROOT, 'benchmarks', 'residue.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_residue_runs_differ_only_in_lr_alpha_and_name(residue, tiny_pairs, tmp_path):
    base = tiny_options(tiny_pairs, name='base', prune_iter=100, hold_lr_during_pruning=True)
    base['train'].update(total_iter=300, scheduler={'type': 'MultiStepLR', 'milestones': [150, 250], 'gamma': 0.5})
    out = tmp_path / 'res'
    assert residue.main(['--base', write_options(tmp_path / 'base.yml', base), '--iters', '30', '--out', str(out),
                         '--dry-run']) == 0
    options = {path.stem: yaml.safe_load(path.read_text()) for path in sorted((out / 'options').iterdir())}
    expected = {f'res_issp_r0.99_lr{lr}_a{alpha}_s0': (float(lr), float(alpha))
                for lr in ('0.0002', '0.002') for alpha in ('0.5', '0.8', '0.95')}
    assert set(options) == set(expected)
    stripped = []
    for name, opt in options.items():
        lr, alpha = expected[name]
        assert opt['name'] == name and opt['train']['optim_g']['lr'] == lr
        block = opt['train'].pop('sparsity')
        assert (block['method'], block['ratio'], block['alpha'], block['prune_iter']) == ('issp', 0.99, alpha, 10)
        assert opt['val']['val_freq'] == 30 and opt['logger']['print_freq'] == 1
        opt['train']['optim_g'].pop('lr')
        stripped.append({k: v for k, v in opt.items() if k != 'name'})
    assert all(s == stripped[0] for s in stripped)
    with pytest.raises(SystemExit, match='^residue: --alphas must lie in \\[0, 1\\), got 1$'):
        residue.main(['--alphas', '1', '--dry-run', '--out', str(tmp_path / 'bad')])


@pytest.mark.slow
def test_residue_trains_and_reports(residue, tiny_pairs, tmp_path, monkeypatch):
    base = tiny_options(tiny_pairs, name='base', prune_iter=4)
    base['train']['total_iter'] = 8
    out = tmp_path / 'res'
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    args = ['--base', write_options(tmp_path / 'base.yml', base), '--iters', '8', '--lrs', '2e-4', '--alphas', '0.5',
            '0.95', '--out', str(out)]
    assert residue.main(args) == 0
    results = (out / 'results.md').read_text()
    rows = [line for line in results.splitlines() if line.startswith('| res_issp')]
    assert [row.split('|')[1].strip() for row in rows] == ['res_issp_r0.99_lr0.0002_a0.5_s0',
                                                           'res_issp_r0.99_lr0.0002_a0.95_s0']
    cells = [cell.strip() for cell in rows[1].strip('|').split('|')]
    assert cells[1:4] == ['0.0002', '0.95', '3.80e-03'] and cells[7] != '–'  # the final PSNR is there
    experiment = load_experiment(str(out / 'experiments' / 'res_issp_r0.99_lr0.0002_a0.95_s0'), read_weights=False)
    if experiment.series.get('sparsity/unimportant_abs_mean'):  # the pruning core logs the residue
        assert (out / 'residue.png').read_bytes()[:8] == PNG_SIGNATURE and '![residue](residue.png)' in results
        assert cells[4] != '–' and cells[5] != '–'
    else:  # a core without the scalars: the figure is skipped with a note, the table still written
        assert not (out / 'residue.png').exists() and cells[4:7] == ['–', '–', '–']
        assert '- note: residue.png: no experiment logged sparsity/unimportant_abs_mean' in results
    before = sorted(os.listdir(out / 'experiments'))
    assert residue.main(args) == 0 and sorted(os.listdir(out / 'experiments')) == before  # finished: skipped
