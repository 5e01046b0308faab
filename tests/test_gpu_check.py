"""benchmarks/gpu_check.py on a CPU: the dry run, the no-CUDA exit, the report writer, the time limits, and the
collection of the CUDA tests it runs on a GPU machine."""
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'gpu_check.py')
CUDA_TESTS = 36  # tests/test_cuda.py: 20 model cases, 12 tie cases, 2 freeze, 2 checksum


def load_script():
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = load_script()


def run(*args, **env):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, **env), timeout=120)


def test_dry_run_lists_every_check_with_its_limit():
    result = run('--dry-run')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ('gpu_check: 9 checks, full mode, at most 345 s in all (5.8 min); each runs in its own process '
                        'with its own limit')
    for check in gpu_check.CHECKS:
        row = next(line for line in lines if line.split()[:1] == [check.name])
        assert ('skipped' if check.run is None else f'limit {check.budget_s:>3} s') in row, row
        assert ('gating' if check.gates else 'report') in row, row
    assert 'SwinIR-light batch 32 LR 64, EDSR-L batch 16 LR 48, median of 20' in result.stdout
    assert 'the slim (channel-pruned) model does not exist yet' in result.stdout
    assert 'not offered by the plugin in this round' in result.stdout


def test_quick_dry_run_fits_two_minutes_and_drops_the_training_runs():
    result = run('--dry-run', '--quick')
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('gpu_check: 9 checks, quick mode, at most 110 s in all (1.8 min)')
    throughput = next(line for line in result.stdout.splitlines() if line.startswith('  train_throughput'))
    assert 'skipped' in throughput
    assert 'SwinIR-light batch 8 LR 48, EDSR-L batch 4 LR 32, median of 10' in result.stdout
    assert gpu_check.TOTAL_BUDGET_S[True] < 120 and gpu_check.TOTAL_BUDGET_S[False] < 360


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA: the script would run the checks')
def test_without_cuda_one_line_and_exit_2(tmp_path):
    result = run('--out', str(tmp_path / 'out'), '--quick')
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f'gpu_check: no CUDA device visible to torch {torch.__version__} (torch.cuda.is_available() is False); '
        'nothing to check here (--dry-run lists the checks)']
    assert not (tmp_path / 'out').exists()  # nothing written before the checks can run


# ------------------------------------------------------------------------------------------ the report
ENVIRONMENT = {'device': 'NVIDIA H200', 'driver': '580.159.03', 'cuda': '13.0', 'torch': '2.11.0+cu130',
               'python': '3.12.3', 'cpus': 16}


def fake_report(statuses):
    """A report whose checks have ``statuses`` (name -> status), with a few figures."""
    report = gpu_check.new_report(gpu_check.CHECKS, False, ENVIRONMENT)
    for name, status in statuses.items():
        report['checks'][name].update(status=status, reason=f'{name} {status}', seconds=1.5)
    report['checks']['step_cost']['figures'] = {
        'SwinIR-light x4': {'train_iteration_ms_median': 61.25, 'step_share_percent': 0.4213,
                            'target_step_under_1_percent': True}}
    report['checks']['cuda_tests']['log_tail'] = 'E   AssertionError: after step 2: layer conv_first: 3 weights'
    return report


def test_report_writer_writes_json_and_markdown_with_statuses_and_figures(tmp_path):
    report = fake_report({'cuda_tests': 'fail', 'no_host_syncs': 'pass', 'step_cost': 'pass',
                          'mixed_precision': 'skipped', 'inference_csr': 'error'})
    report['exit_status'] = gpu_check.exit_status(report)
    gpu_check.write_report(str(tmp_path), report)
    assert sorted(os.listdir(tmp_path)) == ['gpu_check.json', 'gpu_check.md']
    assert json.loads((tmp_path / 'gpu_check.json').read_text()) == report
    md = (tmp_path / 'gpu_check.md').read_text()
    assert ('Device: NVIDIA H200, driver 580.159.03, CUDA 13.0, torch 2.11.0+cu130, Python 3.12.3, 16 CPUs. '
            'Mode: full. Exit status: 1.') in md
    assert 'Result: 2 pass, 1 fail, 1 error, 1 skipped, 4 not run (the run had not finished' in md
    assert '| cuda_tests | fail | yes | 1.5 | cuda_tests fail |' in md
    assert '| inference_csr | error | no | 1.5 | inference_csr error |' in md
    assert '| train_throughput | not run | no | - |  |' in md
    assert ('- SwinIR-light x4: train_iteration_ms_median 61.25, step_share_percent 0.4213, '
            'target_step_under_1_percent True') in md
    assert 'E   AssertionError: after step 2: layer conv_first: 3 weights' in md


