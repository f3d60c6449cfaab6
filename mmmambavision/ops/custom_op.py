"""The selective scan as two ``torch.library`` custom ops: what ``selective_scan`` calls under ``torch.compile``.

Dynamo cannot trace into the backends (a compiled extension, Triton launches, a loop over time steps that tracing
would unroll), but it traces a custom op as one node: its fake kernel gives the outputs' shapes, dtypes and strides
without running anything, and the compiled graph calls the real kernel. So the model compiles as one graph, the
scan included.

* ``mmmambavision::selective_scan_fwd(u, delta, A, B, C, D?, z?, delta_bias?, delta_softplus, backend,
  differentiable) -> (y, last_state, state, pre_gate)``: y in u's dtype, h_L (fp32; fp64 for fp64 inputs on the
  torch and chunked backends), and what the backward needs when ``differentiable`` (otherwise 0-element tensors):
  ``state`` is the cuda backend's chunk states ``x``, the Triton backend's checkpoints or the torch backend's
  chunk checkpoints (the chunked backend recomputes everything and keeps nothing); ``pre_gate`` is y before the
  ``silu(z)`` gate (with z, on the cuda, triton and torch backends).
* ``mmmambavision::selective_scan_bwd(grad_y, u, delta, A, B, C, D?, z?, delta_bias?, state, pre_gate,
  delta_softplus, backend, needs_grad) -> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)``: each gradient in its
  input's shape and dtype, contiguous, where ``needs_grad`` (one bool per tensor input) asks for it and the input
  is given; a 0-element tensor in its place otherwise. cuda: the extension's backward; triton: the backward
  kernels; torch: the backend's analytic backward from the saved checkpoints; chunked: autograd through the
  chunked form, its forward recomputed.

``register_autograd`` ties them together: the forward's ``setup_context`` saves the inputs, ``state`` and
``pre_gate``; its backward calls ``selective_scan_bwd`` and gives None for inputs that are None or need no
gradient. ``last_state`` carries no gradient (as in eager mode). ``backend`` is resolved before the call
(``selected_backend``): the ops never read the environment.
"""
from contextlib import contextmanager
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._C import DispatchKey

from .scan_chunked import selective_scan_chunked
from .scan_cuda import _prepare, cuda_backward, last_state_of
from .scan_reference import expand_bc
from .scan_torch import ChunkedSelectiveScan, _chunk_length

FWD_NAME = 'mmmambavision::selective_scan_fwd'
BWD_NAME = 'mmmambavision::selective_scan_bwd'
OP_BACKENDS = ('cuda', 'triton', 'torch', 'chunked')
INPUT_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')
CUDA_CHUNK = 2048  # steps per chunk of the cuda extension's saved states x


