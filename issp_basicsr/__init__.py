"""issp-basicsr: sparse super-resolution networks trained from scratch with ISS-P, inside BasicSR.

Importing the package makes BasicSR 1.4.2 work on today's PyTorch (``compat``) and registers ``ISSPSRModel`` in
BasicSR's MODEL_REGISTRY. The pruning core, ``issp_basicsr.sparsity``, needs only PyTorch: where BasicSR is not
installed the registration is skipped and the core still imports.
"""
import importlib.util

from .version import __version__

if importlib.util.find_spec('basicsr') is not None:
    from . import compat

    compat.apply()
    from . import models  # noqa: F401  (registers the model classes)

__all__ = ['__version__']
