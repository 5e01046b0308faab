"""What an exact resume needs beyond BasicSR's training state: the RNG states and the position in the data order.

BasicSR restarts the interrupted epoch from its first batch and re-seeds nothing, so a resumed run sees other
batches, crops and drop-path draws than the uninterrupted one. Here every checkpoint also stores

* ``rng``: the Python, NumPy, torch (and CUDA) generator states of every rank, as tensors and plain numbers so the
  state still loads with ``weights_only=True``;
* ``data``: the epoch and the number of its batches already trained on.

On resume the epoch's sampler order (seeded by the epoch number) is replayed without its consumed prefix, and the
generators are restored after the epoch's DataLoader iterator is made (making it draws a seed from torch's
generator). With ``num_worker_per_gpu: 0`` and the default prefetcher a run resumed from any checkpoint then ends
with exactly the weights of the uninterrupted run on a CPU.
"""
import contextlib
import itertools
import random

import numpy as np
import torch
from basicsr.data.data_sampler import EnlargedSampler

from .distributed import all_gather_objects


# ------------------------------------------------------------------------------------------------ RNG states
def rng_state():
    """This process's generator states, as tensors and plain numbers (``weights_only``-loadable)."""
    version, mt_state, gauss_next = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        'python': {'version': version, 'state': torch.tensor(mt_state, dtype=torch.int64), 'gauss_next': gauss_next},
        'numpy': {'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos), 'has_gauss': int(has_gauss),
                  'cached_gaussian': float(cached_gaussian)},
        'torch': torch.get_rng_state(),
        'cuda': [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what :func:`rng_state` returned; returns False when the CUDA states could not be restored
    (another number of GPUs)."""
    python = state['python']
    random.setstate((python['version'], tuple(int(v) for v in python['state'].tolist()), python['gauss_next']))
    numpy = state['numpy']
    np.random.set_state(('MT19937', numpy['keys'].numpy().astype(np.uint32), numpy['pos'], numpy['has_gauss'],
                         numpy['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if state['cuda']:
        if not torch.cuda.is_available() or torch.cuda.device_count() != len(state['cuda']):
            return False
        torch.cuda.set_rng_state_all(state['cuda'])
    return True


def gather_rng_states():
    """The RNG states of every rank, in rank order (a collective: call it on every rank)."""
    return all_gather_objects(rng_state())


@contextlib.contextmanager
def preserved_rng():
    """Run a block (validation) without moving the training's generators: making a DataLoader iterator draws from
    torch's generator, so validating would otherwise change every later random crop and drop-path draw."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


# ------------------------------------------------------------------------------------------- data position
class ResumableSampler(EnlargedSampler):
    """BasicSR's EnlargedSampler whose epoch can start after its first ``start`` samples: the same order (seeded
    by the epoch number, as before), minus the prefix a resumed run has already trained on."""

    start = 0

    def set_epoch(self, epoch, start=0):
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)


class DataPosition:
    """The epoch and the number of its batches trained on so far; stored as ``data`` in the training state."""

    def __init__(self, batch_size, world_size, epoch=None, batches=0):
        self.batch_size = batch_size
        self.world_size = world_size
        self.epoch = epoch
        self.batches = batches

    def begin_epoch(self, epoch):
        """Start (or, right after a resume, continue) ``epoch``; returns the number of its samples to skip."""
        if epoch != self.epoch:
            self.epoch, self.batches = epoch, 0
        return self.batches * self.batch_size

    def state_dict(self):
        return {'epoch': self.epoch, 'batches': self.batches, 'batch_size': self.batch_size,
                'world_size': self.world_size}

    @classmethod
    def resumed(cls, state, batch_size, world_size):
        """The position saved in ``state`` -> (position, warning or None). Without a usable saved position the
        interrupted epoch restarts from its first batch, as BasicSR does."""
        saved = state.get('data')
        if saved is None:
            return cls(batch_size, world_size), ('the training state has no data position (not written by this '
                                                 'version): the interrupted epoch restarts from its first batch')
        if (saved['batch_size'], saved['world_size']) != (batch_size, world_size):
            return cls(batch_size, world_size), (
                f'the run was saved with {saved["world_size"]} rank(s) x batch {saved["batch_size"]} and resumes '
                f'with {world_size} x {batch_size}: the interrupted epoch restarts from its first batch')
        return cls(batch_size, world_size, saved['epoch'], saved['batches']), None


def restore_rng(state, rank, world_size):
    """Set this rank's generators to those saved in the training state -> warning or None."""
    saved = state.get('rng')
    if not saved:
        return 'the training state has no RNG states: the resumed run draws other random numbers'
    if len(saved) != world_size:
        return (f'the run was saved with {len(saved)} rank(s) and resumes with {world_size}: RNG states not '
                'restored, the resumed run draws other random numbers')
    if not set_rng_state(saved[rank]):
        return 'CUDA RNG states not restored (another number of GPUs)'
    return None
