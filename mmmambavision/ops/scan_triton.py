"""Selective scan as Triton kernels, forward and backward: the GPU path that needs no compilation.

Three kernel families: ``state`` is the default (``_default_config``), ``scan`` and ``seq`` are selected through
``_TUNING``, which ``tools/benchmark_scan.py --tune`` sweeps. All walk the sequence in chunks, write the state at
every chunk start as a checkpoint in the forward, and in the backward walk the chunks in reverse (or, ``state``
with ``BWD_T``, run them in parallel), recomputing each chunk's states from its checkpoint. All math in fp32;
inputs fp16, bf16 or fp32.

``state``: a program owns BLOCK_D channels (one by default, four for chunks of 64 steps or fewer) and chunks of
BLOCK_T steps and loops over the d_state states (``UNROLL`` per loop iteration: one by default with one channel
per program). Each state's recurrence is one ``tl.associative_scan`` over time of a (BLOCK_D, BLOCK_T) tile; the
sums over states (y, and the gradients of Δ and u) accumulate in registers. The backward runs the adjoint
``g_t = C_t·dy_t + a_{t+1}·g_{t+1}`` as a reverse scan per state. With ``BWD_T`` (the default for few long
sequences) the backward is chunk-parallel: the forward checkpoints every BWD_T steps, ``_state_carry_kernel``
computes each chunk's own contribution to the adjoint at its first step and its decay, and then one program per
(channel block, chunk) combines those of the later chunks into its incoming adjoint (``_chunk_carry``) and runs
its chunk. ``_tile_layout_hint`` keeps each thread on consecutive steps when rows start unaligned
(L % 16 != 0), which decides its speed.

``seq``: a program owns a (BLOCK_D channels, SEGS segments, d_state) tile; a chunk is SEGS consecutive segments of
STEPS steps. Every thread walks its segment step by step (the steps are unrolled statically), so the recurrence
``h_t = a_t·h_{t-1} + x_t`` needs no cross-thread traffic. With SEGS > 1 the segments are linked by one associative
scan per chunk: lane s first walks segment s-1 to get its (Π a, drive) aggregate, and the inclusive scan of these
shifted aggregates is the state each segment starts from. The backward does the same for the adjoint
(``g_t = C_t·dy_t + w``, ``w ← a_t·g_t`` walking backwards; lane s walks segment s+1, reverse scan), recomputes the
segment's states forwards keeping h_{t-1} and a_t of every step in registers, then walks it backwards.

``scan``: a program owns BLOCK_D channels and walks chunks of BLOCK_T steps; inside a chunk the recurrence is a
``tl.associative_scan`` over time on (a, x) pairs of a (BLOCK_D, d_state, BLOCK_T) tile, and the backward runs
the adjoint ``g_t = C_t·dy_t + a_{t+1}·g_{t+1}`` as a reverse associative scan (``a_{t+1}`` recomputed from Δ one
step ahead, which also links to the next chunk).

In both, dB and dC (shared by the channels of a group) are summed over the program's channels in registers and
then, by the ``bc`` option: added atomically into one fp32 buffer ('atomic'), written to a buffer per channel
block that torch sums afterwards ('partial'), or stored directly in the input dtype when one program holds a
whole group ('store').

Inputs are read in place where the layout allows: u, delta (and dy) with any batch stride, B and C with any batch
and group strides, as long as every (channel, L) row and every (n, L) block is contiguous. The mixer passes views
into its projections (u = ``xz[:, :d]``, B = ``x_dbl[:, R:R + n].unsqueeze(1)``), which would otherwise cost a copy
each per call. Without gradients the forward stores no checkpoints (``STORE_CKPT``) and skips the autograd
Function: eager inference is bound by host time per call. For the same reason kernels are launched through
``_launch``, which calls a compiled kernel's launcher directly from its second launch on (``DIRECT_LAUNCH``).
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = 1.4426950408889634

try:  # what the direct launch below reads; without it every launch goes through JITFunction.run
    from triton import knobs as _knobs
    from triton.runtime.driver import driver as _driver
    from triton.runtime.jit import JITFunction as _JITFunction
except ImportError:  # pragma: no cover - Triton before 3.4
    _knobs = _driver = _JITFunction = None


@triton.jit
def _affine_combine(a_first, x_first, a_second, x_second):
    # composition of h -> a_first·h + x_first, then h -> a_second·h + x_second
    return a_first * a_second, a_second * x_first + x_second


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


@triton.jit
def _load_rows(rows, offs_t, mask_t):
    """One chunk of (BLOCK_D,) rows as a (BLOCK_D, BLOCK_T) fp32 tile, 0 on masked steps."""
    return tl.load(rows + offs_t[None, :], mask=mask_t[None, :], other=0.0).to(tl.float32)


@triton.jit
def _delta_chunk(delta_row, offs_t, mask_t, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Raw delta(+bias) and Δ of one chunk, (BLOCK_D, BLOCK_T); Δ = 0 on masked steps (a = 1, x = 0)."""
    raw = _load_rows(delta_row, offs_t, mask_t)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    return raw, tl.where(mask_t[None, :], dt, 0.0)


