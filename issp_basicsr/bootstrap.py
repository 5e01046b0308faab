"""What ``import issp_basicsr`` does: arrange for BasicSR to be fixed and extended the moment it is imported, and
nothing more, so that the pruning core (``issp_basicsr.sparsity``) imports without BasicSR, cv2 or their 3 s.

One finder on ``sys.meta_path`` does two things:

* it serves ``torchvision.transforms.functional_tensor`` (removed in torchvision 0.17, imported by
  ``basicsr.data.degradations``) as an alias of its private successor, so ``import basicsr`` works at all;
* when ``basicsr`` itself is imported (by the user, by BasicSR's own ``train.py``, or by our adapter), it runs
  :func:`setup_basicsr` right after BasicSR's ``__init__``: the fixes of ``compat`` and the registration of this
  package's models and architectures.

If BasicSR was imported before this package, :func:`install` sets it up at once. This module imports only the
standard library; ``compat`` and the registering modules are imported by :func:`setup_basicsr` when it runs.
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

_FUNCTIONAL_TENSOR = 'torchvision.transforms.functional_tensor'
_FUNCTIONAL_TENSOR_NOW = 'torchvision.transforms._functional_tensor'
_done = False


def setup_basicsr():
    """Apply the BasicSR 1.4.2 fixes and register this package's classes in BasicSR's registries (idempotent).

    Registering imports ``issp_basicsr.models``, which imports other modules of this package. When BasicSR is
    being imported by one of those (``issp_basicsr.checkpoint`` imports ``basicsr.utils``, say), they are still
    half-initialised, so registering now would fail; then it waits for BasicSR's ``build_model``, which is
    wrapped here to register first. Our own pipelines import ``issp_basicsr.models`` themselves.
    """
    global _done
    if _done:
        return
    _done = True
    from . import compat
    compat.apply()
    import basicsr.models
    import basicsr.test
    import basicsr.train
    original = basicsr.models.build_model

    def build_model(opt):
        # registers the model classes and replaces this stand-in with the adapter's build_model
        return importlib.import_module('issp_basicsr.models').build_model(opt)

    build_model.__doc__ = original.__doc__
    build_model.__wrapped__ = original  # the adapter wraps BasicSR's own, never this stand-in
    for module in (basicsr.models, basicsr.train, basicsr.test):
        module.build_model = build_model
    importlib.import_module('issp_basicsr.archs')  # registers the architectures (CAT): imports BasicSR only
    if not _importing_this_package():
        importlib.import_module('issp_basicsr.models')


def _importing_this_package():
    """True while a module of this package is half-initialised (being executed by an import)."""
    return any(name.startswith('issp_basicsr.') and getattr(getattr(module, '__spec__', None), '_initializing', False)
               for name, module in list(sys.modules.items()))


class _Alias(importlib.abc.Loader):
    """Loads a module as another, already importable one."""

    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):
        pass


class _AfterImport(importlib.abc.Loader):
    """BasicSR's own loader, then :func:`setup_basicsr`."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        setup_basicsr()

    def __getattr__(self, name):  # resource readers, is_package, ...: the wrapped loader's
        return getattr(self.loader, name)


class _Finder(importlib.abc.MetaPathFinder):

    def find_spec(self, name, path=None, target=None):
        if name == _FUNCTIONAL_TENSOR:
            if importlib.machinery.PathFinder.find_spec(name, path) is not None:
                return None  # an older torchvision still has it
            return importlib.util.spec_from_loader(name, _Alias(_FUNCTIONAL_TENSOR_NOW))
        if name == 'basicsr' and not _done:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, 'find_spec'):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None and spec.loader is not None:
                    spec.loader = _AfterImport(spec.loader)
                    return spec
        return None


def install():
    """Put the finder in front of the others (once); set BasicSR up now if it is already imported."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    if 'basicsr' in sys.modules:
        setup_basicsr()
