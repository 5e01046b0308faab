"""Crash-safe checkpoint files: atomic writes, validated weights-only reads, and the choice of the state to resume.

A BasicSR run writes ``models/net_g_<iter>.pth`` and then ``training_states/<iter>.state`` at every checkpoint.
Each file is written to a temporary file in the same folder, fsynced and renamed over its final name, so a process
killed at any moment leaves every earlier file complete. Reads use ``weights_only=True`` (no code runs from a
checkpoint) and turn every failure into one :class:`OptionError` line that names the file.
"""
import os
import pickle
import re
import tempfile
import zipfile

import torch
from basicsr.utils import check_resume, scandir

from .errors import OptionError


def _umask():
    """The process's umask: from /proc where Linux shows it, else by setting it and straight back (the only
    portable way to read it)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save(obj, path):
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace``: readers and resumed runs see
    the previous file or the complete new one, never a partial one. A kill mid-write leaves a hidden ``.*.tmp``.

    The file gets the mode ``open()`` would give it, as BasicSR's own saves have: ``0o666 & ~umask`` (0644 under
    umask 022), not the 0600 of ``mkstemp``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    _fsync_folder(folder)


def remove_partial_files(folder):
    """Delete the temporary files that saves killed mid-write left in ``folder``; returns their names."""
    partial = sorted(name for name in os.listdir(folder) if name.startswith('.') and name.endswith('.tmp'))
    for name in partial:
        os.unlink(os.path.join(folder, name))
    return partial


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint(path, what='checkpoint', mmap=False):
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is one OptionError line naming ``path``.

    ``mmap=True`` maps the tensors instead of reading them: a cheap check that a zip checkpoint is complete.
    """
    if not os.path.isfile(path):
        raise OptionError(f'{path}: {what} does not exist')
    mmap = mmap and zipfile.is_zipfile(path)  # legacy (non-zip) files and truncated zips are read in full
    try:
        return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        refused = re.search(r'Unsupported global: GLOBAL (\S+)', str(error))
        if refused:
            raise OptionError(f'{path}: {what} holds Python objects ({refused.group(1)}) that weights_only loading '
                              'refuses: not a plain tensor checkpoint') from None
        raise OptionError(f'{path}: {what} is truncated or corrupt ({_reason(error)})') from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as error:
        raise OptionError(f'{path}: {what} is truncated or corrupt ({_reason(error)})') from None


def _reason(error):
    """A short cause for a one-line message: PyTorch's own messages run to paragraphs."""
    text = str(error)
    detail = re.search(r'WeightsUnpickler error: *\n*\s*([^\n]+)', text)
    text = detail.group(1) if detail else text.strip().split('\n')[0]
    text = text.split('. ')[0].strip().rstrip('.')
    return (text[:150] + '...' if len(text) > 150 else text) or type(error).__name__


def read_network(path, param_key='params'):
    """The state dict of a BasicSR network checkpoint (``{param_key: state dict}``), as BasicSR's load_network
    reads it: ``params`` stands in for a missing ``params_ema``, a ``module.`` prefix is dropped."""
    saved = read_checkpoint(path, 'network checkpoint')
    if param_key is not None:
        if not isinstance(saved, dict) or (param_key not in saved and 'params' not in saved):
            wanted = ' or '.join(repr(k) for k in dict.fromkeys((param_key, 'params')))
            raise OptionError(f'{path}: not a BasicSR network checkpoint (no {wanted} entry)')
        saved = saved[param_key] if param_key in saved else saved['params']
    if not isinstance(saved, dict) or not all(torch.is_tensor(v) for v in saved.values()):
        raise OptionError(f'{path}: not a BasicSR network checkpoint (its {param_key!r} entry is not a state dict)')
    return {(key[7:] if key.startswith('module.') else key): value for key, value in saved.items()}


def load_network_state(net, state, strict, path):
    """``net.load_state_dict`` whose mismatch report is one line naming the file."""
    if strict:
        own = net.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        resized = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or resized:
            parts = [f'{len(names)} {label}, e.g. {names[0]}' for label, names in
                     (('missing keys', missing), ('unexpected keys', unexpected), ('keys of another shape', resized))
                     if names]
            raise OptionError(f'{path}: does not fit network_g ({"; ".join(parts)})')
    net.load_state_dict(state, strict=strict)


def read_training_state(path):
    """A training state written by ``save_training_state``; a foreign or damaged file is an OptionError."""
    state = read_checkpoint(path, 'training state')
    if not isinstance(state, dict) or not {'epoch', 'iter', 'optimizers', 'schedulers'} <= set(state):
        raise OptionError(f'{path}: not a BasicSR training state (no epoch/iter/optimizers/schedulers)')
    return state


def resume_network_paths(opt, resume_iter):
    """The network files ``check_resume`` will point the networks at for a resume from ``resume_iter``."""
    ignored = opt['path'].get('ignore_resume_networks') or []
    return [os.path.join(opt['path']['models'], f'net_{key[len("network_"):]}_{resume_iter}.pth')
            for key in opt if key.startswith('network_') and key not in ignored]


def load_resume_state(opt):
    """BasicSR's ``load_resume_state``, crash-aware: returns ``(state or None, warnings)``.

    With ``--auto_resume`` it takes the newest ``training_states/<iter>.state`` that loads and whose network
    checkpoints load, skipping (with a warning) newer ones a crash or a full disk left damaged. A ``path:
    resume_state`` named in the options must load, else one OptionError line names it.
    """
    warnings, damaged = [], []
    state = path = None
    if opt['auto_resume']:
        state_dir = opt['path']['training_states']
        iters = []
        if os.path.isdir(state_dir):
            names = scandir(state_dir, suffix='.state', recursive=False, full_path=False)
            iters = sorted((int(n[:-len('.state')]) for n in names if n[:-len('.state')].isdigit()), reverse=True)
        for resume_iter in iters:
            candidate = os.path.join(state_dir, f'{resume_iter}.state')
            try:
                state = read_training_state(candidate)
                for network in resume_network_paths(opt, state['iter']):
                    read_checkpoint(network, 'network checkpoint', mmap=True)
            except OptionError as error:
                damaged.append(str(error))
                warnings.append(f'Skipping {error}; trying an older training state.')
                state = None
                continue
            path = candidate
            break
        if iters and state is None:
            raise OptionError(f'{state_dir}: none of the {len(iters)} training states can be resumed from '
                              f'(the newest: {damaged[0]})')
    elif opt['path'].get('resume_state'):
        path = opt['path']['resume_state']
        state = read_training_state(path)
    if state is None:
        return None, warnings
    opt['path']['resume_state'] = path
    check_resume(opt, state['iter'])
    return state, warnings