class _Ctx:
    """What ``ChunkedSelectiveScan``'s forward and backward read and write on their ctx, so that the ops can run
    them directly (inside an op's kernel autograd is off, and torch.func cannot run that Function)."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *tensors):
        pass


def _check_backend(backend: str) -> None:
    if backend not in OP_BACKENDS:
        raise ValueError(f'backend must be one of {OP_BACKENDS} (resolved, not auto); got {backend!r}')


def _groups(bc: Tensor, dim: int) -> int:
    """B/C groups as the grouped backends see them: (b, n, L) one, (d, n) one per channel."""
    return bc.shape[1] if bc.dim() == 4 else 1 if bc.dim() == 3 else dim


def _gated_dtype(u: Tensor, z: Optional[Tensor]) -> torch.dtype:
    """The dtype of y before the gate on the triton and torch backends (fp32 at least with z)."""
    return u.dtype if z is None else torch.promote_types(u.dtype, torch.float32)


def _state_dtype(u: Tensor, backend: str) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 and backend in ('torch', 'chunked') else torch.float32


def _triton_bc(B: Tensor, C: Tensor, u: Tensor) -> Tuple[Tensor, Tensor]:
    """B and C as the Triton backend gets them: (b, n, L) as they are, the others grouped (b, g, n, L)."""
    batch, dim, length = u.shape
    return tuple(t if t.dim() == 3 else expand_bc(t, batch, dim, length) for t in (B, C))


def _triton_plan(u: Tensor, A: Tensor, B: Tensor):
    """The Triton launch plan at u's, A's and B's sizes. Symbolic sizes (a compile with dynamic shapes) are
    specialised: ``int()`` of one installs a guard, so a new size compiles again. The plan comes from launch
    heuristics, not from a formula that could be traced."""
    from .triton.function import _plan
    batch, dim, length = (int(s) for s in u.shape)
    return _plan(batch, dim, dim // int(_groups(B, dim)), length, int(A.shape[1]))


def _gate(y: Tensor, z: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """``y·silu(z)`` in y's dtype, cast to ``dtype``: what the eager path does after the triton and torch
    backends."""
    return y if z is None else (y * F.silu(z.to(y.dtype))).to(dtype)


def _gate_backward(grad_y: Tensor, pre_gate: Tensor, z: Tensor) -> Tuple[Tensor, Tensor]:
    """The gradients of ``pre_gate`` and ``z`` through ``(pre_gate·silu(z)).to(u's dtype)``."""
    grad = grad_y.to(pre_gate.dtype)
    z_c = z.to(pre_gate.dtype)
    dz = torch.ops.aten.silu_backward(grad * pre_gate, z_c).to(z.dtype)
    return grad * F.silu(z_c), dz


def _unaliased(outputs: Sequence[Tensor], inputs: Sequence[Optional[Tensor]]) -> Tuple[Tensor, ...]:
    """The outputs, each copied where it shares memory with an input or an earlier output, or starts inside its
    memory (a custom op's outputs alias nothing, and fake kernels make tensors of their own: e.g. the Triton
    backward's gradients are views into one allocation)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if t is not None and t.numel()}
    result = []
    for t in outputs:
        if not t.numel():
            t = torch.empty_like(t)  # a placeholder of its own
        else:
            pointer = t.untyped_storage().data_ptr()
            if pointer in seen or t.storage_offset():
                t = t.clone()
                pointer = t.untyped_storage().data_ptr()
            seen.add(pointer)
        result.append(t)
    return tuple(result)


@torch.library.custom_op(FWD_NAME, mutates_args=())
def selective_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                       z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool, backend: str,
                       differentiable: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The scan on ``backend``: y, h_L and (when ``differentiable``) what ``selective_scan_bwd`` needs."""
    _check_backend(backend)
    empty = u.new_empty(0)
    state = pre_gate = empty
    batch, dim, length = u.shape
    if backend == 'cuda':
        import selective_scan_cuda
        prepared, _ = _prepare(u, delta, A, B, C, D, z, delta_bias)
        results = selective_scan_cuda.fwd(*prepared, delta_softplus)
        y, x = (results[2] if z is not None else results[0]), results[1]
        last = last_state_of(x, prepared[3])
        if differentiable:
            state = x
            pre_gate = results[0] if z is not None else empty
    elif backend == 'triton':
        from .triton.function import _KERNELS, _forward
        B_t, C_t = _triton_bc(B, C, u)
        _, y, last, ckpt, _ = _forward(_KERNELS.get(), u, delta, A, B_t, C_t, D, delta_bias, delta_softplus,
                                       _gated_dtype(u, z), store_ckpt=differentiable)
        if differentiable:
            state = ckpt
            pre_gate = y if z is not None else empty
        y = _gate(y, z, u.dtype)
    elif backend == 'torch':
        ctx = _Ctx()
        y, last = ChunkedSelectiveScan.forward(ctx, u, delta, A, expand_bc(B, batch, dim, length),
                                               expand_bc(C, batch, dim, length), D, delta_bias, delta_softplus,
                                               _gated_dtype(u, z))
        if differentiable:
            state = ctx.saved_tensors[-1]
            pre_gate = y if z is not None else empty
        y = _gate(y, z, u.dtype)
    else:
        y, last = selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=True)
    return _unaliased((y.contiguous(), last.contiguous(), state, pre_gate), (u, delta, A, B, C, D, z, delta_bias))


