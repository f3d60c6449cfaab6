"""mamba-ssm's compiled ``selective_scan_cuda`` behind our own autograd Function.

Only the compiled extension is used (``import selective_scan_cuda``), never the ``mamba_ssm`` Python package,
which cannot be imported without the extension anyway. Binding (mamba-ssm 2.3.2.post1, csrc/selective_scan):

* ``fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> [out, x(, out_z)]`` where ``x`` is
  (b, d, n_chunks, 2·n) fp32: per 2048-step chunk, the scan's (decay, state) pairs at the chunk end; the last
  chunk's odd entries are h_L (h_L / B for a time-invariant (d, n) B: :func:`last_state_of`).
* ``bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z)
  -> [du, ddelta, dA, dB, dC, dD, ddelta_bias(, dz)(, out_z)]``.

Requirements the extension checks: last dimension contiguous, input-dependent B/C as (b, g, n, L) in u's
dtype, D and delta_bias fp32, dout in u's dtype.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor


def _contiguous_last(x: Optional[Tensor]) -> Optional[Tensor]:
    if x is None:
        return None
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def _prepare(u, delta, A, B, C, D, z, delta_bias):
    """The arguments as the extension wants them (see the module docstring); returns them and whether B / C
    were (b, n, L) and got a group axis."""
    u, delta, z = _contiguous_last(u), _contiguous_last(delta), _contiguous_last(z)
    squeeze_B, squeeze_C = B.dim() == 3, C.dim() == 3
    if squeeze_B:
        B = B.unsqueeze(1)
    if squeeze_C:
        C = C.unsqueeze(1)
    B, C = _contiguous_last(B), _contiguous_last(C)
    if B.dim() == 4 and B.dtype != u.dtype:
        B = B.to(u.dtype)
    if C.dim() == 4 and C.dtype != u.dtype:
        C = C.to(u.dtype)
    # time-invariant (d, n) B/C are weights: fp32 like A
    B = B.float() if B.dim() == 2 else B
    C = C.float() if C.dim() == 2 else C
    if delta.dtype != u.dtype:
        delta = delta.to(u.dtype)
    if z is not None and z.dtype != u.dtype:
        z = z.to(u.dtype)
    A = _contiguous_last(A.float())
    D = _contiguous_last(D.float()) if D is not None else None
    delta_bias = _contiguous_last(delta_bias.float()) if delta_bias is not None else None
    return (u, delta, A, B, C, D, z, delta_bias), (squeeze_B, squeeze_C)


def last_state_of(x: Tensor, B: Tensor) -> Tensor:
    """h_L from the extension's chunk states ``x`` and its (prepared) ``B``: the last chunk's odd entries. With a
    time-invariant (d, n) B the kernel scans ``delta·u`` alone and applies B together with C at the output, so its
    states are h / B; they are multiplied back here."""
    last = x[:, :, -1, 1::2]
    return last * B if B.dim() == 2 else last


class CudaSelectiveScan(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool) -> Tuple[Tensor, Tensor]:
        import selective_scan_cuda
        (u, delta, A, B, C, D, z, delta_bias), ctx.squeeze = _prepare(u, delta, A, B, C, D, z, delta_bias)
        results = selective_scan_cuda.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        out, x = results[0], results[1]
        y = results[2] if z is not None else out
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out if z is not None else None)
        ctx.delta_softplus = delta_softplus
        last_state = last_state_of(x, B)
        ctx.mark_non_differentiable(last_state)
        return y, last_state

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_last_state: Optional[Tensor]):
        u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, ddelta_bias, dz = cuda_backward(
            (u, delta, A, B, C, D, z, delta_bias), ctx.squeeze, x, out, grad_y, ctx.delta_softplus)
        return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz,
                ddelta_bias if delta_bias is not None else None, None)


def cuda_backward(prepared: Tuple, squeeze: Tuple[bool, bool], x: Tensor, out: Optional[Tensor], grad_y: Tensor,
                  delta_softplus: bool) -> Tuple:
    """The extension's backward on the forward's prepared arguments (``_prepare``), its chunk states ``x`` and
    (with z) its ungated output ``out``. Returns du, ddelta, dA, dB, dC, dD, ddelta_bias, dz (dz None without z;
    dD and ddelta_bias only meaningful where D and delta_bias were given), dB and dC in the shapes B and C had
    before ``_prepare`` gave them a group axis."""
    import selective_scan_cuda
    u, delta, A, B, C, D, z, delta_bias = prepared
    grad_y = _contiguous_last(grad_y.to(u.dtype))
    results = selective_scan_cuda.bwd(u, delta, A, B, C, D, z, delta_bias, grad_y, x, out, None,
                                      delta_softplus, False)
    du, ddelta, dA, dB, dC, dD, ddelta_bias = results[:7]
    dz = results[7] if z is not None else None
    if squeeze[0]:
        dB = dB.squeeze(1)
    if squeeze[1]:
        dC = dC.squeeze(1)
    return du, ddelta, dA, dB, dC, dD, ddelta_bias, dz


def selective_scan_cuda_fn(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                           z: Optional[Tensor], delta_bias: Optional[Tensor],
                           delta_softplus: bool, differentiable: bool = True) -> Tuple[Tensor, Tensor]:
    """Returns y (u's dtype) and h_L (fp32) from the compiled kernel.

    ``differentiable=False`` (no gradient can flow; the dispatcher decides): the forward kernel alone, without the
    autograd Function's bookkeeping."""
    if differentiable:
        return CudaSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    import selective_scan_cuda
    args, _ = _prepare(u, delta, A, B, C, D, z, delta_bias)
    results = selective_scan_cuda.fwd(*args, delta_softplus)
    return (results[2] if z is not None else results[0]), results[1][:, :, -1, 1::2]
