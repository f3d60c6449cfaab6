"""The Triton backend's entry point: ``selective_scan_triton`` and its autograd Function.

Inputs are read in place where the layout allows: u, delta (and dy) with any batch stride, B and C with any batch
and group strides, as long as every (channel, L) row and every (n, L) block is contiguous. The mixer passes views
into its projections (u = ``xz[:, :d]``, B = ``x_dbl[:, R:R + n].unsqueeze(1)``), which would otherwise cost a copy
each per call. Without gradients the forward stores no checkpoints (``STORE_CKPT``) and skips the autograd
Function: eager inference is bound by host time per call, which is also why the launch plan of a shape is cached
and kernels go through ``launch.launcher``.
"""
import contextvars
import functools
from contextlib import contextmanager
from typing import Optional, Tuple

import torch
import triton
from torch import Tensor

from . import kernels as compiled_kernels
from .config import BC_MODES, active_overrides, kernel_launch_args, launch_config
from .launch import launcher

_KERNELS: contextvars.ContextVar = contextvars.ContextVar('mmmambavision_triton_kernels', default=compiled_kernels)


@contextmanager
def use_kernels(kernels):
    """Run the scan with other kernels inside the block: any object with the attributes ``state_fwd_kernel``,
    ``state_bwd_kernel`` and ``state_carry_kernel`` (tests pass a copy of ``kernels.py`` loaded under the Triton
    interpreter, or stand-ins that record their launches). A backward runs with the kernels of its forward."""
    token = _KERNELS.set(kernels)
    try:
        yield kernels
    finally:
        _KERNELS.reset(token)


def _plan(batch: int, dim: int, channels_per_group: int, length: int, dstate: int):
    """``launch_config`` and what follows from it (config, forward kernel args, grid, forward chunks, backward
    kernel args, backward chunks), once per shape and active settings. Shared between calls: not to be changed."""
    return _plan_for(batch, dim, channels_per_group, length, dstate, active_overrides())


@functools.lru_cache(maxsize=256)  # a model calls the scan with a handful of shapes
def _plan_for(batch: int, dim: int, channels_per_group: int, length: int, dstate: int, overrides):
    config = launch_config(batch, dim, channels_per_group, length, dstate)
    return (config, kernel_launch_args(config, 'fwd', length), (batch, dim // config.BLOCK_D),
            triton.cdiv(length, config.BLOCK_T), kernel_launch_args(config, 'bwd', length),
            triton.cdiv(length, config.ckpt))


def _rows(t: Tensor) -> Tensor:
    """A (b, d, L) operand as the kernels address it: (i, c, s) at i·stride(0) + c·L + s, any batch stride.

    So ``xz[:, :d]`` of a contiguous (b, 2d, L) tensor is read in place; other layouts are copied. Strides of
    dimensions of size 1 are never used, hence not checked."""
    _, dim, length = t.shape
    stride = t.stride()
    if (stride[2] == 1 or length == 1) and (stride[1] == length or dim == 1):
        return t
    return t.contiguous()


def _blocks(t: Tensor) -> Tensor:
    """B or C (b, g, n, L) as the kernels address them: any batch and group strides, a contiguous (n, L) block.

    So ``x_dbl[:, R:R + n].unsqueeze(1)`` of a contiguous (b, R + 2n, L) tensor is read in place. A time-invariant
    B expanded over (b, d, ·, L) has stride 0 over L and is copied, except at L = 1 where it is read in place."""
    dstate, length = t.shape[2], t.shape[3]
    stride = t.stride()
    if (stride[3] == 1 or length == 1) and (stride[2] == length or dstate == 1):
        return t
    return t.contiguous()


def _fp32(t: Tensor) -> Tensor:
    # .float() and .contiguous() each cost a dispatcher round trip even where they return t itself
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


def kernel_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                  delta_bias: Optional[Tensor]) -> Tuple:
    """The inputs as the kernels read them: B and C grouped (b, g, n, L), every operand in a layout the kernels
    address (views into wider tensors kept as they are where they can be, see ``_rows`` and ``_blocks``), A, D and
    delta_bias fp32. The same inputs give the same tensors: a backward can make them again from the originals."""
    dim = u.shape[1]
    if B.dim() == 3:  # a view made here, inside the autograd Function: no view node in the graph
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    groups = B.shape[1]
    if dim % groups or C.shape[1] != groups:
        raise ValueError(f'B and C must have the same number of groups, dividing the channels ({dim}); got '
                         f'{groups} and {C.shape[1]}')
    u, delta, B, C = _rows(u), _rows(delta), _blocks(B), _blocks(C)
    A = _fp32(A)
    D = _fp32(D) if D is not None else None
    delta_bias = _fp32(delta_bias) if delta_bias is not None else None
    return u, delta, A, B, C, D, delta_bias


