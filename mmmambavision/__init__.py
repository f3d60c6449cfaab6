"""mmmambavision: NVIDIA's MambaVision backbone for OpenMMLab (mmdet, mmseg).

``import mmmambavision`` registers ``MambaVision`` in mmengine's root ``MODELS`` registry, so configs of any
OpenMMLab codebase resolve ``type='MambaVision'`` with
``custom_imports=dict(imports=['mmmambavision'], allow_failed_imports=False)``; it also registers
``AmpLossScaleHook`` (mmengine's root ``HOOKS``), which the configs use to log and check AMP's loss scale, and
``MergedGroupsOptimWrapperConstructor`` (root ``OPTIM_WRAPPER_CONSTRUCTORS``): their param-wise AdamW in a few
param groups instead of one per parameter.
"""
from .engine.hooks import AmpLossScaleHook
from .engine.optim import MergedGroupsOptimWrapperConstructor
from .models import MambaVision

__version__ = '0.1.0'
__all__ = ['AmpLossScaleHook', 'MambaVision', 'MergedGroupsOptimWrapperConstructor', '__version__']
