"""Selective scan as Triton kernels, forward and backward: the GPU path that needs no compilation.

One program owns ``BLOCK_D`` channels of one sequence (all of them in one B/C group) and walks the sequence in
chunks of ``BLOCK_T`` steps. Inside a chunk the recurrence ``h_t = a_t·h_{t-1} + x_t`` is a
``tl.associative_scan`` over time on (a, x) pairs of a (BLOCK_D, d_state, BLOCK_T) tile; the state at the chunk
end is carried in registers to the next chunk, and the state at each chunk start is written out as a checkpoint.

The backward walks the chunks in reverse: it recomputes the chunk's states from its checkpoint, then runs the
adjoint recurrence ``g_t = C_t·dy_t + a_{t+1}·g_{t+1}`` as a reverse associative scan (``a_{t+1}`` is recomputed
from Δ one step ahead, which also links to the next chunk), and forms every gradient from g and h. dB and dC,
shared by the channels of a group, are summed over the program's channels in registers and added atomically.
All math in fp32; inputs fp16, bf16 or fp32.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = 1.4426950408889634


@triton.jit
def _affine_combine(a_first, x_first, a_second, x_second):
    # composition of h -> a_first·h + x_first, then h -> a_second·h + x_second
    return a_first * a_second, a_second * x_first + x_second


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


@triton.jit
def _chunk_inputs(u_row, delta_row, B_row, offs_t, mask_t, offs_n, mask_n, length,
                  A2, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Loads one chunk; returns u, raw delta(+bias), Δ (BLOCK_D, T), B (N, T), a and x (BLOCK_D, N, T)."""
    mask_dt = mask_t[None, :]
    u = tl.load(u_row + offs_t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
    delta_raw = tl.load(delta_row + offs_t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
    if HAS_BIAS:
        delta_raw = delta_raw + bias[:, None]
    if SOFTPLUS:
        dt = _softplus(delta_raw)
    else:
        dt = delta_raw
    dt = tl.where(mask_dt, dt, 0.0)
    mask_nt = mask_n[:, None] & mask_t[None, :]
    B = tl.load(B_row + offs_n[:, None] * length + offs_t[None, :], mask=mask_nt, other=0.0).to(tl.float32)
    a = tl.exp2(dt[:, None, :] * A2[:, :, None])  # Δ = 0 on masked steps: a = 1 passes the state through
    x = (dt * u)[:, None, :] * B[None, :, :]
    return u, delta_raw, dt, B, a, x


@triton.jit
def _scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, ckpt_ptr, last_ptr,
                     dim, length, channels_per_group, n_chunks, dstate,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    pid_b = tl.program_id(0)
    d0 = tl.program_id(1) * BLOCK_D
    groups = dim // channels_per_group
    group = d0 // channels_per_group
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < dstate
    mask_dn = mask_n[None, :] & (offs_d[:, None] < dim)
    A2 = tl.load(A_ptr + offs_d[:, None] * dstate + offs_n[None, :], mask=mask_dn, other=0.0) * 1.4426950408889634
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d).to(tl.float32)
    D = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + offs_d).to(tl.float32)
    seq = (pid_b * dim + offs_d).to(tl.int64) * length  # (BLOCK_D,) row offsets into (b, d, L)
    u_row = u_ptr + seq[:, None]
    delta_row = delta_ptr + seq[:, None]
    y_row = y_ptr + seq[:, None]
    bc_off = (pid_b * groups + group).to(tl.int64) * dstate * length
    B_row = B_ptr + bc_off
    C_row = C_ptr + bc_off
    ckpt_row = ckpt_ptr + (pid_b * dim + offs_d).to(tl.int64)[:, None] * n_chunks * dstate + offs_n[None, :]
    arange_t = tl.arange(0, BLOCK_T)
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for chunk in range(0, n_chunks):
        tl.store(ckpt_row + chunk * dstate, h, mask=mask_dn)
        offs_t = chunk * BLOCK_T + arange_t
        mask_t = offs_t < length
        u, delta_raw, dt, B, a, x = _chunk_inputs(u_row, delta_row, B_row, offs_t, mask_t, offs_n, mask_n,
                                                  length, A2, bias, HAS_BIAS, SOFTPLUS)
        x = tl.where((arange_t == 0)[None, None, :], x + a * h[:, :, None], x)
        _, states = tl.associative_scan((a, x), axis=2, combine_fn=_affine_combine)
        C = tl.load(C_row + offs_n[:, None] * length + offs_t[None, :],
                    mask=mask_n[:, None] & mask_t[None, :], other=0.0).to(tl.float32)
        y = tl.sum(states * C[None, :, :], axis=1)
        if HAS_D:
            y = y + D[:, None] * u
        tl.store(y_row + offs_t[None, :], y.to(y_ptr.dtype.element_ty), mask=mask_t[None, :])
        h = tl.sum(tl.where((arange_t == BLOCK_T - 1)[None, None, :], states, 0.0), axis=2)
    last_row = last_ptr + (pid_b * dim + offs_d).to(tl.int64)[:, None] * dstate + offs_n[None, :]
    tl.store(last_row, h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, ckpt_ptr,
                     du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                     dim, length, channels_per_group, n_chunks, dstate,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     BC_ATOMIC: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    pid_b = tl.program_id(0)
    d0 = tl.program_id(1) * BLOCK_D
    groups = dim // channels_per_group
    group = d0 // channels_per_group
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < dstate
    mask_dn = mask_n[None, :] & (offs_d[:, None] < dim)
    A = tl.load(A_ptr + offs_d[:, None] * dstate + offs_n[None, :], mask=mask_dn, other=0.0)
    A2 = A * 1.4426950408889634
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d).to(tl.float32)
    D = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + offs_d).to(tl.float32)
    seq = (pid_b * dim + offs_d).to(tl.int64) * length
    u_row = u_ptr + seq[:, None]
    delta_row = delta_ptr + seq[:, None]
    dy_row = dy_ptr + seq[:, None]
    du_row = du_ptr + seq[:, None]
    ddelta_row = ddelta_ptr + seq[:, None]
    bc_off = (pid_b * groups + group).to(tl.int64) * dstate * length
    B_row = B_ptr + bc_off
    C_row = C_ptr + bc_off
    dB_row = dB_ptr + bc_off
    dC_row = dC_ptr + bc_off
    ckpt_row = ckpt_ptr + (pid_b * dim + offs_d).to(tl.int64)[:, None] * n_chunks * dstate + offs_n[None, :]
    arange_t = tl.arange(0, BLOCK_T)
    g_next = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # g at the first step of the following chunk
    grad_A = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    grad_D = tl.zeros([BLOCK_D], dtype=tl.float32)
    grad_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for step in range(0, n_chunks):
        chunk = n_chunks - 1 - step
        h0 = tl.load(ckpt_row + chunk * dstate, mask=mask_dn, other=0.0)
        offs_t = chunk * BLOCK_T + arange_t
        mask_t = offs_t < length
        u, delta_raw, dt, B, a, x = _chunk_inputs(u_row, delta_row, B_row, offs_t, mask_t, offs_n, mask_n,
                                                  length, A2, bias, HAS_BIAS, SOFTPLUS)
        x_carried = tl.where((arange_t == 0)[None, None, :], x + a * h0[:, :, None], x)
        _, states = tl.associative_scan((a, x_carried), axis=2, combine_fn=_affine_combine)
        mask_nt = mask_n[:, None] & mask_t[None, :]
        C = tl.load(C_row + offs_n[:, None] * length + offs_t[None, :], mask=mask_nt, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + offs_t[None, :], mask=mask_t[None, :], other=0.0).to(tl.float32)
        # a_{t+1}: Δ one step ahead (the first step of the next chunk at the chunk end), 0 past the end
        offs_next = offs_t + 1
        mask_next = offs_next < length
        delta_next = tl.load(delta_row + offs_next[None, :], mask=mask_next[None, :], other=0.0).to(tl.float32)
        if HAS_BIAS:
            delta_next = delta_next + bias[:, None]
        if SOFTPLUS:
            delta_next = _softplus(delta_next)
        a_next = tl.where(mask_next[None, None, :], tl.exp2(delta_next[:, None, :] * A2[:, :, None]), 0.0)
        q = dy[:, None, :] * C[None, :, :]
        q = tl.where((arange_t == BLOCK_T - 1)[None, None, :], q + a_next * g_next[:, :, None], q)
        _, adj = tl.associative_scan((a_next, q), axis=2, combine_fn=_affine_combine, reverse=True)
        g_next = tl.sum(tl.where((arange_t == 0)[None, None, :], adj, 0.0), axis=2)
        # dL/d(Δ·A)_t = g_t·a_t·h_{t-1} = g_t·(h_t - x_t)
        grad_arg = adj * (states - x)
        grad_A += tl.sum(grad_arg * dt[:, None, :], axis=2)
        adj_B = tl.sum(adj * B[None, :, :], axis=1)
        grad_dt = tl.sum(grad_arg * A[:, :, None], axis=1) + u * adj_B
        grad_u = dt * adj_B
        if HAS_D:
            grad_u += D[:, None] * dy
            grad_D += tl.sum(dy * u, axis=1)
        if SOFTPLUS:
            grad_dt = grad_dt / (1.0 + tl.exp(-delta_raw))
        grad_dt = tl.where(mask_t[None, :], grad_dt, 0.0)
        grad_bias += tl.sum(grad_dt, axis=1)
        tl.store(du_row + offs_t[None, :], grad_u.to(du_ptr.dtype.element_ty), mask=mask_t[None, :])
        tl.store(ddelta_row + offs_t[None, :], grad_dt.to(ddelta_ptr.dtype.element_ty), mask=mask_t[None, :])
        grad_B = tl.sum(adj * (dt * u)[:, None, :], axis=0)
        grad_C = tl.sum(states * dy[:, None, :], axis=0)
        bc_offs = offs_n[:, None] * length + offs_t[None, :]
        if BC_ATOMIC:
            tl.atomic_add(dB_row + bc_offs, grad_B, mask=mask_nt)
            tl.atomic_add(dC_row + bc_offs, grad_C, mask=mask_nt)
        else:
            tl.store(dB_row + bc_offs, grad_B, mask=mask_nt)
            tl.store(dC_row + bc_offs, grad_C, mask=mask_nt)
    tl.atomic_add(dA_ptr + offs_d[:, None] * dstate + offs_n[None, :], grad_A, mask=mask_dn)
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, grad_D)
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, grad_bias)