@pytest.mark.parametrize('statuses, expected', [
    ({name: 'pass' for name in gpu_check.CHECK_NAMES}, 0),
    ({'cuda_tests': 'fail'}, 1),  # a correctness check found a wrong result
    ({'torchrun_nccl': 'error'}, 1),  # a correctness check crashed or timed out
    ({'inference_2to4': 'fail', 'step_cost': 'pass'}, 1),
    ({'step_cost': 'error', 'train_throughput': 'fail', 'inference_csr': 'error'}, 0),  # reported, not gating
    ({'mixed_precision': 'skipped', 'cuda_tests': 'skipped'}, 0),
])
def test_exit_status_is_1_when_a_gating_check_fails_or_errors(statuses, expected):
    assert gpu_check.exit_status(fake_report(statuses)) == expected


def test_gating_checks_are_the_correctness_checks():
    gating = [check.name for check in gpu_check.CHECKS if check.gates]
    assert gating == ['cuda_tests', 'no_host_syncs', 'torchrun_nccl', 'mixed_precision', 'inference_2to4']


def test_main_writes_the_report_of_every_selected_check(tmp_path, monkeypatch):
    """The loop and the report without a GPU: two checks that are always skipped, in the development mode."""
    monkeypatch.setattr(gpu_check, 'DEVICE', 'cpu')
    out = tmp_path / 'out'
    status = gpu_check.main(['--out', str(out), '--only', 'mixed_precision', 'inference_slim',
                             '--work', str(tmp_path / 'work')])
    assert status == 0
    report = json.loads((out / 'gpu_check.json').read_text())
    assert report['finished'] and report['exit_status'] == 0
    assert list(report['checks']) == ['mixed_precision', 'inference_slim']
    assert report['checks']['inference_slim'] == {
        'title': 'inference: slim (channel-pruned) model', 'gates': False, 'sizes': '-', 'budget_s': 0,
        'status': 'skipped', 'reason': 'the slim (channel-pruned) model does not exist yet', 'seconds': 0}
    assert (out / 'gpu_check.log').exists() and (out / 'gpu_check.md').exists()


# ------------------------------------------------------------------------------------ the time limit
def test_a_check_past_its_limit_is_killed_with_everything_it_started(tmp_path):
    """The child and a grandchild it launched both sleep; the limit kills both and keeps the figures so far."""
    check = next(c for c in gpu_check.CHECKS if c.name == 'step_cost')
    (tmp_path / 'step_cost.result.json.partial').write_text(json.dumps({'SwinIR-light x4': {'batch': 32}}))
    pid_file = tmp_path / 'grandchild.pid'
    code = ('import subprocess, sys, time\n'
            f'p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])\n'
            f'open({str(pid_file)!r}, "w").write(str(p.pid))\n'
            'print("started", flush=True)\n'
            'time.sleep(60)\n')
    with open(tmp_path / 'log', 'w') as log:
        start = time.time()
        result = gpu_check.run_check_process(check, False, str(tmp_path), 3, log, cmd=[sys.executable, '-c', code])
    assert time.time() - start < 30
    assert result['status'] == 'error' and result['reason'] == 'timed out after 3 s (killed)'
    assert result['figures'] == {'SwinIR-light x4': {'batch': 32}}
    assert 'started' in result['log_tail'] and 'started' in (tmp_path / 'log').read_text()
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # killed with its process group (a zombie at most until init reaps it)
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        with open(f'/proc/{grandchild}/stat') as f:
            if f.read().split(') ')[1].startswith('Z'):
                break
        time.sleep(0.1)
    else:
        pytest.fail(f'the grandchild {grandchild} is still running')


