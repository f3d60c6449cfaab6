"""Selective scan (Mamba's S6 recurrence) with automatic backend dispatch.

``selective_scan`` has the semantics and dtype rules of mamba-ssm's ``selective_scan_fn`` and picks, once per
process and device type, the fastest backend that works here:

* ``cuda``   — mamba-ssm's compiled ``selective_scan_cuda`` extension behind our own autograd Function
  (CUDA tensors, when the extension imports; the ``mamba_ssm`` Python package is never imported);
* ``triton`` — our own Triton kernels, forward and backward (CUDA tensors, nothing to compile);
* ``torch``  — a chunked time-major loop with an analytic backward (any device);
* ``chunked`` — the chunked matrix form of :mod:`.scan_chunked`: plain tensor ops, no loop over time steps
  (any device; never chosen automatically).

Override with ``backend=`` or the environment variable ``MMMV_SCAN_BACKEND`` (``auto``, ``cuda``, ``triton``,
``torch``, ``chunked``); the argument wins over the variable. While ``torch.export`` or ``torch.onnx.export`` traces
a model, every call runs the chunked form whatever the setting, so that the scan exports as plain tensor ops. Under
``torch.compile`` the call goes through the custom op ``mmmambavision::selective_scan_fwd`` (:mod:`.custom_op`):
one node in the compiled graph, no graph break.
"""
import importlib
import logging
import os
import sys
import threading
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .custom_op import _gate, _gated_dtype, _triton_bc, selective_scan_op
from .scan_chunked import selective_scan_chunked
from .scan_reference import expand_bc
from .scan_torch import selective_scan_torch

BACKENDS = ('cuda', 'triton', 'torch', 'chunked')
ENV_VAR = 'MMMV_SCAN_BACKEND'
_ALLOWED = ('auto',) + BACKENDS

_lock = threading.Lock()
_probe_cache: Dict[str, Tuple[bool, str]] = {}
_selected: Dict[Tuple[str, Optional[str]], str] = {}


def _log(message: str) -> None:
    try:
        from mmengine.logging import print_log
    except ImportError:  # mmengine is a dependency, but the op must not need it
        logging.getLogger(__name__).info(message)
    else:
        print_log(message, logger='current', level=logging.INFO)


def _probe(name: str) -> Tuple[bool, str]:
    """Whether the backend's module imports here (cached; runs at first use, never at package import)."""
    with _lock:
        if name not in _probe_cache:
            module = {'cuda': 'selective_scan_cuda', 'triton': 'triton'}[name]
            try:
                importlib.import_module(module)
                if name == 'triton':
                    importlib.import_module('mmmambavision.ops.triton')
                _probe_cache[name] = (True, '')
            except Exception as error:  # ImportError, or an OSError/undefined symbol from a stale build
                _probe_cache[name] = (False, f'{module} does not import ({type(error).__name__}: {error})')
        return _probe_cache[name]


def cuda_kernel_available() -> bool:
    """True when mamba-ssm's compiled ``selective_scan_cuda`` imports."""
    return _probe('cuda')[0]


def triton_available() -> bool:
    """True when Triton and our kernels import."""
    return _probe('triton')[0]


def _triton_interpret() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def _check_name(backend: Optional[str], source: str) -> str:
    name = 'auto' if backend is None else str(backend).strip().lower()
    if name not in _ALLOWED:
        raise ValueError(f'{source} must be one of {_ALLOWED} (or None for auto); got {backend!r}')
    return name


def _requested() -> Tuple[str, str]:
    value = os.environ.get(ENV_VAR)
    if value is None or value.strip() == '':
        return 'auto', ''
    return _check_name(value, f'environment variable {ENV_VAR}'), f' ({ENV_VAR}={value})'


def _require(name: str, device_type: str, source: str) -> None:
    """Raise a clear error when an explicitly requested backend cannot run on this device."""
    if name in ('torch', 'chunked'):
        return
    if name == 'cuda' and device_type != 'cuda':
        raise RuntimeError(f"selective_scan backend 'cuda' was requested{source} but the tensors are on "
                           f"'{device_type}'; it runs on CUDA tensors only (use 'torch' or 'auto')")
    if name == 'triton' and device_type != 'cuda' and not (device_type == 'cpu' and _triton_interpret()):
        raise RuntimeError(f"selective_scan backend 'triton' was requested{source} but the tensors are on "
                           f"'{device_type}'; it runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1)")
    ok, why = _probe(name)
    if not ok:
        hint = ('build mamba-ssm (selective_scan_cuda)' if name == 'cuda' else 'pip install triton')
        raise RuntimeError(f"selective_scan backend '{name}' was requested{source} but {why}; {hint}, "
                           f"or use backend='auto'")


