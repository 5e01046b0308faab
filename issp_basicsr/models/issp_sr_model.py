"""ISSPSRModel: BasicSR's SRModel trained sparse: :class:`SparseModelMixin` on SRModel.

The model type of the shipped option files. Any other registered model type trains sparse too when its options
carry ``train: sparsity:`` (``factory.py`` derives ``Sparse<ModelType>`` the same way); ISSPSRModel differs from
that ``SparseSRModel`` only in requiring the block and in padding window-based networks (SwinIR) at test time.
"""
from basicsr.models.sr_model import SRModel
from basicsr.models.swinir_model import SwinIRModel
from basicsr.utils.registry import MODEL_REGISTRY

from .sparse_model import SparseModelMixin


@MODEL_REGISTRY.register()
class ISSPSRModel(SparseModelMixin, SRModel):
    """Single-image SR trained sparse with ISS-P (or IHT, ...), configured by the ``train: sparsity:`` block."""

    def test(self):
        if 'window_size' in self.opt['network_g']:  # window-based archs (SwinIR) need padded inputs
            return SwinIRModel.test(self)
        return super().test()
