"""Loading checkpoints with torch >= 2.6's ``weights_only`` default, trusting only the run's own work_dir.

mmengine 0.10.7 calls ``torch.load(filename)``: since torch 2.6 that means ``weights_only=True``, which rejects
what the runner pickles besides tensors (the message hub's ``HistoryBuffer`` objects, numpy arrays and scalars,
and ``builtins.getattr``, which HistoryBuffer's pickled statistics methods use). So ``--resume`` and
``tools/test.py`` fail on every checkpoint the runner wrote.

Turning ``weights_only`` off would let any downloaded checkpoint run code. Instead the tools decide which files
are trusted:

* **trusted**: files inside a directory passed to :func:`trust_directory` (the tools pass the run's work_dir,
  where its CheckpointHook writes). They load with ``weights_only=True`` plus exactly the globals of
  :func:`trusted_globals`, allowed only for the duration of that one ``torch.load``;
* **untrusted**: everything else (``load_from``, a checkpoint passed to ``tools/test.py`` from elsewhere,
  anything downloaded) loads with plain ``weights_only=True``; a file that needs more raises
  :class:`UntrustedCheckpointError`, saying how to proceed.

The decision uses the resolved path (symbolic links followed), so a link inside the work_dir to a file elsewhere
is not trusted. Backbone ``init_cfg=dict(type='Pretrained')`` files are read by the backbone's own loader
(``mmmambavision.checkpoint``), never with these globals.
"""
import collections
import os
import os.path as osp
import pickle
from typing import Any, List, Tuple

import torch
from mmengine.runner.checkpoint import CheckpointLoader

_trusted_dirs: List[str] = []


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint outside the trusted directories needs more than ``weights_only`` allows."""


def trusted_globals() -> List[Tuple[Any, str]]:
    """The globals a runner-written checkpoint needs besides tensors, as ``(object, qualified name)`` pairs."""
    import numpy
    try:
        from numpy._core import multiarray
        numpy_core = 'numpy._core.multiarray'
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
        numpy_core = 'numpy.core.multiarray'
    import _codecs

    from mmengine.logging.history_buffer import HistoryBuffer

    # numpy >= 1.25 unpickles np.dtype('float64') as an instance of numpy.dtypes.Float64DType, which the
    # weights-only unpickler checks by class: allow the (data-only) dtype classes.
    dtype_classes = []
    if hasattr(numpy, 'dtypes'):
        dtype_classes = [(cls, f'numpy.dtypes.{name}') for name, cls in vars(numpy.dtypes).items()
                         if name.endswith('DType') and isinstance(cls, type)]
    return dtype_classes + [
        (collections.OrderedDict, 'collections.OrderedDict'),
        (HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (multiarray._reconstruct, f'{numpy_core}._reconstruct'),
        (multiarray.scalar, f'{numpy_core}.scalar'),
        (numpy.ndarray, 'numpy.ndarray'),
        (numpy.dtype, 'numpy.dtype'),
        (_codecs.encode, '_codecs.encode'),
        # HistoryBuffer pickles its statistics methods as getattr(buffer, name): the reason these files are
        # trusted only where the run itself writes them.
        (getattr, 'builtins.getattr'),
    ]


def trust_directory(path: str) -> None:
    """Trust checkpoints inside ``path`` (and its subfolders) and install the loader."""
    resolved = osp.realpath(osp.expanduser(path))
    if resolved not in _trusted_dirs:
        _trusted_dirs.append(resolved)
    install_checkpoint_loader()


def trusted_directories() -> Tuple[str, ...]:
    return tuple(_trusted_dirs)


def is_trusted(filename: str) -> bool:
    """Whether ``filename`` resolves to a file inside a trusted directory."""
    resolved = osp.realpath(osp.expanduser(filename))
    return any(osp.commonpath([resolved, directory]) == directory for directory in _trusted_dirs)


def load_checkpoint_file(filename: str, map_location: Any = None) -> Any:
    """mmengine's local-file loader, with the trust rule of the module docstring."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    if is_trusted(filename):
        with torch.serialization.safe_globals(trusted_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        needed = _unsafe_globals(filename)
        where = ', '.join(_trusted_dirs) if _trusted_dirs else 'none'
        raise UntrustedCheckpointError(
            f'{filename} is not inside this run\'s work_dir (trusted: {where}), so it is loaded with torch '
            f'weights_only=True and nothing else; it references {needed or "globals weights_only refuses"}. '
            'If it is a checkpoint your own training run wrote, point the tool at that run\'s folder: '
            '`tools/train.py CONFIG --work-dir <folder holding it> --resume [file]` or '
            '`tools/test.py CONFIG <file> --work-dir <folder holding it>`. A file from elsewhere should hold '
            'only weights (a state_dict and plain meta); do not load it with weights_only=False.') from error


def _unsafe_globals(filename: str) -> List[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(filename))
    except Exception:  # a legacy (non-zip) file: the torch message above says enough
        return []


def install_checkpoint_loader() -> None:
    """Make mmengine's ``CheckpointLoader`` read local files through :func:`load_checkpoint_file`."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file, force=True)


def reset_trusted_directories() -> None:
    """Forget every trusted directory (for tests; the loader stays installed and trusts nothing)."""
    _trusted_dirs.clear()


def _main() -> None:  # pragma: no cover - a diagnostic: python -m mmmambavision.engine.trusted_checkpoint FILE
    import sys
    for name in sys.argv[1:]:
        print(name, 'needs', _unsafe_globals(name) or 'nothing beyond weights_only')


if __name__ == '__main__':
    _main()
