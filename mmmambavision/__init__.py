"""mmmambavision: NVIDIA's MambaVision backbone for OpenMMLab (mmdet, mmseg).

``import mmmambavision`` registers ``MambaVision`` in mmengine's root ``MODELS`` registry, so configs of any
OpenMMLab codebase resolve ``type='MambaVision'`` with
``custom_imports=dict(imports=['mmmambavision'], allow_failed_imports=False)``; it also registers
``AmpLossScaleHook`` (mmengine's root ``HOOKS``), which the configs use to log and check AMP's loss scale,
``InputShapeHook`` (the same registry), which logs the backbone's input shape per iteration and whether it is new, and
``MergedGroupsOptimWrapperConstructor`` (root ``OPTIM_WRAPPER_CONSTRUCTORS``): their param-wise AdamW in a few
param groups instead of one per parameter.

It also installs :func:`mmmambavision.checkpoint.load_checkpoint_file` as mmengine's loader for local checkpoint
files: every checkpoint a runner writes (with its message hub, optimiser and scheduler state) loads under
torch >= 2.6 for ``load_from``, testing and ``--resume``, in these tools and in mmdet's / mmseg's own, while a file
that references anything besides tensors, numpy data, mmengine's HistoryBuffer and plain containers is refused
before anything in it runs.
"""
from .checkpoint import UnsafeCheckpointError, register_checkpoint_loader
from .engine.hooks import AmpLossScaleHook, InputShapeHook
from .engine.optim import MergedGroupsOptimWrapperConstructor
from .models import MambaVision

register_checkpoint_loader()

__version__ = '0.1.0'
__all__ = ['AmpLossScaleHook', 'InputShapeHook', 'MambaVision', 'MergedGroupsOptimWrapperConstructor',
           'UnsafeCheckpointError', '__version__']
