"""Any registered BasicSR model type trains sparse when its options carry ``train: sparsity:``.

:func:`build_model` stands in for BasicSR's: for training options with the block it builds
``Sparse<ModelType>``, the subclass ``type('Sparse' + name, (SparseModelMixin, cls), {})`` made once per class and
registered in MODEL_REGISTRY under that derived name; the user's ``model_type`` is left as written. Everything
else (no block, testing, a class that already carries the mixin such as ISSPSRModel) goes to BasicSR's own
``build_model`` unchanged. :func:`register` puts the wrapper where BasicSR's pipelines look it up
(``basicsr.models``, ``basicsr.train``, ``basicsr.test``), so ``basicsr.train.train_pipeline`` run after
``import issp_basicsr`` trains sparse too.
"""
import importlib
import importlib.util
from copy import deepcopy

import basicsr.models
from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

from ..errors import OptionError, SparsityConfigError
from .sparse_model import SparseModelMixin

# installed BasicSR plugins whose registrations are imported when a model or network type is not found
PLUGINS = ('realesrgan', )
_basicsr_build_model = getattr(basicsr.models.build_model, '__wrapped__', basicsr.models.build_model)
_sparse_classes = {}
_plugins_imported = False


def import_plugins():
    """Import the installed plugins of ``PLUGINS`` once, so their model, network and dataset classes register
    (Real-ESRGAN's ``RealESRNetModel``, ``RealESRGANModel``, ``UNetDiscriminatorSN``, ``RealESRGANDataset``)."""
    global _plugins_imported
    if _plugins_imported:
        return
    _plugins_imported = True
    for name in PLUGINS:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def _resolve(registry, name):
    """The registry key BasicSR's ``Registry.get`` would use for ``name`` (plugins imported first when it is not
    registered; then BasicSR's fallback to ``<name>_basicsr``, its own copies of Real-ESRGAN's classes), or None."""
    if not isinstance(name, str):
        return None
    if name not in registry:
        import_plugins()
    if name in registry:
        return name
    if f'{name}_basicsr' in registry:
        return f'{name}_basicsr'
    return None


def resolve_model_type(model_type):
    """``(registry key, class)`` of ``model_type``; an OptionError line when nothing is registered under it."""
    key = _resolve(MODEL_REGISTRY, model_type)
    if key is None:
        raise OptionError(f'model_type: {model_type!r} is not a registered BasicSR model')
    return key, MODEL_REGISTRY.get(key)


def resolve_arch(arch_type):
    """The registry key of a network ``type`` (as :func:`resolve_model_type`), or None."""
    return _resolve(ARCH_REGISTRY, arch_type)


def sparse_class(cls, key=None):
    """``Sparse<key>``: ``cls`` with :class:`SparseModelMixin` first in its bases, made and registered once."""
    if issubclass(cls, SparseModelMixin):
        return cls
    if cls in _sparse_classes:
        return _sparse_classes[cls]
    name = 'Sparse' + (key or cls.__name__)
    if name in MODEL_REGISTRY:
        taken = MODEL_REGISTRY.get(name)
        raise OptionError(f'model_type {key or cls.__name__}: the name {name} that train:sparsity registers for it is '
                          f'taken by {taken.__module__}.{taken.__qualname__}')
    try:
        sparse = type(name, (SparseModelMixin, cls), {
            '__module__': __name__,
            '__doc__': f'{cls.__name__} trained sparse (train: sparsity:); see issp_basicsr.models.SparseModelMixin.',
        })
    except TypeError as error:
        raise OptionError(f'model_type {key or cls.__name__}: {cls.__name__} cannot carry the sparsity mixin '
                          f'({error})') from None
    MODEL_REGISTRY.register(sparse)
    _sparse_classes[cls] = sparse
    return sparse


def wants_sparsity(opt):
    return bool(opt.get('is_train')) and 'sparsity' in (opt.get('train') or {})


def build_model(opt):
    """BasicSR's ``build_model``; training options with ``train: sparsity:`` get ``Sparse<model_type>``."""
    if not wants_sparsity(opt):
        return _basicsr_build_model(opt)
    if opt['train']['sparsity'] is None:
        raise SparsityConfigError('train:sparsity is empty: give its keys (at least method), or remove it to train '
                                  'dense')
    key, cls = resolve_model_type(opt['model_type'])
    sparse = sparse_class(cls, key)
    opt = deepcopy(opt)
    model = sparse(opt)
    if not model.sparsifiers:
        raise OptionError(f'model_type {opt["model_type"]}: {cls.__name__} did not run init_training_settings while '
                          'it was built, so train:sparsity has nothing to attach to')
    get_root_logger().info(f'Model [{type(model).__name__}] is created (model_type {opt["model_type"]} with '
                           'train:sparsity).')
    return model


build_model.__wrapped__ = _basicsr_build_model


def register():
    """Put :func:`build_model` where BasicSR's pipelines look it up; safe to call more than once."""
    import basicsr.test
    import basicsr.train
    for module in (basicsr.models, basicsr.train, basicsr.test):
        module.build_model = build_model
