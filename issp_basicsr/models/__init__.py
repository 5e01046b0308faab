"""BasicSR model classes; importing this module registers them in BasicSR's MODEL_REGISTRY."""
from .issp_sr_model import ISSPSRModel

__all__ = ['ISSPSRModel']
