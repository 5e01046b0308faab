"""The documentation as a reader uses it: the plain-PyTorch example runs, links resolve, and every command shown is
either run by a test (named here) or marked with what it needs (``# needs: ...``), and names files and flags that
exist."""
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / 'README.md', ROOT / 'datasets' / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))

# commands shown in the docs -> the test that runs them (the same command, or its in-process equivalent)
RUN_BY_TESTS = {
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]"': '.ci/run',
    '. .venv/bin/activate && python -m pytest -q tests': '.ci/run',
    'basicsr datasets sample': 'tests/test_data.py::test_sample_is_idempotent_and_force_rebuilds',
    'python options/methods/generate.py --check':
        'tests/test_methods.py::test_method_option_files_are_generated_and_up_to_date',
}


def fenced(page, languages):
    text = page.read_text()
    return re.findall(r'```(?:' + '|'.join(languages) + r')\n(.*?)```', text, re.S)


def commands(page):
    """Every command line of the page's shell blocks, continuation lines joined, comments kept apart."""
    found = []
    for block in fenced(page, ('bash', 'sh', 'shell')):
        for line in block.replace('\\\n', ' ').splitlines():
            if line.strip() and not line.strip().startswith('#'):
                command, _, comment = line.partition(' #')
                found.append((' '.join(command.split()), comment.strip()))
    return found


ALL_COMMANDS = [(page.relative_to(ROOT).as_posix(), command, comment)
                for page in PAGES for command, comment in commands(page)]


@pytest.mark.slow
def test_the_plain_pytorch_example_runs(tmp_path):
    blocks = fenced(ROOT / 'docs' / 'PlainPyTorch.md', ('python', ))
    result = subprocess.run([sys.executable, '-c', blocks[0]], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'sparse_state.pth').is_file()
    assert result.stdout.splitlines()[-1].startswith("30 finetune {'sparsity/zeros': 0.9")


def test_relative_links_resolve():
    for page in PAGES:
        for target in re.findall(r'\]\(([^)#:]+)(?:#[^)]*)?\)', page.read_text()):
            assert (page.parent / target).exists(), f'{page.relative_to(ROOT)} links to missing {target}'


def test_the_readme_stays_short():
    assert len((ROOT / 'README.md').read_text().splitlines()) <= 250


@pytest.mark.parametrize('page,command,comment', ALL_COMMANDS, ids=[f'{p}:{c[:40]}' for p, c, _ in ALL_COMMANDS])
def test_every_command_is_run_by_a_test_or_says_what_it_needs(page, command, comment):
    if command in RUN_BY_TESTS:
        where = RUN_BY_TESTS[command]
        path, _, name = where.partition('::')
        assert (ROOT / path).is_file() and (not name or f'def {name}(' in (ROOT / path).read_text()), where
    else:
        assert comment.startswith('needs:'), f'{page}: `{command}` is run by no test: add it to RUN_BY_TESTS or ' \
                                             'mark it `# needs: ...`'


def doc_words(command):
    """The command's parts, one ``&&`` step at a time, placeholders (``[...]``, ``<...>``) dropped."""
    for step in command.split('&&'):
        step = re.sub(r'\[[^\]]*\]|<[^>]*>|\$\([^)]*\)', ' ', step)
        yield shlex.split(step)


def program_and_flags(words):
    """(the program a ``basicsr``/``python`` step runs as an argv for --help, its flags) or None."""
    while words and ('=' in words[0] and not words[0].startswith('-')):
        words = words[1:]  # VAR=value prefixes
    if len(words) >= 2 and words[0] == 'basicsr':
        command = words[1:3] if words[1] == 'datasets' and len(words) > 2 else words[1:2]  # datasets has its own
        return ['-m', 'issp_basicsr.cli', *command], [w.split('=')[0] for w in words[2:] if w.startswith('-')]
    if len(words) >= 2 and words[0] in ('python', 'python3') and words[1].endswith('.py'):
        return [words[1]], [w.split('=')[0] for w in words[2:] if w.startswith('-')]
    return None


@pytest.mark.slow
def test_files_and_flags_named_in_commands_exist():
    helps = {}
    for page, command, _ in ALL_COMMANDS:
        for words in doc_words(command):
            for flag, value in zip(words, words[1:]):
                if flag == '-opt' and value.startswith('options/'):
                    assert (ROOT / value).is_file(), f'{page}: `{command}` names a missing {value}'
            found = program_and_flags(words)
            if found is None:
                continue
            argv, flags = found
            if argv[0].endswith('.py'):
                assert (ROOT / argv[0]).is_file(), f'{page}: `{command}` runs a missing {argv[0]}'
            key = tuple(argv)
            if key not in helps:
                result = subprocess.run([sys.executable, *argv, '--help'], cwd=ROOT, capture_output=True, text=True,
                                        timeout=120)
                helps[key] = result.stdout + result.stderr
            for flag in flags:
                assert re.search(rf'(?<![\w-]){re.escape(flag)}(?![\w-])', helps[key]), \
                    f'{page}: `{command}` uses {flag}, which `{" ".join(argv)} --help` does not list'