@triton.jit
def _chunk_inputs(u_row, delta_row, B_row, offs_t, mask_t, offs_n, mask_n, length,
                  A2, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Loads one chunk; returns u, raw delta(+bias), Δ (BLOCK_D, T), B (N, T), a and x (BLOCK_D, N, T)."""
    u = _load_rows(u_row, offs_t, mask_t)
    delta_raw, dt = _delta_chunk(delta_row, offs_t, mask_t, bias, HAS_BIAS, SOFTPLUS)
    mask_nt = mask_n[:, None] & mask_t[None, :]
    B = tl.load(B_row + offs_n[:, None] * length + offs_t[None, :], mask=mask_nt, other=0.0).to(tl.float32)
    a = tl.exp2(dt[:, None, :] * A2[:, :, None])  # Δ = 0 on masked steps: a = 1 passes the state through
    x = (dt * u)[:, None, :] * B[None, :, :]
    return u, delta_raw, dt, B, a, x


@triton.jit
def _channel_vectors(bias_ptr, D_ptr, offs, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """delta_bias and D at the channels ``offs`` (any shape), fp32; zeros where the scan has none."""
    bias = tl.zeros(offs.shape, dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs).to(tl.float32)
    D = tl.zeros(offs.shape, dtype=tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + offs).to(tl.float32)
    return bias, D


@triton.jit
def _input_bases(u_ptr, delta_ptr, B_ptr, C_ptr, pid_b, rows, group,
                 stride_u, stride_delta, stride_Bb, stride_Bg, stride_Cb, stride_Cg):
    """Where this program reads its inputs: u and delta at ``rows`` (the channels' row offsets inside one batch
    entry, in the caller's shape) of batch entry ``pid_b``, B and C at its group's (n, L) block. The batch and
    group strides are the inputs' own (views are read in place, see ``_rows`` and ``_blocks``)."""
    batch = pid_b.to(tl.int64)
    group = group.to(tl.int64)
    return (u_ptr + batch * stride_u + rows, delta_ptr + batch * stride_delta + rows,
            B_ptr + batch * stride_Bb + group * stride_Bg, C_ptr + batch * stride_Cb + group * stride_Cg)


@triton.jit
def _store_input_grads(grad_dt, adj_B, u, dt, dy, raw, D, mask_t, offs_t, du_row, ddelta_row,
                       HAS_D: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Stores du and dΔ of one (BLOCK_D, BLOCK_T) chunk, given Σ_n g·a·h_{t-1}·A (``grad_dt``) and Σ_n g·B
    (``adj_B``); returns the chunk's dD and ddelta_bias terms, (BLOCK_D,) each."""
    grad_dt += u * adj_B
    grad_u = dt * adj_B
    grad_D = tl.sum(dy * u, axis=1)
    if HAS_D:
        grad_u += D[:, None] * dy
    if SOFTPLUS:
        grad_dt = grad_dt / (1.0 + tl.exp(-raw))
    grad_dt = tl.where(mask_t[None, :], grad_dt, 0.0)
    tl.store(du_row + offs_t[None, :], grad_u.to(du_row.dtype.element_ty), mask=mask_t[None, :])
    tl.store(ddelta_row + offs_t[None, :], grad_dt.to(ddelta_row.dtype.element_ty), mask=mask_t[None, :])
    return grad_D, tl.sum(grad_dt, axis=1)


@triton.jit
def _add_param_grads(dA_ptr, dD_ptr, dbias_ptr, offs_d, offs_n, dstate, mask_dn, grad_A, grad_D, grad_bias,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Adds a program's dA (BLOCK_D, BLOCK_N), dD and ddelta_bias (BLOCK_D,) into the shared fp32 buffers."""
    tl.atomic_add(dA_ptr + offs_d[:, None] * dstate + offs_n[None, :], grad_A, mask=mask_dn, sem='relaxed')
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, grad_D, sem='relaxed')
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, grad_bias, sem='relaxed')


@triton.jit
def _scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, ckpt_ptr, last_ptr,
                     dim, length, channels_per_group, n_chunks, dstate,
                     stride_u, stride_delta, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     STORE_CKPT: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    pid_b = tl.program_id(0)
    d0 = tl.program_id(1) * BLOCK_D
    group = d0 // channels_per_group
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < dstate
    mask_dn = mask_n[None, :] & (offs_d[:, None] < dim)
    A2 = tl.load(A_ptr + offs_d[:, None] * dstate + offs_n[None, :], mask=mask_dn, other=0.0) * 1.4426950408889634
    bias, D = _channel_vectors(bias_ptr, D_ptr, offs_d, HAS_BIAS, HAS_D)
    seq = (pid_b * dim + offs_d).to(tl.int64) * length  # (BLOCK_D,) row offsets into the outputs (b, d, L)
    u_row, delta_row, B_row, C_row = _input_bases(
        u_ptr, delta_ptr, B_ptr, C_ptr, pid_b, (offs_d.to(tl.int64) * length)[:, None], group,
        stride_u, stride_delta, stride_Bb, stride_Bg, stride_Cb, stride_Cg)
    y_row = y_ptr + seq[:, None]
    ckpt_row = ckpt_ptr + (pid_b * dim + offs_d).to(tl.int64)[:, None] * n_chunks * dstate + offs_n[None, :]
    arange_t = tl.arange(0, BLOCK_T)
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for chunk in range(0, n_chunks):
        if STORE_CKPT:
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
                     stride_u, stride_delta, stride_dy, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     BC_MODE: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    d0 = pid_d * BLOCK_D
    groups = dim // channels_per_group
    group = d0 // channels_per_group
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < dstate
    mask_dn = mask_n[None, :] & (offs_d[:, None] < dim)
    A = tl.load(A_ptr + offs_d[:, None] * dstate + offs_n[None, :], mask=mask_dn, other=0.0)
    A2 = A * 1.4426950408889634
    bias, D = _channel_vectors(bias_ptr, D_ptr, offs_d, HAS_BIAS, HAS_D)
    rows = (offs_d.to(tl.int64) * length)[:, None]  # row offsets inside one batch entry of u, delta, dy
    seq = (pid_b * dim + offs_d).to(tl.int64) * length  # row offsets into the contiguous du, ddelta
    u_row, delta_row, B_row, C_row = _input_bases(u_ptr, delta_ptr, B_ptr, C_ptr, pid_b, rows, group, stride_u,
                                                  stride_delta, stride_Bb, stride_Bg, stride_Cb, stride_Cg)
    dy_row = dy_ptr + pid_b.to(tl.int64) * stride_dy + rows
    du_row = du_ptr + seq[:, None]
    ddelta_row = ddelta_ptr + seq[:, None]
    bc_off = (pid_b * groups + group).to(tl.int64) * dstate * length  # into the contiguous dB, dC
    if BC_MODE == 2:  # partial sums per program, (b, dim / BLOCK_D, n, L), reduced afterwards
        part_off = (pid_b * tl.num_programs(1) + pid_d).to(tl.int64) * dstate * length
        dB_row = dB_ptr + part_off
        dC_row = dC_ptr + part_off
    else:
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
        _, dt_next = _delta_chunk(delta_row, offs_next, mask_next, bias, HAS_BIAS, SOFTPLUS)
        a_next = tl.where(mask_next[None, None, :], tl.exp2(dt_next[:, None, :] * A2[:, :, None]), 0.0)
        q = dy[:, None, :] * C[None, :, :]
        q = tl.where((arange_t == BLOCK_T - 1)[None, None, :], q + a_next * g_next[:, :, None], q)
        _, adj = tl.associative_scan((a_next, q), axis=2, combine_fn=_affine_combine, reverse=True)
        g_next = tl.sum(tl.where((arange_t == 0)[None, None, :], adj, 0.0), axis=2)
        # dL/d(Δ·A)_t = g_t·a_t·h_{t-1} = g_t·(h_t - x_t)
        grad_arg = adj * (states - x)
        grad_A += tl.sum(grad_arg * dt[:, None, :], axis=2)
        adj_B = tl.sum(adj * B[None, :, :], axis=1)
        chunk_D, chunk_bias = _store_input_grads(tl.sum(grad_arg * A[:, :, None], axis=1), adj_B, u, dt, dy,
                                                 delta_raw, D, mask_t, offs_t, du_row, ddelta_row, HAS_D, SOFTPLUS)
        grad_D += chunk_D
        grad_bias += chunk_bias
        grad_B = tl.sum(adj * (dt * u)[:, None, :], axis=0)
        grad_C = tl.sum(states * dy[:, None, :], axis=0)
        bc_offs = offs_n[:, None] * length + offs_t[None, :]
        if BC_MODE == 1:
            tl.atomic_add(dB_row + bc_offs, grad_B, mask=mask_nt, sem='relaxed')
            tl.atomic_add(dC_row + bc_offs, grad_C, mask=mask_nt, sem='relaxed')
        else:
            tl.store(dB_row + bc_offs, grad_B.to(dB_ptr.dtype.element_ty), mask=mask_nt)
            tl.store(dC_row + bc_offs, grad_C.to(dC_ptr.dtype.element_ty), mask=mask_nt)
    _add_param_grads(dA_ptr, dD_ptr, dbias_ptr, offs_d, offs_n, dstate, mask_dn, grad_A, grad_D, grad_bias, HAS_D,
                     HAS_BIAS)


# --- the sequential variant ('seq') -----------------------------------------------------------------------------
# A program owns a (BLOCK_D, SEGS, BLOCK_N) tile: BLOCK_D channels × SEGS time segments × the states. A chunk is
# SEGS consecutive segments of STEPS steps each; every thread walks its segment step by step (statically
# unrolled, no cross-thread traffic), and the segments are linked by one associative scan over SEGS per chunk.


@triton.jit
def _seq_load(u_base, delta_base, B_base, t, valid, mask_n, bias, HAS_BIAS: tl.constexpr,
              SOFTPLUS: tl.constexpr):
    """One step of every segment: u, raw delta(+bias), Δ (BLOCK_D, SEGS, 1) and B (1, SEGS, BLOCK_N)."""
    u = tl.load(u_base + t, mask=valid, other=0.0).to(tl.float32)
    raw = tl.load(delta_base + t, mask=valid, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    dt = tl.where(valid, dt, 0.0)  # Δ = 0 past the end (or before the start): a = 1, x = 0
    B = tl.load(B_base + t, mask=valid & mask_n, other=0.0).to(tl.float32)
    return u, raw, dt, B


@triton.jit
def _seq_segment_starts(u_base, delta_base, B_base, t_seg, arange_s, length, mask_n, A2, bias, h_carry,
                        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr,
                        SEGS: tl.constexpr, BLOCK_N: tl.constexpr, STEPS: tl.constexpr):
    """State at the start of every segment of the chunk, given the state h_carry at the chunk start.

    Walks segment s-1's steps in every lane s (lane 0 walks nothing), so that the inclusive scan over the segments
    of these shifted (decay, drive) aggregates is directly the exclusive prefix each segment starts from."""
    P = tl.full([BLOCK_D, SEGS, BLOCK_N], 1.0, tl.float32)
    X = tl.zeros([BLOCK_D, SEGS, BLOCK_N], dtype=tl.float32)
    for k in tl.static_range(STEPS):
        t = t_seg - STEPS + k
        valid = (arange_s > 0) & (t < length)
        u, raw, dt, B = _seq_load(u_base, delta_base, B_base, t, valid, mask_n, bias, HAS_BIAS, SOFTPLUS)
        a = tl.exp2(dt * A2)
        X = a * X + (dt * u) * B
        P = P * a
    Pp, Xp = tl.associative_scan((P, X), axis=1, combine_fn=_affine_combine)
    return Pp * h_carry + Xp


@triton.jit
def _seq_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, ckpt_ptr, last_ptr,
                    dim, length, channels_per_group, n_chunks, dstate,
                    stride_u, stride_delta, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
                    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    STORE_CKPT: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, SEGS: tl.constexpr, STEPS: tl.constexpr):
    pid_b = tl.program_id(0)
    d0 = tl.program_id(1) * BLOCK_D
    group = d0 // channels_per_group
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_d3 = offs_d[:, None, None]
    offs_n3 = tl.arange(0, BLOCK_N)[None, None, :]
    mask_n = offs_n3 < dstate
    mask_dn = mask_n & (offs_d3 < dim)
    A2 = tl.load(A_ptr + offs_d3 * dstate + offs_n3, mask=mask_dn, other=0.0) * 1.4426950408889634
    bias, D = _channel_vectors(bias_ptr, D_ptr, offs_d3, HAS_BIAS, HAS_D)
    seq = (pid_b * dim + offs_d3).to(tl.int64)  # (b, d) index of the contiguous outputs
    u_base, delta_base, B_block, C_block = _input_bases(
        u_ptr, delta_ptr, B_ptr, C_ptr, pid_b, offs_d3.to(tl.int64) * length, group,
        stride_u, stride_delta, stride_Bb, stride_Bg, stride_Cb, stride_Cg)
    y_base = y_ptr + seq * length
    B_base = B_block + offs_n3 * length
    C_base = C_block + offs_n3 * length
    ckpt_base = ckpt_ptr + seq * n_chunks * dstate + offs_n3
    arange_s = tl.arange(0, SEGS)[None, :, None]
    h_carry = tl.zeros([BLOCK_D, 1, BLOCK_N], dtype=tl.float32)
    for chunk in range(0, n_chunks):
        if STORE_CKPT:
            tl.store(ckpt_base + chunk * dstate, h_carry, mask=mask_dn)
        t_seg = chunk * (SEGS * STEPS) + arange_s * STEPS
        if SEGS > 1:
            h = _seq_segment_starts(u_base, delta_base, B_base, t_seg, arange_s, length, mask_n, A2, bias,
                                    h_carry, HAS_BIAS, SOFTPLUS, BLOCK_D, SEGS, BLOCK_N, STEPS)
        else:
            h = h_carry
        for k in tl.static_range(STEPS):
            t = t_seg + k
            valid = t < length
            u, raw, dt, B = _seq_load(u_base, delta_base, B_base, t, valid, mask_n, bias, HAS_BIAS, SOFTPLUS)
            h = tl.exp2(dt * A2) * h + (dt * u) * B
            C = tl.load(C_base + t, mask=valid & mask_n, other=0.0).to(tl.float32)
            y = tl.sum(h * C, axis=2, keep_dims=True)
            if HAS_D:
                y = y + D * u
            tl.store(y_base + t, y.to(y_ptr.dtype.element_ty), mask=valid)
        if SEGS > 1:
            h_carry = tl.sum(tl.where(arange_s == SEGS - 1, h, 0.0), axis=1, keep_dims=True)
        else:
            h_carry = h
    tl.store(last_ptr + seq * dstate + offs_n3, h_carry, mask=mask_dn)


@triton.jit
def _seq_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, ckpt_ptr,
                    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                    dim, length, channels_per_group, n_chunks, dstate,
                    stride_u, stride_delta, stride_dy, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
                    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    BC_MODE: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, SEGS: tl.constexpr, STEPS: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    d0 = pid_d * BLOCK_D
    groups = dim // channels_per_group
    group = d0 // channels_per_group
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_d3 = offs_d[:, None, None]
    offs_n3 = tl.arange(0, BLOCK_N)[None, None, :]
    mask_n = offs_n3 < dstate
    mask_dn = mask_n & (offs_d3 < dim)
    A = tl.load(A_ptr + offs_d3 * dstate + offs_n3, mask=mask_dn, other=0.0)
    A2 = A * 1.4426950408889634
    bias, D = _channel_vectors(bias_ptr, D_ptr, offs_d3, HAS_BIAS, HAS_D)
    rows = offs_d3.to(tl.int64) * length  # row offsets inside one batch entry of u, delta, dy
    seq = (pid_b * dim + offs_d3).to(tl.int64)  # (b, d) index of the contiguous du, ddelta, checkpoints
    u_base, delta_base, B_block, C_block = _input_bases(u_ptr, delta_ptr, B_ptr, C_ptr, pid_b, rows, group,
                                                        stride_u, stride_delta, stride_Bb, stride_Bg, stride_Cb,
                                                        stride_Cg)
    dy_base = dy_ptr + pid_b.to(tl.int64) * stride_dy + rows
    du_base = du_ptr + seq * length
    ddelta_base = ddelta_ptr + seq * length
    B_base = B_block + offs_n3 * length
    C_base = C_block + offs_n3 * length
    bc_off = (pid_b * groups + group).to(tl.int64) * dstate * length  # into the contiguous dB, dC
    if BC_MODE == 2:  # partial sums per program, (b, dim / BLOCK_D, n, L), reduced afterwards
        part_off = (pid_b * tl.num_programs(1) + pid_d).to(tl.int64) * dstate * length
        dB_base = dB_ptr + part_off + offs_n3 * length
        dC_base = dC_ptr + part_off + offs_n3 * length
    else:
        dB_base = dB_ptr + bc_off + offs_n3 * length
        dC_base = dC_ptr + bc_off + offs_n3 * length
    ckpt_base = ckpt_ptr + seq * n_chunks * dstate + offs_n3
    arange_s = tl.arange(0, SEGS)[None, :, None]
    w_carry = tl.zeros([BLOCK_D, 1, BLOCK_N], dtype=tl.float32)  # a_{t+1}·g_{t+1} entering the chunk's end
    grad_A = tl.zeros([BLOCK_D, SEGS, BLOCK_N], dtype=tl.float32)
    grad_D = tl.zeros([BLOCK_D, SEGS, 1], dtype=tl.float32)
    grad_bias = tl.zeros([BLOCK_D, SEGS, 1], dtype=tl.float32)
    for step in range(0, n_chunks):
        chunk = n_chunks - 1 - step
        h0 = tl.load(ckpt_base + chunk * dstate, mask=mask_dn, other=0.0)
        t_seg = chunk * (SEGS * STEPS) + arange_s * STEPS
        if SEGS > 1:
            h = _seq_segment_starts(u_base, delta_base, B_base, t_seg, arange_s, length, mask_n, A2, bias,
                                    h0, HAS_BIAS, SOFTPLUS, BLOCK_D, SEGS, BLOCK_N, STEPS)
            # the adjoint entering each segment's end: lane s walks segment s+1 backwards (the last lane
            # nothing); the reverse inclusive scan over segments gives what flows in from the right
            P = tl.full([BLOCK_D, SEGS, BLOCK_N], 1.0, tl.float32)
            W = tl.zeros([BLOCK_D, SEGS, BLOCK_N], dtype=tl.float32)
            for j in tl.static_range(STEPS):
                t = t_seg + (2 * STEPS - 1 - j)
                valid = (arange_s < SEGS - 1) & (t < length)
                u, raw, dt, B = _seq_load(u_base, delta_base, B_base, t, valid, mask_n, bias, HAS_BIAS, SOFTPLUS)
                a = tl.exp2(dt * A2)
                dy = tl.load(dy_base + t, mask=valid, other=0.0).to(tl.float32)
                C = tl.load(C_base + t, mask=valid & mask_n, other=0.0).to(tl.float32)
                W = a * (dy * C + W)
                P = P * a
            Pp, Wp = tl.associative_scan((P, W), axis=1, combine_fn=_affine_combine, reverse=True)
            w = Pp * w_carry + Wp
        else:
            h = h0
            w = w_carry
        # recompute the segment's states forwards, keeping h_{t-1} and a_t of every step in registers
        h_prev = ()
        decay = ()
        for k in tl.static_range(STEPS):
            t = t_seg + k
            valid = t < length
            u, raw, dt, B = _seq_load(u_base, delta_base, B_base, t, valid, mask_n, bias, HAS_BIAS, SOFTPLUS)
            a = tl.exp2(dt * A2)
            h_prev = h_prev + (h,)
            decay = decay + (a,)
            h = a * h + (dt * u) * B
        # then walk it backwards: g_t = C_t·dy_t + w, w <- a_t·g_t
        for j in tl.static_range(STEPS):
            t = t_seg + (STEPS - 1 - j)
            valid = t < length
            u, raw, dt, B = _seq_load(u_base, delta_base, B_base, t, valid, mask_n, bias, HAS_BIAS, SOFTPLUS)
            a = decay[STEPS - 1 - j]
            hp = h_prev[STEPS - 1 - j]
            dy = tl.load(dy_base + t, mask=valid, other=0.0).to(tl.float32)
            C = tl.load(C_base + t, mask=valid & mask_n, other=0.0).to(tl.float32)
            g = dy * C + w
            grad_arg = g * a * hp  # dL/d(Δ·A)_t
            grad_A += grad_arg * dt
            adj_B = tl.sum(g * B, axis=2, keep_dims=True)
            grad_dt = tl.sum(grad_arg * A, axis=2, keep_dims=True) + u * adj_B
            grad_u = dt * adj_B
            if HAS_D:
                grad_u += D * dy
                grad_D += dy * u
            if SOFTPLUS:
                grad_dt = grad_dt / (1.0 + tl.exp(-raw))
            grad_dt = tl.where(valid, grad_dt, 0.0)
            grad_bias += grad_dt
            tl.store(du_base + t, grad_u.to(du_ptr.dtype.element_ty), mask=valid)
            tl.store(ddelta_base + t, grad_dt.to(ddelta_ptr.dtype.element_ty), mask=valid)
            grad_B = tl.sum(g * (dt * u), axis=0, keep_dims=True)
            grad_C = tl.sum((a * hp + (dt * u) * B) * dy, axis=0, keep_dims=True)
            mask_bc = valid & mask_n
            if BC_MODE == 1:
                tl.atomic_add(dB_base + t, grad_B, mask=mask_bc, sem='relaxed')
                tl.atomic_add(dC_base + t, grad_C, mask=mask_bc, sem='relaxed')
            else:
                tl.store(dB_base + t, grad_B.to(dB_ptr.dtype.element_ty), mask=mask_bc)
                tl.store(dC_base + t, grad_C.to(dC_ptr.dtype.element_ty), mask=mask_bc)
            w = a * g
        if SEGS > 1:
            w_carry = tl.sum(tl.where(arange_s == 0, w, 0.0), axis=1, keep_dims=True)
        else:
            w_carry = w
    tl.atomic_add(dA_ptr + offs_d3 * dstate + offs_n3, tl.sum(grad_A, axis=1, keep_dims=True),
                  mask=mask_dn, sem='relaxed')
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d3, tl.sum(grad_D, axis=1, keep_dims=True), sem='relaxed')
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d3, tl.sum(grad_bias, axis=1, keep_dims=True), sem='relaxed')


