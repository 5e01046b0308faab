"""Pruning core: selection, shrinking, masks, schedule and statistics for any PyTorch training loop.

Nothing here imports BasicSR (``import issp_basicsr.sparsity`` loads PyTorch and this folder only);
``issp_basicsr.models`` adapts it to BasicSR's model classes.
"""
from ..errors import SparsityConfigError, SparsityStateError
from .config import SparsityConfig, pruned_count
from .layers import prunable_layers
from .methods import METHODS, PruningMethod, get_method, register_method
from .sparsifier import Sparsifier, build_sparsifier, check_layers

__all__ = [
    'SparsityConfig', 'SparsityConfigError', 'SparsityStateError', 'Sparsifier', 'build_sparsifier',
    'prunable_layers', 'pruned_count', 'check_layers', 'METHODS', 'PruningMethod', 'get_method', 'register_method'
]
