"""Architectures that BasicSR 1.4.2 does not ship; importing this package registers them in ARCH_REGISTRY.

``CAT``: the Cross Aggregation Transformer with regular rectangle windows (CAT-R, Chen et al., NeurIPS 2022),
the third backbone the ISS-P paper prunes (see docs/CAT.md).
"""
from .cat_arch import CAT

__all__ = ['CAT']
