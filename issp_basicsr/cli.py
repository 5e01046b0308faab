"""The ``basicsr`` command: one entry point, one sub-command per job, each imported only when used."""
import importlib
import sys

import yaml

# sub-command -> (module, one-line help)
COMMANDS = {
    'train': ('issp_basicsr.train', 'train a model: basicsr train -opt FILE [--auto_resume] [--launcher ...]'),
    'test': ('issp_basicsr.test', 'evaluate a model: basicsr test -opt FILE'),
    'datasets': ('issp_basicsr.data.prepare', 'build the sample set or prepare DIV2K / benchmark sets'),
    'report': ('issp_basicsr.report', 'figures and a summary table from experiments: basicsr report EXP... -o DIR'),
    'export': ('issp_basicsr.deploy.export', 'compress a checkpoint (sparse), restore it (--dense), or write ONNX'),
    'report-efficiency': ('issp_basicsr.deploy.efficiency', 'params, MACs, sizes, dense vs sparse latency: -opt FILE'),
}


def usage():
    lines = ['usage: basicsr COMMAND [ARGS]', '', 'commands:']
    lines += [f'  {name:<20}{help_}' for name, (_, help_) in COMMANDS.items()]
    lines += ['', "Run 'basicsr COMMAND -h' for the options of one command."]
    return '\n'.join(lines)


def user_errors():
    """Errors that mean bad input or a failed file operation (a missing folder, a full disk, no permission):
    reported as one line each, without a traceback."""
    from .errors import InputError
    return (InputError, OSError, yaml.YAMLError)


def error_lines(error):
    """The lines to print for ``error``: every problem of an option file (``OptionProblems.problems``), else the
    first line of the message; an OSError names its file."""
    problems = getattr(error, 'problems', None)
    if problems:
        return list(problems)
    if isinstance(error, OSError) and error.strerror:
        names = [n for n in (error.filename, error.filename2) if n is not None]
        return [f'{" -> ".join(map(str, names)) + ": " if names else ""}{error.strerror}']
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return [f'{mark.name}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {error.problem}']
    return [str(error).splitlines()[0] if str(error) else type(error).__name__]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f'basicsr: unknown command {command!r}\n\n{usage()}', file=sys.stderr)
        return 2
    import issp_basicsr  # noqa: F401  (BasicSR fixes and registrations, before any option is parsed)
    errors = user_errors()
    try:
        module = importlib.import_module(COMMANDS[command][0])
        return module.main(rest) or 0
    except errors as error:
        for line in error_lines(error):
            print(f'basicsr {command}: error: {line}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
