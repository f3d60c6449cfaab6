"""mmmambavision: NVIDIA's MambaVision backbone for OpenMMLab (mmdet, mmseg).

``import mmmambavision`` registers ``MambaVision`` in mmengine's root ``MODELS`` registry, so configs of any
OpenMMLab codebase resolve ``type='MambaVision'`` with
``custom_imports=dict(imports=['mmmambavision'], allow_failed_imports=False)``.
"""
from .models import MambaVision

__version__ = '0.1.0'
__all__ = ['MambaVision', '__version__']
