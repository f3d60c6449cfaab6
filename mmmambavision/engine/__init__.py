"""Runtime helpers behind ``tools/train.py``, ``tools/test.py`` and ``tools/demo.py``.

* :mod:`.trusted_checkpoint`: loading checkpoints under torch >= 2.6's ``weights_only`` default. A run's own
  work_dir is trusted (an allow-list of the few globals mmengine pickles); every other file is plain
  ``weights_only``.
* :mod:`.device`: running GPU configs on a machine without CUDA (AMP falls back to fp32 with one warning).
* :mod:`.entrypoints`: the train / test command lines, dispatching on the config's ``default_scope``
  (``mmdet`` or ``mmseg``).
"""
from .device import fall_back_to_fp32, check_launcher
from .trusted_checkpoint import (UntrustedCheckpointError, install_checkpoint_loader, is_trusted,
                                 load_checkpoint_file, trust_directory, trusted_globals)

__all__ = [
    'UntrustedCheckpointError', 'check_launcher', 'fall_back_to_fp32', 'install_checkpoint_loader', 'is_trusted',
    'load_checkpoint_file', 'trust_directory', 'trusted_globals'
]
