"""Runtime helpers behind ``tools/train.py``, ``tools/test.py`` and ``tools/demo.py``.

* :mod:`.device`: running GPU configs on a machine without CUDA (AMP falls back to fp32 with one warning).
* :mod:`.entrypoints`: the train / test command lines, dispatching on the config's ``default_scope``
  (``mmdet`` or ``mmseg``).

Checkpoints are read by :mod:`mmmambavision.checkpoint`, installed into mmengine by ``import mmmambavision``.
"""
from .device import fall_back_to_fp32, check_launcher

__all__ = ['check_launcher', 'fall_back_to_fp32']