def test_a_check_that_dies_without_a_result_is_an_error(tmp_path):
    check = next(c for c in gpu_check.CHECKS if c.name == 'cuda_tests')
    with open(tmp_path / 'log', 'w') as log:
        result = gpu_check.run_check_process(check, False, str(tmp_path), 30, log,
                                             cmd=[sys.executable, '-c', 'import sys; print("boom"); sys.exit(7)'])
    assert result['status'] == 'error'
    assert result['reason'] == 'the check process exited with 7 without a result: boom'


def test_log_throughput_times_basicsr_progress_lines():
    log = '\n'.join([
        '2026-12-02 18:49:52,659 INFO: Start training from epoch: 0, iter: 0',
        '2026-12-02 18:49:53,000 INFO: [throu..][epoch:  0, iter:      10, lr:(2.000e-04,)] [eta: 0:00:00, time',
        '2026-12-02 18:49:54,000 INFO: [throu..][epoch:  0, iter:      20, lr:(2.000e-04,)] [eta: 0:00:00, time',
        '2026-12-02 18:49:54,500 INFO: [throu..][epoch:  0, iter:      30, lr:(2.000e-04,)] [eta: 0:00:00, time',
        '2026-12-02 18:49:56,500 INFO: [throu..][epoch:  1, iter:   1,020, lr:(2.000e-04,)] [eta: 0:00:00, time',
    ])
    assert gpu_check.log_throughput(log, skip_before=20) == pytest.approx(1000 / 2.5)
    assert gpu_check.log_throughput(log, skip_before=10) == pytest.approx(1010 / 3.5)
    assert gpu_check.log_throughput(log, skip_before=1021) is None


# ------------------------------------------------------------------------------------- the CUDA tests
@pytest.mark.slow
def test_pytest_collects_the_cuda_tests_and_a_cpu_run_skips_them():
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    collect = subprocess.run([sys.executable, '-m', 'pytest', '-m', 'cuda', '--co', '-q', 'tests/test_cuda.py',
                              '-p', 'no:cacheprovider'], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert collect.returncode == 0, collect.stdout[-2000:]
    ids = [line for line in collect.stdout.splitlines() if line.startswith('tests/test_cuda.py::')]
    assert len(ids) == CUDA_TESTS
    for case in ('swinir-issp', 'edsr-scratch', 'edsr-dense', 'swinir-issp-global', 'edsr-issp-2:4',
                 'swinir-iht-global-2:4', 'bf16-global-2:4'):
        assert any(f'[{case}]' in i for i in ids), case
    if torch.cuda.is_available():
        return
    ran = subprocess.run([sys.executable, '-m', 'pytest', '-m', 'cuda', '-q', '-rs', 'tests/test_cuda.py',
                          '-p', 'no:cacheprovider'], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert ran.returncode == 0, ran.stdout[-2000:]
    assert f'{CUDA_TESTS} skipped' in ran.stdout
    assert 'needs a CUDA GPU (run benchmarks/gpu_check.py on a GPU machine)' in ran.stdout


def test_a_package_that_does_not_import_stops_the_run_with_exit_3(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, 'DEVICE', 'cpu')
    assert gpu_check.import_problem() is None  # here everything imports
    monkeypatch.setattr(gpu_check, 'import_problem', lambda: "ModuleNotFoundError: No module named 'distutils'")
    assert gpu_check.main(['--out', str(tmp_path / 'out')]) == 3
    assert capsys.readouterr().out.splitlines() == [
        "gpu_check: ModuleNotFoundError: No module named 'distutils' (docs/GPU.md says how to bring the packages "
        'to an offline GPU machine)']
    assert not (tmp_path / 'out').exists()
    monkeypatch.setattr(gpu_check, 'REQUIRED_MODULES', ('torch', 'no_such_module_xyz'))
    assert gpu_check.main(['--out', str(tmp_path / 'out')]) == 3
    assert 'missing Python packages: no_such_module_xyz' in capsys.readouterr().out
