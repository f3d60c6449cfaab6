"""The one checkpoint loader: every file mmengine's runners write loads, nothing in a file is ever executed.

A checkpoint is a pickle, and a pickle is a program: it names globals (``module.name``) and calls them. torch's
``weights_only`` unpickler allows tensors and a few containers, which is not enough for what mmengine runners
write (numpy arrays and scalars, and the message hub's ``HistoryBuffer`` objects, whose statistics methods are
pickled as ``builtins.getattr(HistoryBuffer, 'mean')``); ``weights_only=False`` with the default pickle module
runs whatever a file names. This module reads every checkpoint with :class:`CheckpointUnpickler` instead
(``torch.load(..., weights_only=False, pickle_module=restricted_pickle)``), which knows the data a runner
checkpoint holds and nothing else:

* **tensors**: the ``torch.*`` part of torch's own ``weights_only`` allow-list (torch's tensor rebuild functions,
  ``torch.Size``, ``torch.device``, tensor / storage types, dtypes, quantisation schemes);
* **numpy**: ``numpy.ndarray``, ``numpy.dtype``, the ``numpy.dtypes.*DType`` classes and
  ``numpy(._)core.multiarray._reconstruct`` / ``.scalar`` and ``numpy(._)core.numeric._frombuffer`` (arrays in
  protocol-5 pickles); ``_codecs.encode`` (how byte payloads are pickled);
* **containers**: ``collections.OrderedDict`` and ``collections.Counter`` (MultiStepLR's milestones),
  ``builtins.set`` / ``frozenset`` / ``complex`` / ``bytearray``, ``argparse.Namespace`` (the ``args`` of the
  published ImageNet files); plain dicts, lists, tuples, strings and numbers need no global;
* **mmengine's HistoryBuffer**, rebuilt from its data: its state may hold only its history arrays, its maximum
  length and its statistics methods, each of which must be the class's own registered method of that name.
  ``builtins.getattr`` resolves to a guard that answers only ``getattr(HistoryBuffer, name)`` for a registered
  statistics method (``min``, ``max``, ``current``, ``mean``, ...) and refuses every other call (pickle
  protocols >= 4 name such a method directly, ``mmengine.logging.history_buffer.HistoryBuffer.mean``: allowed
  under the same rule).

Every other global is refused by its name: the file's pickles are scanned before anything is loaded, so a file
naming one raises :class:`UnsafeCheckpointError` listing all it names, and nothing from it is loaded; the
unpickler refuses the same names again while loading (the scan is a convenience, not the guard). What only shows
while loading (a ``getattr`` on something else, a HistoryBuffer state holding anything but its data) is refused
at that step, before the call it asks for is made. State is set only on the containers above (``BUILD`` on
anything else is refused), so a file cannot alter a class or a function. TorchScript archives (which ``torch.load``
would hand to ``torch.jit.load``) are refused as well. No folder is trusted or distrusted: a run's own
checkpoints, a colleague's, a published mmdet / mmseg file and a downloaded one are read the same way.

``import mmmambavision`` (every config does it through ``custom_imports``) installs :func:`load_checkpoint_file`
as mmengine's loader for local files, and for ``http(s)://`` files once downloaded
(:func:`register_checkpoint_loader`), so ``load_from``, ``tools/test.py``'s checkpoint, ``--resume`` (with or
without a file) and mmdet's / mmseg's own tools and inferencers read checkpoints through it. The backbone's
``init_cfg=dict(type='Pretrained', checkpoint=...)`` uses it via :func:`load_pretrained`, which reads the
published layouts:

* ImageNet files (``mambavision_*_1k.pth.tar``): timm-trainer dicts with ``state_dict`` (including the
  classification ``head.*`` and final ``norm.*``, which a backbone does not have) and an ``argparse.Namespace``
  under ``args``;
* mmdet / mmseg files: ``state_dict`` with ``backbone.`` / ``neck.`` / ... prefixes, mmengine ``meta`` and
  possibly the run's ``message_hub``.

``python -m mmmambavision.checkpoint FILE...`` lists the globals each file names and which of them are refused.
"""
import collections
import os
import os.path as osp
from typing import Any, Dict, Optional

import torch
from mmengine.logging import print_log

from .unpickler import (CheckpointUnpickler, UnsafeCheckpointError, allowed_globals, globals_in_checkpoint,
                        is_torchscript_archive, refusal, refused_globals_in_checkpoint, restricted_pickle)

__all__ = [
    'CheckpointUnpickler', 'UnsafeCheckpointError', 'allowed_globals', 'extract_state_dict', 'globals_in_checkpoint',
    'load_checkpoint_file', 'load_from_http_data_only', 'load_from_local_data_only', 'load_pretrained',
    'refused_globals_in_checkpoint', 'register_checkpoint_loader', 'restricted_pickle'
]


