"""BasicSR model classes. Importing this module registers ISSPSRModel in BasicSR's MODEL_REGISTRY and, through
:func:`register`, makes every registered model type train sparse when its options carry ``train: sparsity:``."""
from .factory import build_model, register, resolve_model_type, sparse_class
from .issp_sr_model import ISSPSRModel
from .sparse_model import SparseModelMixin

register()

__all__ = ['ISSPSRModel', 'SparseModelMixin', 'build_model', 'register', 'resolve_model_type', 'sparse_class']
