"""The selective scan's Triton kernels: forward, backward, and the chunk-parallel backward's first pass.

A program owns (BLOCK_D, BLOCK_T) tiles: BLOCK_D channels (rows of the (b, d, L) operands) × a chunk of BLOCK_T
steps, walks the sequence chunk by chunk, and inside a chunk loops over the d_state states. Each state's
recurrence ``h_t = a_t·h_{t-1} + x_t`` (``a_t = exp(Δ_t·A)``, ``x_t = Δ_t·B_t·u_t``) is one
``tl.associative_scan`` over time of a 2-D tile, so the sums over the states (y, and the gradients of Δ and u)
accumulate in registers instead of being reduced across threads. The states and adjoints carried from one chunk
to the next, one column per state, live in a (BLOCK_D, BLOCK_N) tile.
All math is fp32; the inputs are fp16, bf16 or fp32.

* ``state_fwd_kernel`` computes y and h_L; for the backward it also stores the state at the start of every
  backward chunk (``STORE_CKPT``, every ``CKPT_T`` steps), so the backward recomputes states from a checkpoint
  instead of reading stored ones.
* ``state_bwd_kernel`` runs the adjoint ``g_t = C_t·dy_t + a_{t+1}·g_{t+1}`` as a reverse scan per state, and
  recomputes each chunk's states from its checkpoint. Without ``SPLIT`` one program per channel block walks the
  chunks in reverse order, the adjoint carried from each chunk into the one before. With ``SPLIT`` every chunk
  has its own program, which takes the adjoint flowing in from the later chunks from ``state_carry_kernel``'s
  per-chunk terms (``_chunk_carry``).
* ``state_carry_kernel`` (the first pass of the chunk-parallel backward) computes, per chunk, the adjoint the
  chunk alone feeds into its first step and the sum of Δ over it (the exponent of its decay), as exponentials of
  sums of Δ: no scans.

dB and dC (shared by the channels of a group) are summed over a program's channels in registers and then, by
``BC_MODE``: stored in the input dtype when one program holds a whole group (0), added atomically into one fp32
buffer (1), or written to a buffer per channel block that torch sums afterwards (2). dA, dD and ddelta_bias are
added atomically into fp32 buffers.

Every kernel takes its runtime arguments (pointers, sizes, strides) first and its constexprs last: the direct
launch (``launch.py``) appends the constexprs' values after the runtime arguments.
"""
import triton
import triton.language as tl


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
    group strides are the inputs' own (views are read in place, see ``function.py``)."""
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


# --- the kernels ----------------------------------------------------------------------------------------------------
# The loop over the states runs ``UNROLL`` of them per iteration (``tl.range``'s loop_unroll_factor): 1 keeps one
# state's code in the loop body, a loop at run time; d_state unrolls it completely. The scans are fastest when each
# thread holds consecutive steps of a tile (it walks them sequentially before any cross-thread step), which
# ``_tile_layout_hint`` arranges for rows that start unaligned.


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
def state_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, ckpt_ptr, last_ptr,
                     dim, length, channels_per_group, n_chunks, dstate,
                     stride_u, stride_delta, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     STORE_CKPT: tl.constexpr, N_STATES: tl.constexpr, UNROLL: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
                     CKPT_T: tl.constexpr):
    """The forward. With ``STORE_CKPT``, the state before every ``CKPT_T``-th step (a power of 2
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
def state_carry_kernel(delta_ptr, A_ptr, C_ptr, bias_ptr, dy_ptr, carry_ptr, span_ptr,
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
def state_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, ckpt_ptr,
                     du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, carry_ptr, span_ptr,
                     dim, length, channels_per_group, n_chunks, dstate,
                     stride_u, stride_delta, stride_dy, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     BC_MODE: tl.constexpr, N_STATES: tl.constexpr, UNROLL: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
                     SPLIT: tl.constexpr, NC: tl.constexpr):
    """The backward: the chunks of BLOCK_T steps in reverse order, one program per channel
    block, or with ``SPLIT`` one program per chunk and channel block, the adjoint carried in from later chunks
    taken from ``state_carry_kernel``'s terms (``_chunk_carry``)."""
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