def _block_sizes(batch: int, dim: int, channels_per_group: int, length: int,
                 dstate: int) -> Tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_N, BLOCK_T, num_warps): enough programs to fill a GPU, tiles that fit registers.

    A tile is BLOCK_D·BLOCK_N·BLOCK_T fp32 values; the backward keeps about eight of them live, so tiles stay at
    2048 values (16 per thread with 4 warps). ``--tune`` in tools/benchmark_scan.py sweeps the alternatives.
    """
    tile = 2048
    block_n = triton.next_power_of_2(dstate)
    block_t = max(16, min(triton.next_power_of_2(length), tile // block_n))
    block_d = 1
    # several channels per program when there are plenty of sequences (fewer dB/dC atomics, B/C loaded once)
    while (channels_per_group % (block_d * 2) == 0 and batch * dim // (block_d * 2) >= 1024
           and block_d * 2 * block_n * min(block_t, 64) <= tile):
        block_d *= 2
        block_t = max(16, min(triton.next_power_of_2(length), tile // (block_n * block_d)))
    return block_d, block_n, block_t, 4


_TUNING: dict = {}  # optional overrides {'BLOCK_D': .., 'BLOCK_T': .., 'num_warps': ..} (benchmark sweeps)


def _launch_config(batch, dim, channels_per_group, length, dstate):
    block_d, block_n, block_t, num_warps = _block_sizes(batch, dim, channels_per_group, length, dstate)
    block_d = _TUNING.get('BLOCK_D', block_d)
    block_t = _TUNING.get('BLOCK_T', block_t)
    num_warps = _TUNING.get('num_warps', num_warps)
    if channels_per_group % block_d:
        raise ValueError(f'BLOCK_D={block_d} must divide the channels per group ({channels_per_group})')
    return block_d, block_n, block_t, num_warps


class TritonSelectiveScan(torch.autograd.Function):
    """Autograd Function of the Triton backend. B and C come grouped, (b, g, n, L)."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                delta_bias: Optional[Tensor], delta_softplus: bool,
                out_dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        batch, dim, length = u.shape
        groups, dstate = B.shape[1], A.shape[1]
        if dim % groups:
            raise ValueError(f'the number of channels ({dim}) must be divisible by the B/C groups ({groups})')
        u, delta, B, C = u.contiguous(), delta.contiguous(), B.contiguous(), C.contiguous()
        A = A.float().contiguous()
        D = D.float().contiguous() if D is not None else None
        delta_bias = delta_bias.float().contiguous() if delta_bias is not None else None
        cpg = dim // groups
        block_d, block_n, block_t, num_warps = _launch_config(batch, dim, cpg, length, dstate)
        n_chunks = triton.cdiv(length, block_t)
        y = torch.empty((batch, dim, length), dtype=out_dtype, device=u.device)
        ckpt = torch.empty((batch, dim, n_chunks, dstate), dtype=torch.float32, device=u.device)
        last = torch.empty((batch, dim, dstate), dtype=torch.float32, device=u.device)
        grid = (batch, dim // block_d)
        _scan_fwd_kernel[grid](u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None
                               else A, y, ckpt, last, dim, length, cpg, n_chunks, dstate,
                               HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
                               BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t, num_warps=num_warps)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, ckpt)
        ctx.delta_softplus = delta_softplus
        ctx.config = (block_d, block_n, block_t, num_warps, n_chunks)
        ctx.dtypes = (B.dtype, C.dtype)
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_last_state: Optional[Tensor]):
        u, delta, A, B, C, D, delta_bias, ckpt = ctx.saved_tensors
        batch, dim, length = u.shape
        groups, dstate = B.shape[1], A.shape[1]
        cpg = dim // groups
        block_d, block_n, block_t, num_warps, n_chunks = ctx.config
        grad_y = grad_y.contiguous()
        du = torch.empty_like(u)
        ddelta = torch.empty_like(delta)
        bc_atomic = block_d != cpg
        alloc = torch.zeros if bc_atomic else torch.empty
        dB = alloc(B.shape, dtype=torch.float32, device=u.device)
        dC = alloc(C.shape, dtype=torch.float32, device=u.device)
        dA = torch.zeros_like(A)
        dD = torch.zeros(dim, dtype=torch.float32, device=u.device)
        dbias = torch.zeros(dim, dtype=torch.float32, device=u.device)
        grid = (batch, dim // block_d)
        _scan_bwd_kernel[grid](u, delta, A, B, C, D if D is not None else A,
                               delta_bias if delta_bias is not None else A, grad_y, ckpt,
                               du, ddelta, dA, dB, dC, dD, dbias, dim, length, cpg, n_chunks, dstate,
                               HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
                               SOFTPLUS=ctx.delta_softplus, BC_ATOMIC=bc_atomic,
                               BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t, num_warps=num_warps)
        need = ctx.needs_input_grad
        return (du if need[0] else None, ddelta if need[1] else None, dA if need[2] else None,
                dB.to(ctx.dtypes[0]) if need[3] else None, dC.to(ctx.dtypes[1]) if need[4] else None,
                dD if D is not None and need[5] else None,
                dbias if delta_bias is not None and need[6] else None, None, None)


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                          delta_bias: Optional[Tensor], delta_softplus: bool,
                          out_dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Triton backend on normalised inputs (B, C grouped (b, g, n, L)). Returns y and h_L (fp32)."""
    return TritonSelectiveScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype)