def selected_backend(device: Union[str, torch.device, None] = None, backend: Optional[str] = None) -> str:
    """The backend ``selective_scan`` uses for tensors on ``device``.

    Args:
        device: a device or its type ('cuda', 'cpu', ...); None means 'cpu'.
        backend: 'auto'/None, 'cuda', 'triton', 'torch' or 'chunked'; overrides ``MMMV_SCAN_BACKEND``.

    Returns:
        The backend name. An automatic choice is made once per process and device type, and logged once.

    Raises:
        ValueError: an unknown backend name (argument or environment variable).
        RuntimeError: an explicitly requested backend that cannot run on this device.
    """
    device_type = torch.device(device).type if device is not None else 'cpu'
    name = _check_name(backend, 'selective_scan argument backend')
    source = f" (backend='{name}')"
    if name == 'auto':
        name, source = _requested()
    if name != 'auto':
        _require(name, device_type, source)
        return name
    key = (device_type, os.environ.get(ENV_VAR))
    with _lock:
        chosen = _selected.get(key)
    if chosen is not None:
        return chosen
    reasons = []
    chosen = 'torch'
    if device_type == 'cuda':
        for candidate in ('cuda', 'triton'):
            ok, why = _probe(candidate)
            if ok:
                chosen = candidate
                break
            reasons.append(why)
    with _lock:
        first = key not in _selected
        _selected.setdefault(key, chosen)
    if first:
        note = f" ({'; '.join(reasons)})" if reasons else ''
        _log(f"mmmambavision selective_scan: using the '{chosen}' backend for {device_type} tensors{note}")
    return chosen


def _check_inputs(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f'u and delta must both be (batch, dim, length); got {tuple(u.shape)} and '
                         f'{tuple(delta.shape)}')
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f'A must be (dim, d_state) = ({dim}, n); got {tuple(A.shape)}')
    if A.is_complex():
        raise NotImplementedError('complex A is not supported')
    for name, tensor in (('B', B), ('C', C)):
        ok = ((tensor.dim() == 3 and tensor.shape == (batch, A.shape[1], length))
              or (tensor.dim() == 4 and tensor.shape[0] == batch and tensor.shape[2:] == (A.shape[1], length)
                  and dim % tensor.shape[1] == 0)
              or (tensor.dim() == 2 and tensor.shape == A.shape))
        if not ok:
            raise ValueError(f'{name} must be (batch, d_state, length), (batch, groups, d_state, length) with '
                             f'dim divisible by groups, or (dim, d_state); got {tuple(tensor.shape)} for u '
                             f'{tuple(u.shape)} and A {tuple(A.shape)}')
    for name, tensor in (('D', D), ('delta_bias', delta_bias)):
        if tensor is not None and tensor.shape != (dim,):
            raise ValueError(f'{name} must be ({dim},); got {tuple(tensor.shape)}')
    if z is not None and z.shape != u.shape:
        raise ValueError(f'z must have the shape of u {tuple(u.shape)}; got {tuple(z.shape)}')


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                   return_last_state: bool = False,
                   backend: Optional[str] = None) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Selective scan with mamba-ssm ``selective_scan_fn`` semantics, differentiable.

    ``Δ = softplus(delta + delta_bias)`` (softplus only with ``delta_softplus``),
    ``h_t = exp(Δ_t·A)·h_{t-1} + Δ_t·u_t·B_t``, ``y_t = C_t·h_t + D·u_t``, then ``y *= silu(z)`` when z is given.
    Math in fp32 whatever the inputs (fp16, bf16 or fp32); output in u's dtype.

    Args:
        u, delta: (batch, dim, length).
        A: (dim, d_state), fp32.
        B, C: (batch, d_state, length), (batch, groups, d_state, length) (channel c reads group
            c // (dim / groups)), or time-invariant (dim, d_state).
        D, delta_bias: (dim,) fp32, optional.
        z: (batch, dim, length) gate, optional.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state h_L, (batch, dim, d_state) fp32, which (as in
            mamba-ssm) carries no gradient.
        backend: None/'auto', 'cuda', 'triton', 'torch' or 'chunked'; overrides the ``MMMV_SCAN_BACKEND``
            variable. While torch.export or torch.onnx.export traces, the chunked form runs whatever this says.

    Returns:
        y (batch, dim, length) in u's dtype, or ``(y, last_state)``.
    """
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, backend)
    if _exporting():  # first: exporting also counts as compiling
        return _exported(*args)
    if torch.compiler.is_compiling():
        return _traced(*args)
    if _in_onnx_export():  # the TorchScript-based exporter (never under dynamo, which cannot trace this check)
        return _exported(*args)
    return _selective_scan(*args)


def _exported(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, backend):
    """The scan while torch.export or torch.onnx.export traces: the chunked form, plain tensor ops."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    _check_name(backend, 'selective_scan argument backend')
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                  loop=export_loop())