def load_checkpoint_file(filename: str, map_location: Any = None) -> Any:
    """Load a local checkpoint file without executing anything in it (see the module docstring).

    The signature of mmengine's local loader (``CheckpointLoader``'s scheme ``''``). Raises
    ``FileNotFoundError`` for a missing file and :class:`UnsafeCheckpointError` (a ``pickle.UnpicklingError``)
    for a file that references anything outside the allow-list.
    """
    filename = osp.expanduser(os.fspath(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    if is_torchscript_archive(filename):
        raise refusal('TorchScript code (a torch.jit archive; load it with torch.jit.load if you trust it)',
                       filename)
    refused = refused_globals_in_checkpoint(filename)
    if refused:
        raise refusal(', '.join(refused), filename)
    if os.getenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '0').lower() in ('1', 'y', 'yes', 'true'):
        return torch.load(filename, map_location=map_location, weights_only=True)  # stricter still: as asked
    try:
        return torch.load(filename, map_location=map_location, weights_only=False, pickle_module=restricted_pickle)
    except UnsafeCheckpointError as error:
        raise UnsafeCheckpointError(f'{filename}: {error}') from None


def register_checkpoint_loader() -> None:
    """Make mmengine's ``CheckpointLoader`` read checkpoints with :func:`load_checkpoint_file`.

    Called by ``import mmmambavision``. Local files (scheme ``''``) replace mmengine's own local loader, a plain
    ``torch.load``. ``http://`` / ``https://`` files are downloaded as before (into torch hub's checkpoint cache)
    and then read the same way: mmengine's own http loader uses torch hub's ``load_state_dict_from_url``, whose
    ``torch.load`` runs with ``weights_only=False``. mmengine's ``open-mmlab://``, ``torchvision://`` and
    ``mmcls://`` loaders call its module-level ``load_from_http``, which is replaced too.
    """
    from mmengine.runner import checkpoint as mmengine_checkpoint
    mmengine_checkpoint.CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_data_only, force=True)
    mmengine_checkpoint.CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                                        loader=load_from_http_data_only, force=True)
    mmengine_checkpoint.load_from_http = load_from_http_data_only


def load_from_local_data_only(filename: str, map_location: Any = None) -> Any:
    """:func:`load_checkpoint_file` under the name mmengine logs ("Loads checkpoint by local_data_only backend")."""
    return load_checkpoint_file(filename, map_location)


def _download(url: str, model_dir: Optional[str], progress: bool) -> str:
    """Where torch hub's ``load_state_dict_from_url`` keeps ``url``, downloaded if it is not there yet."""
    from urllib.parse import urlparse

    from torch.hub import download_url_to_file, get_dir
    model_dir = model_dir or osp.join(get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, osp.basename(urlparse(url).path))
    if not osp.exists(cached):
        download_url_to_file(url, cached, None, progress=progress)
    return cached


def load_from_http_data_only(filename: str, map_location: Any = None, model_dir: Optional[str] = None,
                             progress: bool = False) -> Any:
    """mmengine's ``load_from_http`` (rank 0 downloads first when distributed), reading with
    :func:`load_checkpoint_file`."""
    from mmengine.dist import get_dist_info
    rank, world_size = get_dist_info()
    if rank == 0:
        cached = _download(filename, model_dir, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            cached = _download(filename, model_dir, progress)
    return load_checkpoint_file(cached, map_location)


def extract_state_dict(checkpoint: Any, prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The state dict of a loaded checkpoint, with ``prefix`` (e.g. ``'backbone.'``) selected and stripped."""
    if isinstance(checkpoint, dict):
        for key in ('state_dict', 'model', 'state_dict_ema'):
            if key in checkpoint and isinstance(checkpoint[key], dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict):
        raise TypeError(f'checkpoint holds no state dict (found {type(checkpoint).__name__})')
    state_dict = collections.OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v) for k, v in checkpoint.items())
    if prefix:
        if not prefix.endswith('.'):
            prefix += '.'
        selected = collections.OrderedDict(
            (k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix))
        if not selected:
            raise KeyError(f'no key in the checkpoint starts with prefix {prefix!r}')
        state_dict = selected
    return state_dict


def load_pretrained(module: torch.nn.Module, filename: str, prefix: Optional[str] = None,
                    map_location: Any = 'cpu') -> None:
    """Load published weights into ``module``, logging missing and unexpected keys by name."""
    from mmengine.runner.checkpoint import load_state_dict
    if not isinstance(filename, str) or '://' in filename:
        raise ValueError(f'checkpoint must be a local file path, got {filename!r} (download it first)')
    if not osp.isfile(osp.expanduser(filename)):
        raise FileNotFoundError(
            f'checkpoint file {filename!r} does not exist: download the published weights there, or pass '
            "init_cfg=None (e.g. --cfg-options model.backbone.init_cfg=None) to train from scratch")
    state_dict = extract_state_dict(load_checkpoint_file(filename, map_location), prefix)
    print_log(f'load {"" if not prefix else prefix + "* of "}{filename} into {type(module).__name__}',
              logger='current')
    load_state_dict(module, state_dict, strict=False, logger='current')
