"""issp-basicsr: sparse super-resolution networks trained from scratch with ISS-P, inside BasicSR.

``import issp_basicsr`` only installs an import hook (``bootstrap``): the moment BasicSR is imported, BasicSR 1.4.2
is fixed for today's PyTorch (``compat``) and ``ISSPSRModel`` (and the sparse variants of every other model type)
is registered in BasicSR's registries. The pruning core, ``issp_basicsr.sparsity``, needs only PyTorch and imports
without BasicSR.
"""
from . import bootstrap
from .version import __version__

bootstrap.install()

__all__ = ['__version__']