# --- the state-loop variant ('state') -----------------------------------------------------------------------------
# A program owns (BLOCK_D, BLOCK_T) tiles: BLOCK_D channels × a chunk of BLOCK_T steps, and loops over the d_state
# states (``UNROLL`` of them per loop iteration). Each state's recurrence is one associative scan over time of a 2-D
# tile, so the sums over the states (y, and Δ's and u's gradients) accumulate in registers instead of being
# reduced across threads, and the tile holds a thread's steps consecutively (the scan walks them sequentially
# before any cross-thread step). The carried states and adjoints, one (BLOCK_D,) column per state, live in a (BLOCK_D,
# BLOCK_N) tile between chunks.


@triton.jit
def _column(tile, offs_n, n):
    """Column n of a (BLOCK_D, BLOCK_N) tile as a (BLOCK_D,) vector."""
    return tl.sum(tl.where(offs_n[None, :] == n, tile, 0.0), axis=1)


@triton.jit
def _tile_layout_hint(any_ptr, offs_d, offs_t, length):
    """Zeros of the (BLOCK_D, BLOCK_T) tile's shape from a load that never happens (its mask is false at run time),
    at a 16-byte aligned address read as bytes. Added to a loaded tile, it ties the tile to an access that could
    move 16 steps at once: Triton lays out everything connected to a load by the widest such access, so each
    thread then holds consecutive steps and the scans over time run mostly inside threads. Without it, rows that
    start unaligned (L not a multiple of 16) get one step per thread and 32-step stripes across warps."""
    byte_ptr = any_ptr.to(tl.pointer_type(tl.int8))
    never = (offs_t + length < 0)[None, :]
    return tl.load(byte_ptr + (offs_d * 0)[:, None] + offs_t[None, :], mask=never, other=0).to(tl.float32)


