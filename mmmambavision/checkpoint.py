"""Loading published MambaVision weights without letting a checkpoint run code.

Two published layouts are supported:

* ImageNet files (``mambavision_*_1k.pth.tar``): timm-trainer dicts with ``state_dict`` (including the
  classification ``head.*`` and final ``norm.*``, which a backbone does not have) and an ``argparse.Namespace``
  under ``args``;
* mmdet / mmseg files: ``state_dict`` with ``backbone.`` / ``neck.`` / ... prefixes and mmengine ``meta``.

Files are untrusted. They are read with torch's ``weights_only`` unpickler, with ``argparse.Namespace`` (plain
attribute data) allowed. Should a file hold mmengine bookkeeping that ``weights_only`` rejects (a
``message_hub`` with ``HistoryBuffer`` objects), it is read again with :class:`RestrictedUnpickler`, which
resolves only an allow-list of data types, replaces the known bookkeeping objects by inert placeholders and
refuses every other global: nothing in the file is ever called.
"""
import argparse
import collections
import io
import os.path as osp
import pickle
from typing import Any, Dict, Optional

import torch
from mmengine.logging import print_log
from mmengine.runner.checkpoint import load_state_dict

_SAFE_GLOBALS = [argparse.Namespace]


class _Inert:
    """Placeholder for a bookkeeping object that is dropped on load; it never runs anything."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _inert_getattr(obj, name, *default):
    if not (obj is _Inert or isinstance(obj, _Inert)):
        raise pickle.UnpicklingError(f'refusing getattr({type(obj).__name__}, {name!r}) in a checkpoint')
    return _Inert()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only data types; see the module docstring."""

    _ALLOWED = {
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('collections', 'Counter'): collections.Counter,  # torch's MultiStepLR milestones (mmengine schedulers)
        ('argparse', 'Namespace'): argparse.Namespace,
        ('builtins', 'set'): set,
        ('builtins', 'frozenset'): frozenset,
        ('builtins', 'slice'): slice,
        ('builtins', 'complex'): complex,
        ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
        ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
        ('torch', 'Size'): torch.Size,
    }
    _INERT = {
        ('mmengine.logging.history_buffer', 'HistoryBuffer'): _Inert,
        ('builtins', 'getattr'): _inert_getattr,
    }

    def find_class(self, module: str, name: str) -> Any:
        module = {'__builtin__': 'builtins', 'copy_reg': 'copyreg'}.get(module, module)  # protocol-2 names
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if (module, name) in self._INERT:
            return self._INERT[(module, name)]
        if module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module in ('numpy', 'numpy.core.multiarray', 'numpy._core.multiarray') and name in (
                '_reconstruct', 'scalar', 'dtype', 'ndarray'):
            import numpy
            try:
                from numpy._core import multiarray
            except ImportError:  # numpy < 2
                from numpy.core import multiarray
            return {'_reconstruct': multiarray._reconstruct, 'scalar': multiarray.scalar,
                    'dtype': numpy.dtype, 'ndarray': numpy.ndarray}[name]
        if module.startswith('numpy.dtypes') and name.endswith('DType'):
            import numpy.dtypes
            return getattr(numpy.dtypes, name)
        if (module, name) == ('_codecs', 'encode'):
            import _codecs
            return _codecs.encode
        raise pickle.UnpicklingError(
            f'refusing to load a checkpoint that references {module}.{name}: unpickling it could execute code')


class _RestrictedPickleModule:
    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError
    load = None  # torch only uses Unpickler for zip checkpoints


def load_untrusted_checkpoint(filename: str, map_location: Any = 'cpu') -> Any:
    """Load a checkpoint file from an untrusted source without executing code. Raises on a missing file."""
    if not isinstance(filename, str) or '://' in filename:
        raise ValueError(f'checkpoint must be a local file path, got {filename!r} (download it first)')
    if not osp.isfile(filename):
        raise FileNotFoundError(
            f'checkpoint file {filename!r} does not exist: download the published weights there, or pass '
            "init_cfg=None (e.g. --cfg-options model.backbone.init_cfg=None) to train from scratch")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as weights_only_error:
        try:
            return torch.load(filename, map_location=map_location, weights_only=False,
                              pickle_module=_RestrictedPickleModule)
        except (pickle.UnpicklingError, RuntimeError) as restricted_error:
            raise pickle.UnpicklingError(
                f'refusing to load {filename!r}: it is not a plain weights file. {restricted_error}') \
                from weights_only_error


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
    state_dict = extract_state_dict(load_untrusted_checkpoint(filename, map_location), prefix)
    print_log(f'load {"" if not prefix else prefix + "* of "}{filename} into {type(module).__name__}',
              logger='current')
    load_state_dict(module, state_dict, strict=False, logger='current')
