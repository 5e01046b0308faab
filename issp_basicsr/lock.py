"""The experiment lock: one live training per ``experiments/<name>`` at a time.

BasicSR archives ``experiments/<name>`` when a new run starts (``make_exp_dirs``), and ``--auto_resume`` continues
from whatever state is newest there; two runs with one name would write into each other's folder. ``basicsr
train`` therefore takes ``experiments/.<name>.lock`` before it looks at the folder: the file sits beside the
folder (archiving moves the folder, not the lock) and holds the owner's pid, host, start time and command.

The lock itself is ``fcntl.flock`` on that file, held for the whole run: the kernel drops it when the process
dies, however it dies, so a lock left by a killed run is never mistaken for a live one (even if its pid was
reused). Such a leftover file still names the dead run: it is taken over with a warning. A run that ends
normally empties the file. In a distributed run only rank 0 takes the lock and the other ranks learn the result.
"""
import contextlib
import datetime
import json
import os
import socket
import sys

from .errors import InputError

try:
    import fcntl
except ImportError:  # Windows: no flock; O_EXCL on the lock file instead (a stale file must be removed by hand)
    fcntl = None


class ExperimentLockedError(InputError):
    """Another live process trains this experiment; the message names the folder and that process."""


def lock_path(experiments_root):
    root = os.path.abspath(experiments_root)
    return os.path.join(os.path.dirname(root), f'.{os.path.basename(root)}.lock')


def _read(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    data = b''
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    try:
        owner = json.loads(data.decode()) if data.strip() else None
    except ValueError:
        owner = None
    return owner if isinstance(owner, dict) else None


def _describe(owner):
    if not owner:
        return 'another process'
    return (f'pid {owner.get("pid")} on {owner.get("host")}, started {owner.get("started")}'
            + (f': {owner["command"]}' if owner.get('command') else ''))


class ExperimentLock:
    """``acquire()`` takes the lock of ``experiments_root`` or raises ExperimentLockedError; ``release()``."""

    def __init__(self, experiments_root):
        self.folder = os.path.abspath(experiments_root)
        self.path = lock_path(experiments_root)
        self.fd = None
        self.warning = None

    def acquire(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if fcntl is None:
            return self._acquire_exclusive()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read(fd)
            os.close(fd)
            raise ExperimentLockedError(
                f'{self.folder} is being trained by {_describe(owner)}; wait for it to finish or stop it, or give '
                f'this run another name (lock file {self.path})') from None
        previous = _read(fd)
        if previous and previous.get('state') == 'running':
            self.warning = (f'Took over the lock {self.path} left by {_describe(previous)}, which is no longer '
                            'running (killed or crashed); its files are kept as they are.')
        self._write(fd, 'running')
        self.fd = fd
        return self

    def _acquire_exclusive(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            with open(self.path, 'rb') as f:
                owner = _read(f.fileno())
            raise ExperimentLockedError(
                f'{self.folder} is locked by {_describe(owner)}; if that run is gone, delete {self.path}') from None
        self._write(fd, 'running')
        self.fd = fd
        return self

    @staticmethod
    def _write(fd, state):
        owner = {'pid': os.getpid(), 'host': socket.gethostname(), 'state': state,
                 'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                 'command': ' '.join(['basicsr'] + sys.argv[1:]) if sys.argv else ''}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(owner) + '\n').encode())
        os.fsync(fd)

    def release(self):
        if self.fd is None:
            return
        try:
            if fcntl is None:
                os.close(self.fd)
                os.unlink(self.path)
            else:
                os.ftruncate(self.fd, 0)  # a finished run: the next one takes the lock without a warning
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                os.close(self.fd)
        finally:
            self.fd = None


def _share(opt, message):
    """Rank 0's outcome (None or the refusal) on every rank of a distributed run."""
    if not opt.get('dist'):
        return message
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized():
        return message
    shared = [message]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


@contextlib.contextmanager
def experiment_lock(opt):
    """Hold the lock of ``opt['path']['experiments_root']`` (rank 0) for the ``with`` block; yields the takeover
    warning or None. Raises ExperimentLockedError (every rank) when a live process holds it."""
    lock, refusal = None, None
    if opt.get('rank', 0) == 0:
        lock = ExperimentLock(opt['path']['experiments_root'])
        try:
            lock.acquire()
        except ExperimentLockedError as error:
            refusal = str(error)
    refusal = _share(opt, refusal)
    if refusal:
        if lock is not None:
            lock.release()
        raise ExperimentLockedError(refusal)
    try:
        yield lock.warning if lock is not None else None
    finally:
        if lock is not None:
            lock.release()