def _traced(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, backend):
    """The scan under torch.compile: the custom op ``mmmambavision::selective_scan_fwd`` (:mod:`.custom_op`), which
    dynamo traces as one node of the graph, with its backward op wired through ``register_autograd``. The backend
    is resolved here, at trace time, and goes into the graph as a constant."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = _backend_at_trace_time(u.device.type, backend)
    differentiable = _needs_grad(u, delta, A, B, C, D, z, delta_bias)
    y, last_state = selective_scan_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, name, differentiable)
    return (y, last_state) if return_last_state else y


def _exporting() -> bool:
    """True while torch.export traces. Reads the flag behind ``torch.compiler.is_exporting()`` instead of calling
    it: dynamo in torch 2.11 folds that call to True under every torch.compile trace (2.13 reads the flag), which
    would send compiled models down the export path."""
    flag = getattr(torch.compiler, '_is_exporting_flag', None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)


def _needs_grad(*tensors: Optional[Tensor]) -> bool:
    """Whether a gradient can flow through the scan: autograd on and an input that requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


_export_check = None


def _in_onnx_export() -> bool:
    """``torch.onnx.is_in_onnx_export()`` at a fraction of its cost per call (it imports two modules each time);
    False without an import of torch.onnx (no export can be under way then; torch imports it lazily)."""
    global _export_check
    if 'torch.onnx' not in sys.modules:
        return False
    if _export_check is None:
        try:
            from torch.onnx._internal.exporter import _flags
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
            _flags._is_onnx_exporting, GLOBALS.in_onnx_export  # noqa: B018 - both flags exist here
            _export_check = lambda: _flags._is_onnx_exporting or GLOBALS.in_onnx_export  # noqa: E731
        except (ImportError, AttributeError):  # pragma: no cover - other torch layouts: the public function
            _export_check = torch.onnx.is_in_onnx_export
    return bool(_export_check())


def export_loop() -> str:
    """How the chunked scan visits its chunks in the export under way: ``'scan'`` (torch's scan operator, one ONNX
    ``Scan`` node) under torch.export, which the ONNX exporter of torch >= 2.9 uses; ``'python'`` (the chunks
    unrolled) under the TorchScript-based ONNX exporter, which cannot trace that operator."""
    return 'scan' if _exporting() else 'python'


def _backend_at_trace_time(device_type: str, backend: Optional[str]) -> str:
    """``selected_backend``, run by dynamo as plain Python while it traces, its result a constant of the graph
    (it takes a lock and may import modules, which dynamo would otherwise break the graph at). The backend of a
    compiled graph is the one chosen when it was compiled."""
    return selected_backend(device_type, backend)


# what torch.compiler.assume_constant_result(fn) sets on fn, without importing dynamo along with this package
_backend_at_trace_time._dynamo_marked_constant = True


def _selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, backend):
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = selected_backend(u.device, backend)
    # Without a gradient to compute, the compiled backends launch their forward directly (no autograd Function,
    # no saved state): eager inference is bound by host time per call.
    differentiable = _needs_grad(u, delta, A, B, C, D, z, delta_bias)
    if name == 'cuda':
        from .scan_cuda import selective_scan_cuda_fn
        y, last_state = selective_scan_cuda_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                               differentiable=differentiable)
        return (y, last_state) if return_last_state else y
    batch, dim, length = u.shape
    out_dtype = _gated_dtype(u, z)
    if name == 'chunked':
        y, last_state = selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                               return_last_state=True)
        return (y, last_state.detach()) if return_last_state else y  # as the other backends: no gradient
    if name == 'triton':
        from .triton import selective_scan_triton
        # (b, n, L) B and C go as they are (the kernels read them as one group): a view made here would be one
        # more autograd node per call
        B, C = _triton_bc(B, C, u)
        y, last_state = selective_scan_triton(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype,
                                              differentiable=differentiable)
    else:
        y, last_state = selective_scan_torch(u, delta, A, expand_bc(B, batch, dim, length),
                                             expand_bc(C, batch, dim, length), D, delta_bias, delta_softplus,
                                             out_dtype)
    y = _gate(y, z, u.dtype)
    return (y, last_state) if return_last_state else y