@triton.jit
def _state_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, ckpt_ptr, last_ptr,
                      dim, length, channels_per_group, n_chunks, dstate,
                      stride_u, stride_delta, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
                      HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                      STORE_CKPT: tl.constexpr, N_STATES: tl.constexpr, UNROLL: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
                      CKPT_T: tl.constexpr):
    """Forward of the 'state' family. With ``STORE_CKPT``, the state before every ``CKPT_T``-th step (a power of 2
    dividing BLOCK_T: the backward's chunks) goes to ``ckpt`` (b, d, cdiv(L, CKPT_T), d_state)."""
    pid_b = tl.program_id(0)
    d0 = tl.program_id(1) * BLOCK_D
    group = d0 // channels_per_group
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_dn = (offs_n[None, :] < dstate) & (offs_d[:, None] < dim)
    bias, D = _channel_vectors(bias_ptr, D_ptr, offs_d, HAS_BIAS, HAS_D)
    seq = (pid_b * dim + offs_d).to(tl.int64)
    u_row, delta_row, B_row, C_row = _input_bases(
        u_ptr, delta_ptr, B_ptr, C_ptr, pid_b, (offs_d.to(tl.int64) * length)[:, None], group,
        stride_u, stride_delta, stride_Bb, stride_Bg, stride_Cb, stride_Cg)
    y_row = y_ptr + (seq * length)[:, None]
    per_chunk: tl.constexpr = BLOCK_T // CKPT_T  # checkpoints per chunk
    ckpt_seq = ckpt_ptr + seq * tl.cdiv(length, CKPT_T) * dstate
    ckpt_row = ckpt_seq[:, None] + offs_n[None, :]
    arange_t = tl.arange(0, BLOCK_T)
    first = (arange_t == 0)[None, :]
    last = (arange_t == BLOCK_T - 1)[None, :]  # masked steps pass the state through: the chunk's end state
    sub_end = ((arange_t + 1) % CKPT_T == 0) & (arange_t + 1 < BLOCK_T)  # states that start a checkpoint inside
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for chunk in range(0, n_chunks):
        if STORE_CKPT:
            tl.store(ckpt_row + chunk * per_chunk * dstate, h, mask=mask_dn)
        offs_t = chunk * BLOCK_T + arange_t
        mask_t = offs_t < length
        u = _load_rows(u_row, offs_t, mask_t)
        u += _tile_layout_hint(A_ptr, offs_d, offs_t - chunk * BLOCK_T, length)
        raw, dt = _delta_chunk(delta_row, offs_t, mask_t, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        y = D[:, None] * u
        h_end = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for n in tl.range(0, N_STATES, loop_unroll_factor=UNROLL):
            A2 = tl.load(A_ptr + offs_d * dstate + n) * 1.4426950408889634
            B = tl.load(B_row + n * length + offs_t, mask=mask_t, other=0.0).to(tl.float32)
            C = tl.load(C_row + n * length + offs_t, mask=mask_t, other=0.0).to(tl.float32)
            a = tl.exp2(dt * A2[:, None])
            x = dtu * B[None, :]
            x = tl.where(first, x + a * _column(h, offs_n, n)[:, None], x)
            _, states = tl.associative_scan((a, x), axis=1, combine_fn=_affine_combine)
            if STORE_CKPT and per_chunk > 1:
                inside = (sub_end & (offs_t + 1 < length))[None, :] & (offs_d < dim)[:, None]
                tl.store(ckpt_seq[:, None] + ((offs_t + 1) // CKPT_T * dstate + n)[None, :], states, mask=inside)
            y += states * C[None, :]
            end = tl.sum(tl.where(last, states, 0.0), axis=1)
            h_end = tl.where(offs_n[None, :] == n, end[:, None], h_end)
        h = h_end
        tl.store(y_row + offs_t[None, :], y.to(y_ptr.dtype.element_ty), mask=mask_t[None, :])
    tl.store(last_ptr + seq[:, None] * dstate + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def _state_carry_kernel(delta_ptr, A_ptr, C_ptr, bias_ptr, dy_ptr, carry_ptr, span_ptr,
                        dim, length, channels_per_group, n_chunks, dstate,
                        stride_delta, stride_dy, stride_Cb, stride_Cg,
                        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, N_STATES: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """First pass of the chunk-parallel backward: per (sequence, chunk) the adjoint that the chunk alone feeds into
    its first step, ``carry`` (b, d, chunks, d_state) = Σ_t exp(A·Σ_{first<s≤t} Δ_s)·dy_t·C_t (zero carry from
    later chunks), and ``span`` (b, d, chunks) = Σ_{first<s≤last+1} Δ_s, the exponent (times A) of the decay from
    the chunk's first step to the next chunk's. Products of decays as exponentials of sums of Δ: no scans."""
    pid_b = tl.program_id(0)
    d0 = tl.program_id(1) * BLOCK_D
    chunk = tl.program_id(2)
    group = (d0 // channels_per_group).to(tl.int64)
    offs_d = d0 + tl.arange(0, BLOCK_D)
    bias, _ = _channel_vectors(bias_ptr, bias_ptr, offs_d, HAS_BIAS, False)
    rows = (offs_d.to(tl.int64) * length)[:, None]
    delta_row = delta_ptr + pid_b.to(tl.int64) * stride_delta + rows
    dy_row = dy_ptr + pid_b.to(tl.int64) * stride_dy + rows
    C_row = C_ptr + pid_b.to(tl.int64) * stride_Cb + group * stride_Cg
    seq = (pid_b * dim + offs_d).to(tl.int64)
    arange_t = tl.arange(0, BLOCK_T)
    offs_t = chunk * BLOCK_T + arange_t
    mask_t = offs_t < length
    dy = _load_rows(dy_row, offs_t, mask_t)
    dy += _tile_layout_hint(A_ptr, offs_d, arange_t, length)
    _, dt = _delta_chunk(delta_row, offs_t, mask_t, bias, HAS_BIAS, SOFTPLUS)
    _, dt_next = _delta_chunk(delta_row, offs_t + 1, offs_t + 1 < length, bias, HAS_BIAS, SOFTPLUS)
    decay = tl.cumsum(tl.where((arange_t == 0)[None, :], 0.0, dt), axis=1)  # Σ_{first<s≤t} Δ_s
    out = carry_ptr + (seq * n_chunks + chunk) * dstate
    for n in tl.range(0, N_STATES, loop_unroll_factor=1):
        A2 = tl.load(A_ptr + offs_d * dstate + n) * 1.4426950408889634
        C = tl.load(C_row + n * length + offs_t, mask=mask_t, other=0.0).to(tl.float32)
        tl.store(out + n, tl.sum(tl.exp2(decay * A2[:, None]) * dy * C[None, :], axis=1))
    tl.store(span_ptr + seq * n_chunks + chunk, tl.sum(dt_next, axis=1))


@triton.jit
def _chunk_carry(carry_ptr, span_ptr, A_ptr, seq, offs_d, offs_n, mask_dn, dstate, chunk, n_chunks,
                 NC: tl.constexpr):
    """The adjoint at the first step of chunk ``chunk`` + 1 from the first pass's per-chunk terms, (BLOCK_D,
    BLOCK_N): Σ_{c > chunk} exp(A·E_c)·carry_c with E_c = Σ_{chunk < c' < c} span_c' (zero past the last chunk)."""
    offs_c = tl.arange(0, NC)
    before = offs_c - 1  # span of the chunk before c, summed from chunk + 1 on: an exclusive sum without subtracting
    spans = tl.load(span_ptr + seq[:, None] * n_chunks + before[None, :],
                    mask=((before > chunk) & (before < n_chunks))[None, :], other=0.0)
    exponent = tl.cumsum(spans, axis=1)  # (BLOCK_D, NC)
    A2 = tl.load(A_ptr + offs_d[:, None] * dstate + offs_n[None, :], mask=mask_dn, other=0.0) * 1.4426950408889634
    later = (offs_c > chunk) & (offs_c < n_chunks)
    terms = tl.load(carry_ptr + (seq[:, None, None] * n_chunks + offs_c[None, :, None]) * dstate
                    + offs_n[None, None, :], mask=later[None, :, None] & mask_dn[:, None, :], other=0.0)
    return tl.sum(tl.exp2(exponent[:, :, None] * A2[:, None, :]) * terms, axis=1)


@triton.jit
def _state_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, ckpt_ptr,
                      du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, carry_ptr, span_ptr,
                      dim, length, channels_per_group, n_chunks, dstate,
                      stride_u, stride_delta, stride_dy, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
                      HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                      BC_MODE: tl.constexpr, N_STATES: tl.constexpr, UNROLL: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
                      SPLIT: tl.constexpr, NC: tl.constexpr):
    """Backward of the 'state' family: the chunks of BLOCK_T steps in reverse order, one program per channel
    block, or with ``SPLIT`` one program per chunk and channel block, the adjoint carried in from later chunks
    taken from ``_state_carry_kernel``'s terms (``_chunk_carry``)."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    d0 = pid_d * BLOCK_D
    groups = dim // channels_per_group
    group = d0 // channels_per_group
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_dn = (offs_n[None, :] < dstate) & (offs_d[:, None] < dim)
    bias, D = _channel_vectors(bias_ptr, D_ptr, offs_d, HAS_BIAS, HAS_D)
    rows = (offs_d.to(tl.int64) * length)[:, None]
    seq = (pid_b * dim + offs_d).to(tl.int64)
    u_row, delta_row, B_row, C_row = _input_bases(u_ptr, delta_ptr, B_ptr, C_ptr, pid_b, rows, group, stride_u,
                                                  stride_delta, stride_Bb, stride_Bg, stride_Cb, stride_Cg)
    dy_row = dy_ptr + pid_b.to(tl.int64) * stride_dy + rows
    du_row = du_ptr + (seq * length)[:, None]
    ddelta_row = ddelta_ptr + (seq * length)[:, None]
    if BC_MODE == 2:  # partial sums per program, (b, dim / BLOCK_D, n, L), reduced afterwards
        bc_off = (pid_b * tl.num_programs(1) + pid_d).to(tl.int64) * dstate * length
    else:
        bc_off = (pid_b * groups + group).to(tl.int64) * dstate * length
    ckpt_row = ckpt_ptr + seq[:, None] * n_chunks * dstate + offs_n[None, :]
    arange_t = tl.arange(0, BLOCK_T)
    first = (arange_t == 0)[None, :]
    last = (arange_t == BLOCK_T - 1)[None, :]
    if SPLIT:
        step_first = n_chunks - 1 - tl.program_id(2)
        step_end = step_first + 1
        # the adjoint at the next chunk's first step
        g_carry = _chunk_carry(carry_ptr, span_ptr, A_ptr, seq, offs_d, offs_n, mask_dn, dstate,
                               tl.program_id(2), n_chunks, NC)
    else:
        step_first = 0
        step_end = n_chunks
        g_carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    grad_A = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    grad_D = tl.zeros([BLOCK_D], dtype=tl.float32)
    grad_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for step in range(step_first, step_end):
        chunk = n_chunks - 1 - step
        h0 = tl.load(ckpt_row + chunk * dstate, mask=mask_dn, other=0.0)
        offs_t = chunk * BLOCK_T + arange_t
        mask_t = offs_t < length
        u = _load_rows(u_row, offs_t, mask_t)
        u += _tile_layout_hint(A_ptr, offs_d, offs_t - chunk * BLOCK_T, length)
        raw, dt = _delta_chunk(delta_row, offs_t, mask_t, bias, HAS_BIAS, SOFTPLUS)
        dy = _load_rows(dy_row, offs_t, mask_t)
        # Δ one step ahead (a_{t+1}; the next chunk's first step at the chunk's end), a_{t+1} = 0 past the end
        mask_next = offs_t + 1 < length
        _, dt_next = _delta_chunk(delta_row, offs_t + 1, mask_next, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        grad_dt = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)  # Σ_n g·a·h_{t-1}·A
        adj_B = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)  # Σ_n g·B
        g_start = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        for n in tl.range(0, N_STATES, loop_unroll_factor=UNROLL):
            A = tl.load(A_ptr + offs_d * dstate + n)
            A2 = A * 1.4426950408889634
            B = tl.load(B_row + n * length + offs_t, mask=mask_t, other=0.0).to(tl.float32)
            C = tl.load(C_row + n * length + offs_t, mask=mask_t, other=0.0).to(tl.float32)
            a = tl.exp2(dt * A2[:, None])
            x = dtu * B[None, :]
            x_carried = tl.where(first, x + a * _column(h0, offs_n, n)[:, None], x)
            _, states = tl.associative_scan((a, x_carried), axis=1, combine_fn=_affine_combine)
            a_next = tl.where(mask_next[None, :], tl.exp2(dt_next * A2[:, None]), 0.0)
            q = dy * C[None, :]
            q = tl.where(last, q + a_next * _column(g_carry, offs_n, n)[:, None], q)
            _, adj = tl.associative_scan((a_next, q), axis=1, combine_fn=_affine_combine, reverse=True)
            if not SPLIT:
                if chunk > 0:  # the adjoint at the chunk's first step, for the chunk before (none for the first)
                    g_first = tl.sum(tl.where(first, adj, 0.0), axis=1)
                    g_start = tl.where(offs_n[None, :] == n, g_first[:, None], g_start)
            # dL/d(Δ·A)_t = g_t·a_t·h_{t-1} = g_t·(h_t - x_t)
            grad_arg = adj * (states - x)
            grad_A += tl.where(offs_n[None, :] == n, tl.sum(grad_arg * dt, axis=1)[:, None], 0.0)
            grad_dt += grad_arg * A[:, None]
            adj_B += adj * B[None, :]
            grad_B = tl.sum(adj * dtu, axis=0)
            grad_C = tl.sum(states * dy, axis=0)
            bc = bc_off + n * length + offs_t
            if BC_MODE == 1:
                tl.atomic_add(dB_ptr + bc, grad_B, mask=mask_t, sem='relaxed')
                tl.atomic_add(dC_ptr + bc, grad_C, mask=mask_t, sem='relaxed')
            else:
                tl.store(dB_ptr + bc, grad_B.to(dB_ptr.dtype.element_ty), mask=mask_t)
                tl.store(dC_ptr + bc, grad_C.to(dC_ptr.dtype.element_ty), mask=mask_t)
        g_carry = g_start
        chunk_D, chunk_bias = _store_input_grads(grad_dt, adj_B, u, dt, dy, raw, D, mask_t, offs_t, du_row,
                                                 ddelta_row, HAS_D, SOFTPLUS)
        grad_D += chunk_D
        grad_bias += chunk_bias
    _add_param_grads(dA_ptr, dD_ptr, dbias_ptr, offs_d, offs_n, dstate, mask_dn, grad_A, grad_D, grad_bias, HAS_D,
                     HAS_BIAS)


# --- launch configuration -----------------------------------------------------------------------------------------

BC_MODES = {'store': 0, 'atomic': 1, 'partial': 2}
KERNELS = ('seq', 'scan', 'state')

# Overrides of the per-shape default config (tools/benchmark_scan.py --tune sweeps them; tests pin variants):
#   kernel      'seq' (sequential steps per thread, segments linked by a scan), 'scan' (associative scan of
#               whole (BLOCK_D, d_state, BLOCK_T) chunks) or 'state' (a loop over the states, an associative scan
#               of a (BLOCK_D, BLOCK_T) chunk each)
#   BLOCK_D     channels per program (must divide the channels per group)
#   BLOCK_T     'scan', 'state': steps per chunk
#   BWD_T       'state': steps per backward program (a power of 2 up to BLOCK_T): the backward runs every chunk of
#               BWD_T steps in parallel after a pass that computes each chunk's adjoint carry; 0: one program per
#               channel block walks the BLOCK_T chunks in reverse (default: 512 for long sequences, few programs)
#   bwd_warps   'state' with BWD_T: warps per backward program (default: 4 values per thread)
#   UNROLL      'state': states unrolled per iteration of the loop over states (default: 1 with one channel per
#               program, else d_state). 1, a loop at run time, compiles the backward to 168 registers instead of
#               207 at BLOCK_T 256 (sm_90), and without spills at BLOCK_T 2048; faster with one channel per program
#   SEGS, STEPS 'seq': segments per chunk (power of 2) and steps per segment (chunk = SEGS·STEPS steps)
#   num_warps   warps per program
#   bc          how dB/dC (shared by a group's channels) are summed over channel blocks: 'atomic' (fp32 atomics
#               into one buffer), 'partial' (a buffer per channel block, summed by torch afterwards), 'store'
#               (one program per group: plain stores, BLOCK_D must equal the channels per group) or 'auto'
#               ('store' where possible, else 'atomic')
_TUNING: dict = {}


def _default_config(batch: int, dim: int, channels_per_group: int, length: int, dstate: int) -> dict:
    """The default config for a shape (keys as in ``_TUNING``): the 'state' kernel (UNROLL and BWD_T:
    ``_launch_config``).

    On an H200 (2026-11-29, CUDA graph replays, i.e. GPU time) it ran forward+backward at 1.01-1.02x the CUDA
    kernel's speed at 128×160×196, 2.3-2.5x at 128×320×49, 0.92-1.10x at 2×160×12544 and 1.01-1.16x at
    2×320×3136 (fp32/fp16/bf16; README, Selective scan: Speed). Before it, 'scan' was the default; the 'seq'
    kernels are opt-in (``_TUNING``).
    An fp32 sweep on an H100 favoured them for short sequences (fwd+bwd 128×160×196: 1.35 ms vs 1.77 for 'scan';
    2×320×3136: 0.91 vs 1.10), but as the default, in fp16 at 128×160×196 they measured 1.98 ms against the CUDA
    kernel's 0.74 (no better than 'scan'), and MambaVision-T's eager throughput with them fell to 8696 img/s from
    10557 with 'scan' (H100, 2026-11-27; both runs with channels_last; a CUDA graph brought it to 13716, so the loss
    is host-side launch cost). ``tools/benchmark_scan.py --tune`` re-measures.
    """
    block_d, block_t, num_warps = _state_block_sizes(batch, dim, channels_per_group, length)
    return dict(kernel='state', BLOCK_D=block_d, BLOCK_T=block_t, num_warps=num_warps, bc='auto')


def _scan_block_sizes(batch: int, dim: int, channels_per_group: int, length: int,
                      dstate: int) -> Tuple[int, int, int]:
    """(BLOCK_D, BLOCK_T, num_warps) for the 'scan' kernel: enough programs to fill a GPU, tiles that fit.

    A tile is BLOCK_D·BLOCK_N·BLOCK_T fp32 values; the backward keeps about eight of them live, so tiles stay at
    2048 values (16 per thread with 4 warps)."""
    tile = 2048
    block_n = triton.next_power_of_2(dstate)
    block_t = max(16, min(triton.next_power_of_2(length), tile // block_n))
    block_d = 1
    while (channels_per_group % (block_d * 2) == 0 and batch * dim // (block_d * 2) >= 1024
           and block_d * 2 * block_n * min(block_t, 64) <= tile):
        block_d *= 2
        block_t = max(16, min(triton.next_power_of_2(length), tile // (block_n * block_d)))
    return block_d, block_t, 4


def _state_block_sizes(batch: int, dim: int, channels_per_group: int, length: int) -> Tuple[int, int, int]:
    """(BLOCK_D, BLOCK_T, num_warps) for the 'state' kernel: the whole sequence as one chunk up to 1024 steps,
    8 steps per thread, and channels per program (up to 4, while 2048 programs remain) until one warp holds 8
    values per thread. H200, fp16: backward kernel time at 128×160×196, one channel 0.31 ms, two 0.82, four 1.0,
    4 steps per thread 0.44; fwd+bwd at 128×320×49 (64-step chunks), one channel 0.198 ms, two 0.173, four 0.159;
    forward at 2×160×12544 (CUDA graph replays), 1024-step chunks with 4 warps 0.084 ms, 2048 with 8 0.099."""
    block_t = max(16, min(triton.next_power_of_2(length), 1024))
    block_d = 1
    while (block_d < 4 and block_d * 2 * block_t <= 256 and channels_per_group % (block_d * 2) == 0
           and batch * dim // (block_d * 2) >= 2048):
        block_d *= 2
    return block_d, block_t, max(1, block_d * block_t // 256)


def _launch_config(batch, dim, channels_per_group, length, dstate) -> dict:
    """The default config for the shape with ``_TUNING`` applied, checked and completed (BLOCK_N, chunk, bc)."""
    config = _default_config(batch, dim, channels_per_group, length, dstate)
    kernel = _TUNING.get('kernel', config['kernel'])
    if kernel != config['kernel']:
        if kernel == 'scan':
            block_d, block_t, warps = _scan_block_sizes(batch, dim, channels_per_group, length, dstate)
            config = dict(kernel='scan', BLOCK_D=block_d, BLOCK_T=block_t, num_warps=warps, bc='auto')
        elif kernel == 'seq':
            config = dict(kernel='seq', BLOCK_D=1, SEGS=16, STEPS=4, num_warps=4, bc='auto')
        elif kernel == 'state':
            block_d, block_t, warps = _state_block_sizes(batch, dim, channels_per_group, length)
            config = dict(kernel='state', BLOCK_D=block_d, BLOCK_T=block_t, num_warps=warps, bc='auto')
        else:
            raise ValueError(f'unknown kernel {kernel!r}; one of {KERNELS}')
    config.update(_TUNING)
    config['BLOCK_N'] = triton.next_power_of_2(dstate)
    block_d = config['BLOCK_D']
    if channels_per_group % block_d:
        raise ValueError(f'BLOCK_D={block_d} must divide the channels per group ({channels_per_group})')
    if config['kernel'] == 'seq':
        if config['SEGS'] & (config['SEGS'] - 1):
            raise ValueError(f"SEGS={config['SEGS']} must be a power of 2")
        config['chunk'] = config['SEGS'] * config['STEPS']
    else:
        config['chunk'] = config['BLOCK_T']
    config['ckpt'] = config['chunk']  # steps between the forward's checkpoints: the backward's chunks
    if config['kernel'] == 'state':
        config['N_STATES'] = dstate
        # the loop over states at run time with one channel per program (H200, CUDA graph replays, fwd+bwd at
        # 128×160×196 fp16: 0.359 ms against 0.385 unrolled, forward 0.065 against 0.081, fp32 0.370 against
        # 0.415; at 2×160×12544 forward 0.099 against 0.128, fwd+bwd the same); unrolled with several channels
        # per program, where that was what was measured
        config.setdefault('UNROLL', 1 if block_d == 1 else dstate)
        if not 1 <= config['UNROLL'] <= dstate:
            raise ValueError(f"UNROLL={config['UNROLL']}: states unrolled per loop iteration, 1 to d_state ({dstate})")
        # few long sequences (detection windows): the chunk-parallel backward (_state_carry_kernel), 128-step
        # chunks with one warp up to 4096 steps, 512-step chunks with 4 warps beyond. H200, CUDA graph replays,
        # fwd+bwd, 2026-11-29: at 2×160×12544 fp16 512-step chunks 0.400 ms against 0.507 for the sequential
        # backward (128: 0.419, 256: 0.428-0.441, 1024: 0.421; the CUDA kernel 0.406), fp32 512: 0.408, 128:
        # 0.423 (cuda 0.379); at 2×320×3136 128-step chunks 0.205 / 0.194 / 0.192 ms in fp32 / fp16 / bf16
        # against 0.238 / 0.211 / 0.214 with 512 and 4 warps (cuda 0.213 / 0.222 / 0.228)
        programs = batch * dim // block_d
        split = length > 512 and config['BLOCK_T'] >= 512 and programs < 4096
        config.setdefault('BWD_T', (128 if length <= 4096 else 512) if split else 0)
        bwd_t = config['BWD_T'] or 0
        if bwd_t and (bwd_t & (bwd_t - 1) or bwd_t > config['BLOCK_T']):
            raise ValueError(f"BWD_T={bwd_t}: steps per backward program, a power of 2 up to BLOCK_T "
                             f"({config['BLOCK_T']}), or 0 for the sequential backward")
        config['BWD_T'] = bwd_t
        if bwd_t:
            config.setdefault('bwd_warps', max(1, block_d * bwd_t // 128))  # 4 values per thread
            config['ckpt'] = bwd_t
    config['fwd'], config['bwd'] = f"_{config['kernel']}_fwd_kernel", f"_{config['kernel']}_bwd_kernel"
    bc = config.get('bc', 'auto')
    if bc == 'auto':
        bc = 'store' if block_d == channels_per_group else 'atomic'
    if bc not in BC_MODES or (bc == 'store' and block_d != channels_per_group):
        raise ValueError(f"bc={bc!r}: one of {tuple(BC_MODES)}, 'store' only with BLOCK_D = channels per group")
    config['bc'] = bc
    return config


def _kernel_args(config: dict, part: str, length: int) -> dict:
    """The constexpr arguments and launch options of the forward (``part`` 'fwd') or backward ('bwd') kernel at
    sequence length ``length`` (the chunk-parallel backward's chunk count)."""
    args = dict(BLOCK_D=config['BLOCK_D'], BLOCK_N=config['BLOCK_N'], num_warps=config['num_warps'])
    if config['kernel'] == 'seq':
        args.update(SEGS=config['SEGS'], STEPS=config['STEPS'])
    else:
        args.update(BLOCK_T=config['BLOCK_T'])
    if config['kernel'] == 'state':
        args.update(N_STATES=config['N_STATES'], UNROLL=config['UNROLL'])
        if part == 'fwd':
            args.update(CKPT_T=config['ckpt'])
        elif config['BWD_T']:
            args.update(BLOCK_T=config['BWD_T'], num_warps=config['bwd_warps'], SPLIT=True,
                        NC=triton.next_power_of_2(triton.cdiv(length, config['BWD_T'])))
        else:
            args.update(SPLIT=False, NC=1)
    if 'num_stages' in config:
        args['num_stages'] = config['num_stages']
    return args


# (batch, dim, channels per group, length, d_state, _TUNING items)
#     -> (config, forward kernel args, grid, forward chunks, backward kernel args, backward chunks)
_LAUNCH_CACHE: dict = {}
_LAUNCH_CACHE_SIZE = 256


def _cached_launch(batch: int, dim: int, channels_per_group: int, length: int,
                   dstate: int) -> Tuple[dict, dict, Tuple[int, int], int, dict, int]:
    """``_launch_config`` and what follows from it, computed once per shape and ``_TUNING`` content.

    Building the config is tens of microseconds of Python, as much as the launch itself, and a model calls the
    scan with a handful of shapes. The key holds the ``_TUNING`` items, so a changed ``_TUNING`` takes effect at
    the next call (tests and ``tools/benchmark_scan.py --tune`` change it between calls).
    """
    key = (batch, dim, channels_per_group, length, dstate, frozenset(_TUNING.items()) if _TUNING else ())
    entry = _LAUNCH_CACHE.get(key)
    if entry is None:
        config = _launch_config(batch, dim, channels_per_group, length, dstate)
        entry = (config, _kernel_args(config, 'fwd', length), (batch, dim // config['BLOCK_D']),
                 triton.cdiv(length, config['chunk']), _kernel_args(config, 'bwd', length),
                 triton.cdiv(length, config['ckpt']))
        if len(_LAUNCH_CACHE) >= _LAUNCH_CACHE_SIZE:  # only inputs of ever new sizes get here: start over
            _LAUNCH_CACHE.clear()
        _LAUNCH_CACHE[key] = entry
    return entry


# Direct launches. ``kernel[grid](...)`` (JITFunction.run) binds and specialises every argument and builds a cache
# key before the launch itself: ~40 us of host time per launch on the H200 machine of 2026-11-29 against ~7 us
# for the driver call, and the scan's backward launches two or three kernels. ``_launch`` keeps the compiled
# kernel that the first ``kernel[grid]`` call returns, under everything Triton specialises on (each tensor's dtype
# and 16-byte alignment, every other argument's value, the constexprs and launch options, the device), and from
# then on calls its launcher as JITFunction.run would.
DIRECT_LAUNCH = True  # False: every launch through kernel[grid] (tests compare the two)
_COMPILED: dict = {}
_COMPILED_SIZE = 512


def _direct_entry(kernel, compiled, n_args: int, options: dict):
    """What a direct launch of ``compiled`` needs: its launcher, function handle, packed metadata, launch-metadata
    method, and the values of the parameters after the ``n_args`` runtime ones (the constexprs, in signature
    order: JITFunction.run passes every parameter to the launcher, which skips the constexprs). False where this
    Triton's objects are not as expected, or the runtime parameters do not all come first: then every launch of
    this key goes through ``kernel[grid]``."""
    try:
        params = kernel.params
        if any(p.is_constexpr for p in params[:n_args]) or not all(p.is_constexpr for p in params[n_args:]):
            return False
        tail = []
        for p in params[n_args:]:
            if p.name in options:
                tail.append(options[p.name])
            elif p.has_default:
                tail.append(p.default)
            else:
                return False
        return compiled.run, compiled.function, compiled.packed_metadata, compiled.launch_metadata, tuple(tail)
    except AttributeError:
        return False


def _launch(kernel, grid: tuple, args: tuple, options: dict) -> None:
    """``kernel[grid](*args, **options)``: ``args`` the runtime parameters in order (tensors and ints), ``options``
    the constexprs and launch options (num_warps, num_stages). From the second call with the same specialisation
    on, straight through the compiled kernel's launcher (see ``DIRECT_LAUNCH``). Stand-ins for kernels (tests) and
    the interpreter (``TRITON_INTERPRET=1``) always take ``kernel[grid]``."""
    if not DIRECT_LAUNCH or _JITFunction is None or type(kernel) is not _JITFunction:
        kernel[grid](*args, **options)
        return
    device = _driver.active.get_current_device()
    key = (kernel, grid, device, tuple(options.items()),
           tuple((a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, Tensor) else a for a in args))
    entry = _COMPILED.get(key)
    if entry is None:
        compiled = kernel[grid](*args, **options)
        if len(_COMPILED) >= _COMPILED_SIZE:  # only ever new shapes or layouts get here: start over
            _COMPILED.clear()
        _COMPILED[key] = _direct_entry(kernel, compiled, len(args), options)
        return
    if entry is False:
        kernel[grid](*args, **options)
        return
    run, function, metadata, launch_metadata, tail = entry
    stream = _driver.active.get_current_stream(device)
    values = args + tail
    hooks = _knobs.runtime
    run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, stream, function, metadata,
        launch_metadata(grid, stream, *values), hooks.launch_enter_hook, hooks.launch_exit_hook, *values)


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


def _forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             delta_bias: Optional[Tensor], delta_softplus: bool, out_dtype: torch.dtype, store_ckpt: bool):
    """Launches the forward kernel. Returns the inputs as the kernels read them (what the backward needs; B and C
    grouped), y, h_L, the per-chunk checkpoints (None without ``store_ckpt``: only the backward reads them) and the
    launch entry. B and C come grouped (b, g, n, L) or ungrouped (b, n, L), read as one group."""
    batch, dim, length = u.shape
    if B.dim() == 3:  # a view made here, inside the autograd Function: no view node in the graph
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    groups, dstate = B.shape[1], A.shape[1]
    if dim % groups or C.shape[1] != groups:
        raise ValueError(f'B and C must have the same number of groups, dividing the channels ({dim}); got '
                         f'{groups} and {C.shape[1]}')
    u, delta, B, C = _rows(u), _rows(delta), _blocks(B), _blocks(C)
    A = _fp32(A)
    D = _fp32(D) if D is not None else None
    delta_bias = _fp32(delta_bias) if delta_bias is not None else None
    cpg = dim // groups
    launch = _cached_launch(batch, dim, cpg, length, dstate)
    config, kernel_args, grid, n_chunks, _, n_ckpt = launch
    y = torch.empty((batch, dim, length), dtype=out_dtype, device=u.device)
    last = torch.empty((batch, dim, dstate), dtype=torch.float32, device=u.device)
    ckpt = torch.empty((batch, dim, n_ckpt, dstate), dtype=torch.float32, device=u.device) if store_ckpt else None
    kernel = globals()[config['fwd']]  # a module global at each launch: tests stand in for kernels
    _launch(kernel, grid, (u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A,
                           y, ckpt if store_ckpt else last, last, dim, length, cpg, n_chunks, dstate,
                           u.stride(0), delta.stride(0), B.stride(0), B.stride(1), C.stride(0), C.stride(1)),
            dict(HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
                 STORE_CKPT=store_ckpt, **kernel_args))
    return (u, delta, A, B, C, D, delta_bias), y, last, ckpt, launch


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
        inputs, y, last, ckpt, launch = _forward(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype,
                                                 store_ckpt=True)
        ctx.save_for_backward(*inputs, ckpt)
        ctx.delta_softplus = delta_softplus
        ctx.launch = launch
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_last_state: Optional[Tensor]):
        u, delta, A, B, C, D, delta_bias, ckpt = ctx.saved_tensors
        batch, dim, length = u.shape
        groups, dstate = B.shape[1], A.shape[1]
        cpg = dim // groups
        config, _, grid, _, kernel_args, n_chunks = ctx.launch
        grad_y = _rows(grad_y)
        # torch.empty, not empty_like: u and delta may be views with gaps, the kernels write contiguous rows
        du = torch.empty(u.shape, dtype=u.dtype, device=u.device)
        ddelta = torch.empty(delta.shape, dtype=delta.dtype, device=u.device)
        # dB and dC, then dA, dD and dbias (accumulated atomically: zeroed) in one allocation where they can be:
        # every tensor op costs host time (~10-25 us each on the device machines), as much as a small kernel
        bc, numel, small_size = config['bc'], B.numel(), dim * (dstate + 2)
        if bc == 'atomic':  # fp32 sums, cast to the input dtype at the end
            both = -(-2 * numel // 4) * 4  # 16-byte aligned start for dA
            flat = torch.zeros(both + small_size, dtype=torch.float32, device=u.device)
            dBC, small = flat[:2 * numel].view((2,) + B.shape), flat[both:]
        else:
            small = torch.zeros(small_size, dtype=torch.float32, device=u.device)
            if bc == 'store':  # written once each, in the input dtype
                dBC = torch.empty((2,) + B.shape, dtype=B.dtype, device=u.device)
            else:
                dBC = torch.empty((2, batch, dim // config['BLOCK_D'], dstate, length), dtype=torch.float32,
                                  device=u.device)
        dB, dC = dBC[0], dBC[1]
        dA = small[:dim * dstate].view(dim, dstate)
        dD = small[dim * dstate:dim * (dstate + 1)]
        dbias = small[dim * (dstate + 1):]
        bias = delta_bias if delta_bias is not None else A
        carry = span = A
        if kernel_args.get('SPLIT'):  # chunk-parallel: first each chunk's own adjoint carry and decay
            grid = grid + (n_chunks,)
            carry = torch.empty((batch, dim, n_chunks, dstate), dtype=torch.float32, device=u.device)
            span = torch.empty((batch, dim, n_chunks), dtype=torch.float32, device=u.device)
            _launch(_state_carry_kernel, grid,
                    (delta, A, C, bias, grad_y, carry, span, dim, length, cpg, n_chunks, dstate, delta.stride(0),
                     grad_y.stride(0), C.stride(0), C.stride(1)),
                    dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.delta_softplus, N_STATES=dstate,
                         BLOCK_D=config['BLOCK_D'], BLOCK_T=kernel_args['BLOCK_T'],
                         num_warps=kernel_args['num_warps']))
        pointers = (u, delta, A, B, C, D if D is not None else A, bias, grad_y, ckpt, du, ddelta, dA, dB, dC, dD,
                    dbias) + ((carry, span) if config['kernel'] == 'state' else ())
        _launch(globals()[config['bwd']], grid,
                pointers + (dim, length, cpg, n_chunks, dstate, u.stride(0), delta.stride(0), grad_y.stride(0),
                            B.stride(0), B.stride(1), C.stride(0), C.stride(1)),
                dict(HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.delta_softplus,
                     BC_MODE=BC_MODES[bc], **kernel_args))
        need = ctx.needs_input_grad
        if need[3] or need[4]:
            if bc == 'partial':
                dBC = dBC.view(2, batch, groups, cpg // config['BLOCK_D'], dstate, length).sum(3)
            if B.dtype == C.dtype:
                dBC = dBC.to(B.dtype)  # one cast for both (none where it is the dtype already)
                dB, dC = dBC[0], dBC[1]
            else:
                dB, dC = dBC[0].to(B.dtype), dBC[1].to(C.dtype)
            shape_B, shape_C = ctx.bc_shapes
            dB, dC = dB.view(shape_B), dC.view(shape_C)
        return (du if need[0] else None, ddelta if need[1] else None, dA if need[2] else None,
                dB if need[3] else None, dC if need[4] else None,
                dD if D is not None and need[5] else None,
                dbias if delta_bias is not None and need[6] else None, None, None)


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                          delta_bias: Optional[Tensor], delta_softplus: bool,
                          out_dtype: torch.dtype, differentiable: bool = True) -> Tuple[Tensor, Tensor]:
    """Triton backend on normalised inputs (B, C grouped (b, g, n, L) or (b, n, L)). Returns y and h_L (fp32).

    ``differentiable=False`` (no gradient can flow; the dispatcher decides): the forward kernel is launched
    directly, without the autograd Function (its apply costs more host time than the launch) and without the
    per-chunk checkpoints, which only the backward reads. Eager inference is bound by this host time."""
    if differentiable:
        return TritonSelectiveScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype)
    _, y, last, _, _ = _forward(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype, store_ckpt=False)
    return y, last