@selective_scan_fwd.register_fake
def _selective_scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, differentiable):
    _check_backend(backend)
    batch, dim, length = u.shape
    dstate = A.shape[1]
    state_dtype = _state_dtype(u, backend)
    y = u.new_empty(u.shape)
    last = u.new_empty((batch, dim, dstate), dtype=state_dtype)
    state, pre_gate = u.new_empty(0), u.new_empty(0)
    if differentiable and backend != 'chunked':
        if backend == 'cuda':
            shape = (batch, dim, (length + CUDA_CHUNK - 1) // CUDA_CHUNK, 2 * dstate)
        elif backend == 'triton':
            # specialised on symbolic sizes: an unbacked count (``new_dynamic_size``) breaks dynamo's graph at this
            # op in torch 2.11 (a backbone's second compiled stage, compiled shape-generic, fell apart into per-block
            # compiles up to dynamo's recompile limit, and eager runs past it)
            shape = (batch, dim, _triton_plan(u, A, B)[5], dstate)
        else:
            groups = _groups(B, dim)
            chunk = _chunk_length(batch, dim, dstate, length)
            shape = ((length + chunk - 1) // chunk, batch, groups, dim // groups, dstate)
        state = u.new_empty(shape, dtype=state_dtype)
        if z is not None:
            pre_gate = u.new_empty(u.shape, dtype=u.dtype if backend == 'cuda' else _gated_dtype(u, z))
    return y, last, state, pre_gate


def _bc_grad(grad: Tensor, bc: Tensor) -> Tensor:
    """A grouped (b, g, n, L) gradient back in the layout of B or C: (b, n, L), or (d, n) summed over the batch
    and the steps."""
    if bc.dim() == 2 and grad.dim() == 4:
        return grad.sum((0, 3))
    if bc.dim() == 3 and grad.dim() == 4:
        return grad.squeeze(1)
    return grad


@contextmanager
def _autograd_on():
    """Autograd back on inside an op's kernel: the dispatcher runs a custom op's kernel with the autograd keys
    excluded (it is below autograd), so without this nothing would record a graph, whatever the grad mode.
    (``torch.func.vjp`` would not need it, but cannot run under opcheck's schema-checking mode.)"""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (DispatchKey.AutogradFunctionality, DispatchKey.AutogradOther, DispatchKey.AutogradNestedTensor):
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        yield


def _chunked_grads(grad_y, inputs, need, delta_softplus):
    """The chunked form's gradients: its forward recomputed under autograd, then ``torch.autograd.grad``."""
    names = [name for name, n in zip(INPUT_NAMES, need) if n]
    with _autograd_on():
        leaves = {name: t.detach().requires_grad_(True) for name, t in zip(INPUT_NAMES, inputs) if name in names}
        args = {name: leaves.get(name, t) for name, t in zip(INPUT_NAMES, inputs)}
        y = selective_scan_chunked(**args, delta_softplus=delta_softplus)
        grads = dict(zip(names, torch.autograd.grad(y, [leaves[name] for name in names], grad_y.to(y.dtype))))
    return tuple(grads.get(name) for name in INPUT_NAMES)


@torch.library.custom_op(BWD_NAME, mutates_args=())
def selective_scan_bwd(grad_y: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], state: Tensor,
                       pre_gate: Tensor, delta_softplus: bool, backend: str,
                       needs_grad: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                        Tensor]:
    """The gradients of u, delta, A, B, C, D, z and delta_bias (0-element where not asked for or not given)."""
    _check_backend(backend)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    need = [bool(n) and t is not None for n, t in zip(needs_grad, inputs)]
    batch, dim, length = u.shape
    if not any(need):
        grads = (None,) * len(inputs)
    elif backend == 'cuda':
        prepared, squeeze = _prepare(u, delta, A, B, C, D, z, delta_bias)
        du, ddelta, dA, dB, dC, dD, dbias, dz = cuda_backward(prepared, squeeze, state,
                                                              pre_gate if z is not None else None, grad_y,
                                                              delta_softplus)
        grads = (du, ddelta, dA, dB, dC, dD, dz, dbias)
    elif backend == 'chunked':
        grads = _chunked_grads(grad_y, inputs, need, delta_softplus)
    else:
        dz = None
        if z is not None:
            grad_y, dz = _gate_backward(grad_y, pre_gate, z)
        scan_need = tuple(need[:5]) + (need[5], need[7])  # the scan's inputs: u, delta, A, B, C, D, delta_bias
        if backend == 'triton':
            from .triton.function import _KERNELS, kernel_inputs, run_backward
            B_t, C_t = _triton_bc(B, C, u)
            plan = _triton_plan(u, A, B)
            if plan[5] != state.shape[2]:
                raise RuntimeError(f'selective_scan_bwd: the forward stored {state.shape[2]} checkpoints, the '
                                   f'launch settings now give {plan[5]}; run the backward under the kernel '
                                   'settings of the forward')
            saved = kernel_inputs(u, delta, A, B_t, C_t, D, delta_bias) + (state,)
            du, ddelta, dA, dB, dC, dD, dbias = run_backward(_KERNELS.get(), plan, saved, grad_y, delta_softplus,
                                                             (B_t.shape, C_t.shape), scan_need)
        else:
            ctx = _Ctx(saved_tensors=(u, delta, A, expand_bc(B, batch, dim, length),
                                      expand_bc(C, batch, dim, length), D, delta_bias, state),
                       delta_softplus=delta_softplus, chunk=_chunk_length(batch, dim, A.shape[1], length),
                       needs_input_grad=scan_need + (False,) * 3)
            du, ddelta, dA, dB, dC, dD, dbias = ChunkedSelectiveScan.backward(ctx, grad_y, None)[:7]
        grads = (du, ddelta, dA, dB, dC, dD, dz, dbias)
    out = []
    for grad, tensor, wanted in zip(grads, inputs, need):
        if not wanted:
            out.append(u.new_empty(0))
            continue
        if tensor is B or tensor is C:
            grad = _bc_grad(grad, tensor)
        out.append(grad.to(tensor.dtype).contiguous())
    return _unaliased(out, inputs + (grad_y, state, pre_gate))


@selective_scan_bwd.register_fake
def _selective_scan_bwd_fake(grad_y, u, delta, A, B, C, D, z, delta_bias, state, pre_gate, delta_softplus,
                             backend, needs_grad):
    _check_backend(backend)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return tuple(u.new_empty(t.shape, dtype=t.dtype) if n and t is not None else u.new_empty(0)
                 for n, t in zip(needs_grad, inputs))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, differentiable = inputs
    _, last, state, pre_gate = output
    ctx.mark_non_differentiable(last, state, pre_gate)
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, state, pre_gate)
    ctx.delta_softplus, ctx.backend, ctx.differentiable = delta_softplus, backend, differentiable


def _backward(ctx, grad_y, grad_last, grad_state, grad_pre_gate):
    saved = ctx.saved_tensors
    needs = [bool(n) and t is not None for n, t in zip(ctx.needs_input_grad[:8], saved[:8])]
    if any(needs) and not ctx.differentiable:
        raise RuntimeError('selective_scan_fwd ran with differentiable=False: it kept nothing for a backward')
    grads = selective_scan_bwd(grad_y, *saved, ctx.delta_softplus, ctx.backend, needs)
    return tuple(g if n else None for g, n in zip(grads, needs)) + (None, None, None)


selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                      z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool, backend: str,
                      differentiable: bool) -> Tuple[Tensor, Tensor]:
    """y and h_L through the forward op (inputs checked and the backend resolved by the caller)."""
    y, last, _, _ = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), backend,
                                       differentiable)
    return y, last
