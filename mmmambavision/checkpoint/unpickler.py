"""The data-only unpickler behind :mod:`mmmambavision.checkpoint`: the allow-list, the HistoryBuffer rebuild,
the pre-load scan of a file's globals (see the package docstring for the policy)."""
import _compat_pickle
import argparse
import collections
import functools
import io
import pickle
import pickletools
import zipfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

__all__ = [
    'CheckpointUnpickler', 'UnsafeCheckpointError', 'allowed_globals', 'globals_in_checkpoint',
    'is_torchscript_archive', 'refusal', 'refused_globals_in_checkpoint', 'restricted_pickle'
]

_HISTORY_BUFFER = ('mmengine.logging.history_buffer', 'HistoryBuffer')
_GETATTR = ('builtins', 'getattr')
# torch.load renames these before the unpickler sees them (torch.serialization's load_module_mapping)
_TORCH_MODULE_MAPPING = {'torch.tensor': 'torch._tensor'}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint names a global (or asks for a call) that a plain runner checkpoint never does."""


def refusal(what: str, filename: Optional[str] = None) -> UnsafeCheckpointError:
    where = f'{filename}: ' if filename else ''
    return UnsafeCheckpointError(
        f'{where}refusing to load this checkpoint: it references {what}, which is not part of a plain runner '
        'checkpoint (tensors, numpy data, mmengine HistoryBuffers, plain containers). It was not executed: the '
        'loader calls nothing outside its allow-list. Load only checkpoints written by torch.save / mmengine '
        'runners; `python -m mmmambavision.checkpoint FILE` lists what a file references.')


def _normalise(module: str, name: str) -> Tuple[str, str]:
    """The name Python 3 gives a protocol-2 global (``__builtin__.getattr`` -> ``builtins.getattr``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return _TORCH_MODULE_MAPPING.get(module, module), name


def _numpy_multiarray():
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return multiarray


def _numpy_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _torch_allowed() -> Dict[Tuple[str, str], Any]:
    """The ``torch.*`` part of torch's own ``weights_only`` allow-list (user additions excluded)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        allowed = {name: obj for name, obj in _get_allowed_globals().items() if name.startswith('torch.')}
    except ImportError:  # pragma: no cover - torch without the weights_only unpickler module
        allowed = {f'torch._utils.{f}': getattr(torch._utils, f) for f in (
            '_rebuild_tensor', '_rebuild_tensor_v2', '_rebuild_parameter') if hasattr(torch._utils, f)}
        allowed.update({'torch.Size': torch.Size, 'torch.device': torch.device})
        allowed.update({str(t): t for t in vars(torch).values() if isinstance(t, torch.dtype)})
    return {tuple(name.rsplit('.', 1)): obj for name, obj in allowed.items()}


@functools.lru_cache(maxsize=1)
def _allowed() -> Dict[Tuple[str, str], Any]:
    import _codecs

    import numpy
    multiarray = _numpy_multiarray()
    allowed: Dict[Tuple[str, str], Any] = {
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('collections', 'Counter'): collections.Counter,
        ('argparse', 'Namespace'): argparse.Namespace,
        ('builtins', 'set'): set,
        ('builtins', 'frozenset'): frozenset,
        ('builtins', 'complex'): complex,
        ('builtins', 'bytearray'): bytearray,
        ('_codecs', 'encode'): _codecs.encode,
        ('numpy', 'ndarray'): numpy.ndarray,
        ('numpy', 'dtype'): numpy.dtype,
        _GETATTR: _statistics_method_getattr,
        _HISTORY_BUFFER: None,  # each unpickler rebuilds HistoryBuffers with its own class (CheckpointUnpickler)
    }
    for core in ('numpy._core', 'numpy.core'):  # numpy >= 2 and numpy 1 files
        allowed[(f'{core}.multiarray', '_reconstruct')] = multiarray._reconstruct
        allowed[(f'{core}.multiarray', 'scalar')] = multiarray.scalar
        allowed[(f'{core}.numeric', '_frombuffer')] = _numpy_frombuffer()  # arrays in protocol-5 pickles
    dtypes = getattr(numpy, 'dtypes', None)  # numpy >= 1.25
    if dtypes is not None:
        for name, cls in vars(dtypes).items():
            if name.endswith('DType') and isinstance(cls, type):
                allowed[('numpy.dtypes', name)] = cls
    allowed.update(_torch_allowed())
    return allowed


def allowed_globals() -> List[str]:
    """Every global name a checkpoint may reference, sorted (``builtins.getattr`` only through its guard)."""
    return sorted(f'{module}.{name}' for module, name in _allowed())


def _is_allowed(module: str, name: str) -> bool:
    """Whether a (normalised) global name is allowed."""
    return (module, name) in _allowed() or _is_statistics_method_name(module, name)


def _is_statistics_method_name(module: str, name: str) -> bool:
    """``mmengine.logging.history_buffer.HistoryBuffer.<statistics method>``, as protocols >= 4 write it."""
    if module != _HISTORY_BUFFER[0] or not name.startswith(_HISTORY_BUFFER[1] + '.'):
        return False
    return name.split('.', 1)[1] in _statistics_methods()


# ---------------------------------------------------------------------------------------------------------------
# HistoryBuffer, rebuilt from its data


def _history_buffer_class():
    from mmengine.logging.history_buffer import HistoryBuffer
    return HistoryBuffer


def _statistics_methods() -> Dict[str, Callable]:
    """HistoryBuffer's registered statistics methods that are methods of the class itself, by name."""
    HistoryBuffer = _history_buffer_class()
    HistoryBuffer()  # registers the default statistics (min, max, current, mean) in the class's table
    return {name: method for name, method in HistoryBuffer._statistics_methods.items()
            if vars(HistoryBuffer).get(name) is method}


class _HistoryBufferBeingRebuilt:
    """Marker base of the class an unpickler hands out for ``HistoryBuffer`` (see CheckpointUnpickler)."""


def _statistics_method_getattr(obj: Any, name: Any, *default: Any) -> Any:
    """``builtins.getattr`` as a checkpoint may use it: a HistoryBuffer's statistics method, looked up by name."""
    if default or not (isinstance(obj, type) and issubclass(obj, _HistoryBufferBeingRebuilt)):
        owner = getattr(obj, '__qualname__', None) or type(obj).__qualname__
        raise refusal(f'builtins.getattr({owner}, {name!r}): getattr is allowed only for HistoryBuffer\'s '
                       'statistics methods')
    methods = _statistics_methods()
    if name not in methods:
        raise refusal(f'builtins.getattr(HistoryBuffer, {name!r}): {name!r} is not one of HistoryBuffer\'s '
                       f'statistics methods ({", ".join(sorted(methods))})')
    return methods[name]


_HISTORY_BUFFER_DATA = {'max_length': int, '_max_length': int}
_HISTORY_BUFFER_ARRAYS = ('_log_history', '_count_history')


def _rebuild_history_buffer(buffer: Any, state: Any) -> None:
    """Give a HistoryBuffer under construction its data, checking the state; it becomes a plain HistoryBuffer."""
    import numpy
    if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
        state = state[0]
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise refusal(f'a HistoryBuffer state of type {type(state).__name__} (a dict of its data is expected)')
    data = dict(state)
    methods = data.pop('statistics_methods', {})
    if not isinstance(methods, dict):
        raise refusal(f'HistoryBuffer statistics_methods of type {type(methods).__name__}')
    own = _statistics_methods()
    for name, method in methods.items():
        if own.get(name) is not method:
            raise refusal(f'a HistoryBuffer statistics method {name!r} = {method!r}, which is not '
                           f'HistoryBuffer.{name}')
    for key, value in data.items():
        if key in _HISTORY_BUFFER_ARRAYS:
            if not (type(value) is numpy.ndarray and value.dtype.kind in 'biuf'):
                raise refusal(f'HistoryBuffer.{key} of type {type(value).__name__} (a numeric numpy array is '
                               'expected)')
        elif key in _HISTORY_BUFFER_DATA:
            if type(value) is not _HISTORY_BUFFER_DATA[key]:
                raise refusal(f'HistoryBuffer.{key} of type {type(value).__name__}')
        else:
            raise refusal(f'HistoryBuffer attribute {key!r} (a HistoryBuffer holds only '
                           f'{", ".join(_HISTORY_BUFFER_ARRAYS + tuple(_HISTORY_BUFFER_DATA))} and its statistics '
                           'methods)')
    buffer.__dict__.update(data)
    buffer.__class__ = _history_buffer_class()


# ---------------------------------------------------------------------------------------------------------------
# The unpickler


class CheckpointUnpickler(pickle._Unpickler):
    """An unpickler that rebuilds the data of a runner checkpoint and refuses everything else.

    Globals resolve only from the allow-list of the module docstring (:func:`allowed_globals`); any other name
    raises :class:`UnsafeCheckpointError` without being imported. ``BUILD`` (setting an object's state) is allowed
    on ``OrderedDict`` / ``Counter`` / ``argparse.Namespace`` (attribute dicts with string keys), numpy arrays and
    dtypes (their own ``__setstate__``) and HistoryBuffers under construction; anything else is refused. This is
    Python's own unpickler (``pickle._Unpickler``) with those two points replaced: the C unpickler's opcodes cannot
    be overridden, and a checkpoint's pickle is small (tensor data lives outside it).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *args, **kwargs):
        super().__init__(file, *args, **kwargs)
        self._buffers: List[Any] = []
        buffers = self._buffers
        HistoryBuffer = _history_buffer_class()

        class HistoryBufferBeingRebuilt(HistoryBuffer, _HistoryBufferBeingRebuilt):
            """Created empty by NEWOBJ, turned into a HistoryBuffer by its checked state (BUILD)."""

            def __new__(cls, *args, **kwargs):
                if args or kwargs:
                    raise refusal('a call of HistoryBuffer(...) (runner checkpoints hold its state only)')
                buffer = object.__new__(cls)
                buffers.append(buffer)
                return buffer

            def __init__(self, *args, **kwargs):  # a REDUCE call; runners pickle HistoryBuffers by their state
                raise refusal('a call of HistoryBuffer(...) (runner checkpoints hold its state only)')

        self._history_buffer = HistoryBufferBeingRebuilt

    def find_class(self, module: str, name: str) -> Any:
        module, name = _normalise(module, name)
        if (module, name) == _HISTORY_BUFFER:
            return self._history_buffer
        if _is_statistics_method_name(module, name):  # protocol >= 4 names HistoryBuffer.mean directly
            return _statistics_methods()[name.split('.', 1)[1]]
        allowed = _allowed()
        if (module, name) not in allowed:
            raise refusal(f'{module}.{name}')
        return allowed[(module, name)]

    def _load_build(self) -> None:
        import numpy
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _HistoryBufferBeingRebuilt):
            _rebuild_history_buffer(inst, state)
        elif type(inst) in (collections.OrderedDict, collections.Counter, argparse.Namespace):
            if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
                state = state[0]
            if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
                raise refusal(f'a {type(inst).__name__} state of type {type(state).__name__}')
            inst.__dict__.update(state)
        elif type(inst) is numpy.ndarray or isinstance(inst, numpy.dtype):
            inst.__setstate__(state)
        else:
            raise refusal(f'setting the state of a {type(inst).__module__}.{type(inst).__qualname__} object')

    dispatch[pickle.BUILD[0]] = _load_build

    def load(self) -> Any:
        result = super().load()
        unbuilt = [buffer for buffer in self._buffers if isinstance(buffer, _HistoryBufferBeingRebuilt)]
        if unbuilt:
            raise refusal(f'{len(unbuilt)} HistoryBuffer object(s) without their data')
        return result


def _load(file, **kwargs) -> Any:
    return CheckpointUnpickler(file, **kwargs).load()


def _loads(data: bytes, **kwargs) -> Any:
    return _load(io.BytesIO(data), **kwargs)


class restricted_pickle:  # noqa: N801 - stands in for the pickle module in torch.load(pickle_module=...)
    """What ``torch.load(..., pickle_module=restricted_pickle)`` needs of a pickle module."""
    Unpickler = CheckpointUnpickler
    UnpicklingError = pickle.UnpicklingError
    load = staticmethod(_load)
    loads = staticmethod(_loads)


# ---------------------------------------------------------------------------------------------------------------
# Scanning a file's pickles for the globals they name (nothing is loaded)

_STRING_OPS = {'STRING', 'BINSTRING', 'SHORT_BINSTRING', 'UNICODE', 'BINUNICODE', 'SHORT_BINUNICODE',
               'BINUNICODE8'}


def _globals_in_pickle(data) -> List[Tuple[str, str]]:
    """``(module, name)`` of each global one pickle names, read from its opcodes; stops at its STOP.

    ``GLOBAL`` carries the name; for ``STACK_GLOBAL`` the two strings pushed before it are taken (directly or
    through the memo), which is how picklers write it; one whose strings cannot be followed is left to the
    unpickler, whose own check does not depend on this scan.
    """
    found: List[Tuple[str, str]] = []
    memo: Dict[int, Any] = {}
    pushed: List[Any] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name == 'GLOBAL':
            module, name = arg.split(' ', 1)
            found.append(_normalise(module, name))
            pushed.append(None)
        elif op.name == 'STACK_GLOBAL':
            if len(pushed) >= 2 and isinstance(pushed[-2], str) and isinstance(pushed[-1], str):
                found.append(_normalise(pushed[-2], pushed[-1]))
            pushed.append(None)
        elif op.name in _STRING_OPS:
            pushed.append(arg.decode('latin-1') if isinstance(arg, bytes) else arg)
        elif op.name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
            memo[arg] = pushed[-1] if pushed else None
        elif op.name == 'MEMOIZE':
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ('GET', 'BINGET', 'LONG_BINGET'):
            pushed.append(memo.get(arg))
        else:
            pushed.append(None)
        del pushed[:-2]
    return found


def _is_zip(filename: str) -> bool:
    with open(filename, 'rb') as f:
        return zipfile.is_zipfile(f)


def _globals_in_file(filename: str) -> List[Tuple[str, str]]:
    names: List[Tuple[str, str]] = []
    if _is_zip(filename):
        with zipfile.ZipFile(filename) as archive:
            for entry in archive.namelist():
                if entry.split('/', 1)[-1] == 'data.pkl':
                    names += _globals_in_pickle(archive.read(entry))
    else:
        with open(filename, 'rb') as f:
            for _ in range(5):  # torch's legacy format: magic number, protocol, sys info, data, storage keys
                try:
                    names += _globals_in_pickle(f)
                except Exception:  # the storages' raw bytes, or the end of the file
                    break
    return list(dict.fromkeys(names))


def globals_in_checkpoint(filename: str) -> List[str]:
    """The globals (``module.name``, protocol-2 names as Python 3 reads them) a checkpoint file's pickles name.

    Nothing is loaded. A torch zip file's ``data.pkl`` is read in full; for other files (torch's legacy format,
    a raw pickle) the pickles at the start of the file are read until one cannot be parsed.
    """
    return [f'{module}.{name}' for module, name in _globals_in_file(filename)]


def refused_globals_in_checkpoint(filename: str) -> List[str]:
    """The globals of :func:`globals_in_checkpoint` that the loader refuses."""
    return [f'{module}.{name}' for module, name in _globals_in_file(filename) if not _is_allowed(module, name)]


def is_torchscript_archive(filename: str) -> bool:
    if not _is_zip(filename):
        return False
    with zipfile.ZipFile(filename) as archive:
        return any(entry.split('/', 1)[-1] == 'constants.pkl' for entry in archive.namelist())