def _forward(kernels, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             delta_bias: Optional[Tensor], delta_softplus: bool, out_dtype: torch.dtype, store_ckpt: bool):
    """Launches the forward kernel. Returns the inputs as the kernels read them (what the backward needs; B and C
    grouped), y, h_L, the per-chunk checkpoints (None without ``store_ckpt``: only the backward reads them) and the
    launch plan. B and C come grouped (b, g, n, L) or ungrouped (b, n, L), read as one group."""
    u, delta, A, B, C, D, delta_bias = kernel_inputs(u, delta, A, B, C, D, delta_bias)
    batch, dim, length = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    cpg = dim // groups
    plan = _plan(batch, dim, cpg, length, dstate)
    config, kernel_args, grid, n_chunks, _, n_ckpt = plan
    y = torch.empty((batch, dim, length), dtype=out_dtype, device=u.device)
    last = torch.empty((batch, dim, dstate), dtype=torch.float32, device=u.device)
    ckpt = torch.empty((batch, dim, n_ckpt, dstate), dtype=torch.float32, device=u.device) if store_ckpt else None
    launcher(kernels.state_fwd_kernel, grid,
             (u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A,
              y, ckpt if store_ckpt else last, last, dim, length, cpg, n_chunks, dstate,
              u.stride(0), delta.stride(0), B.stride(0), B.stride(1), C.stride(0), C.stride(1)),
             dict(HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
                  STORE_CKPT=store_ckpt, **kernel_args))
    return (u, delta, A, B, C, D, delta_bias), y, last, ckpt, plan


