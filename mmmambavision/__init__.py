"""mmmambavision: NVIDIA's MambaVision backbone for OpenMMLab (mmdet, mmseg).

``import mmmambavision`` registers ``MambaVision`` in mmengine's root ``MODELS`` registry, so configs of any
OpenMMLab codebase resolve ``type='MambaVision'`` with
``custom_imports=dict(imports=['mmmambavision'], allow_failed_imports=False)``; it also registers
``AmpLossScaleHook`` (mmengine's root ``HOOKS``), which the configs use to log and check AMP's loss scale.
"""
from .engine.hooks import AmpLossScaleHook
from .models import MambaVision

__version__ = '0.1.0'
__all__ = ['AmpLossScaleHook', 'MambaVision', '__version__']