class TritonSelectiveScan(torch.autograd.Function):
    """Autograd Function of the Triton backend. B and C come grouped, (b, g, n, L), or as one group (b, n, L).

    u and delta may have any batch stride and B, C any batch and group strides (views into wider projections are
    read in place, see ``_rows`` and ``_blocks``); du, ddelta, dB and dC come back contiguous, dB and dC in the
    shape of B and C."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                delta_bias: Optional[Tensor], delta_softplus: bool,
                out_dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        ctx.bc_shapes = B.shape, C.shape
        kernels = _KERNELS.get()
        inputs, y, last, ckpt, plan = _forward(kernels, u, delta, A, B, C, D, delta_bias, delta_softplus,
                                               out_dtype, store_ckpt=True)
        ctx.save_for_backward(*inputs, ckpt)
        ctx.delta_softplus = delta_softplus
        ctx.kernels = kernels
        ctx.plan = plan
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_last_state: Optional[Tensor]):
        return run_backward(ctx.kernels, ctx.plan, ctx.saved_tensors, grad_y, ctx.delta_softplus, ctx.bc_shapes,
                            ctx.needs_input_grad) + (None, None)


def run_backward(kernels, plan, saved: Tuple, grad_y: Tensor, delta_softplus: bool, bc_shapes: Tuple,
                 need: Tuple[bool, ...]) -> Tuple:
    """The backward kernels. ``saved``: the forward's inputs as the kernels read them (``kernel_inputs``) and its
    checkpoints; ``plan``: the forward's launch plan; ``bc_shapes``: the shapes of B and C as the forward got them
    (dB and dC come back in them); ``need``: which of u, delta, A, B, C, D, delta_bias need a gradient. Returns
    those seven gradients (None where not needed or where D / delta_bias were not given)."""
    u, delta, A, B, C, D, delta_bias, ckpt = saved
    batch, dim, length = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    cpg = dim // groups
    config, _, grid, _, kernel_args, n_chunks = plan
    grad_y = _rows(grad_y)
    # torch.empty, not empty_like: u and delta may be views with gaps, the kernels write contiguous rows
    du = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    ddelta = torch.empty(delta.shape, dtype=delta.dtype, device=u.device)
    # dB and dC, then dA, dD and dbias (accumulated atomically: zeroed) in one allocation where they can be:
    # every tensor op costs host time, as much as a small kernel launch
    bc, numel, small_size = config.bc, B.numel(), dim * (dstate + 2)
    if bc == 'atomic':  # fp32 sums, cast to the input dtype at the end
        both = -(-2 * numel // 4) * 4  # 16-byte aligned start for dA
        flat = torch.zeros(both + small_size, dtype=torch.float32, device=u.device)
        dBC, small = flat[:2 * numel].view((2,) + B.shape), flat[both:]
    else:
        small = torch.zeros(small_size, dtype=torch.float32, device=u.device)
        if bc == 'store':  # written once each, in the input dtype
            dBC = torch.empty((2,) + B.shape, dtype=B.dtype, device=u.device)
        else:
            dBC = torch.empty((2, batch, dim // config.BLOCK_D, dstate, length), dtype=torch.float32,
                              device=u.device)
    dB, dC = dBC[0], dBC[1]
    dA = small[:dim * dstate].view(dim, dstate)
    dD = small[dim * dstate:dim * (dstate + 1)]
    dbias = small[dim * (dstate + 1):]
    bias = delta_bias if delta_bias is not None else A
    carry = span = A
    if kernel_args['SPLIT']:  # chunk-parallel: first each chunk's own adjoint carry and decay
        grid = grid + (n_chunks,)
        carry = torch.empty((batch, dim, n_chunks, dstate), dtype=torch.float32, device=u.device)
        span = torch.empty((batch, dim, n_chunks), dtype=torch.float32, device=u.device)
        launcher(kernels.state_carry_kernel, grid,
                 (delta, A, C, bias, grad_y, carry, span, dim, length, cpg, n_chunks, dstate, delta.stride(0),
                  grad_y.stride(0), C.stride(0), C.stride(1)),
                 dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
                      **kernel_launch_args(config, 'carry', length)))
    launcher(kernels.state_bwd_kernel, grid,
             (u, delta, A, B, C, D if D is not None else A, bias, grad_y, ckpt, du, ddelta, dA, dB, dC, dD,
              dbias, carry, span, dim, length, cpg, n_chunks, dstate, u.stride(0), delta.stride(0),
              grad_y.stride(0), B.stride(0), B.stride(1), C.stride(0), C.stride(1)),
             dict(HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
                  BC_MODE=BC_MODES[bc], **kernel_args))
    if need[3] or need[4]:
        if bc == 'partial':
            dBC = dBC.view(2, batch, groups, cpg // config.BLOCK_D, dstate, length).sum(3)
        if B.dtype == C.dtype:
            dBC = dBC.to(B.dtype)  # one cast for both (none where it is the dtype already)
            dB, dC = dBC[0], dBC[1]
        else:
            dB, dC = dBC[0].to(B.dtype), dBC[1].to(C.dtype)
        shape_B, shape_C = bc_shapes
        dB, dC = dB.view(shape_B), dC.view(shape_C)
    return (du if need[0] else None, ddelta if need[1] else None, dA if need[2] else None,
            dB if need[3] else None, dC if need[4] else None,
            dD if D is not None and need[5] else None,
            dbias if delta_bias is not None and need[6] else None)


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                          delta_bias: Optional[Tensor], delta_softplus: bool,
                          out_dtype: torch.dtype, differentiable: bool = True) -> Tuple[Tensor, Tensor]:
    """Triton backend on normalised inputs (B, C grouped (b, g, n, L) or (b, n, L)). Returns y and h_L (fp32).

    ``differentiable=False`` (no gradient can flow; the dispatcher decides): the forward kernel is launched
    directly, without the autograd Function (its apply costs more host time than the launch) and without the
    per-chunk checkpoints, which only the backward reads. Eager inference is bound by this host time."""
    if differentiable:
        return TritonSelectiveScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype)
    _, y, last, _, _ = _forward(_KERNELS.get(), u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype,
                                store_ckpt=False)
    return y, last
