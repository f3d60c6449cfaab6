"""Selective scan in chunked matrix form: plain tensor ops, no loop over time steps (the export form).

Time is cut into chunks of T steps (the last one zero-padded). Within a chunk every state is a weighted sum of the
chunk's inputs and of the state carried in, with the decay between two steps written as one exponential:

    h_t = exp(A·Σ_{k≤t} Δ_k)·h_in + Σ_{s≤t} exp(A·Σ_{s<k≤t} Δ_k)·Δ_s·u_s·B_s          (t, s in the chunk)
    y_t = C_t·h_t + D·u_t

The segment sums ``Σ_{s<k≤t} Δ_k`` are computed directly, as a cumulative sum over t of Δ masked to s < k
(a masked segment-sum), not as a difference ``cum_t - cum_s`` of running sums: no cancellation, each exponent is
accurate to a few ulps of its own magnitude, and with ``Δ·A ≤ 0`` (Mamba's ``A < 0``, ``Δ = softplus(...) ≥ 0``)
no exponent is positive, so nothing overflows. The products of the sequential recurrence become exactly these
exponentials of sums, so the chunked form computes the same function as
:func:`~mmmambavision.ops.selective_scan_reference`, to fp32 rounding. The masked entries (s > t) get the exponent
``-inf``, i.e. a weight of exactly 0.

The chunks are visited in order carrying the state (b, d, n) from one to the next; in eager mode that is a Python
loop over L / T chunks, and during ONNX export, with ``loop='scan'``, one ``torch`` scan operator (an ONNX ``Scan``
node whose body is one chunk), so the exported graph has the same size whatever L. A sequence of one chunk needs
no loop at all. Per chunk the work is
O(b·d·n·T²), T times the sequential recurrence's, all of it in batched elementwise ops and one matmul.

Padding a sequence to whole chunks appends steps with Δ = 0, u = 0, B = C = 0: their decay is exactly 1 and their
input 0, so the carried state, the last state returned and the outputs (cut back to L) are unchanged.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan_reference import expand_bc

DEFAULT_CHUNK = 64
LOOPS = ('python', 'scan')


def segment_sum(x: Tensor) -> Tensor:
    """``out[..., t, s] = Σ_{s<k≤t} x[..., k]`` for s ≤ t (0 on the diagonal), 0 above it; x is (..., T).

    Computed as a cumulative sum over t of x masked to k > s, so each entry is a sum of its own terms only.
    """
    steps = x.shape[-1]
    strict = torch.ones(steps, steps, dtype=torch.bool, device=x.device).tril(-1)  # k > s
    terms = x.unsqueeze(-1).expand(*x.shape, steps).masked_fill(~strict, 0)  # [k, s] = x_k where k > s
    return terms.cumsum(-2)


def _chunk_step(h: Tensor, dt: Tensor, x: Tensor, B: Tensor, C: Tensor, A: Tensor,
                causal: Tensor) -> Tuple[Tensor, Tensor]:
    """One chunk: states from the carried state ``h`` and the chunk's inputs; returns (h at the chunk's end, y).

    Shapes: h (b, g, dg, n); dt, x = Δ·u (b, g, dg, T); B, C (b, g, n, T); A (g, dg, n); causal (T, T) bool,
    True where s ≤ t. Returns h' (b, g, dg, n) and y (b, g, dg, T) (without the D term). Broadcasting only
    against dims made here by ``unsqueeze``: inside torch's scan under torch.export the inputs' size-1 dims are
    symbolic, and do not broadcast.
    """
    B, C = B.unsqueeze(2), C.unsqueeze(2)  # (b, g, 1, n, T)
    exponent = A[..., None, None] * segment_sum(dt).unsqueeze(-3)  # (b, g, dg, n, T, T): A·Σ_{s<k≤t} Δ_k
    weights = torch.exp(exponent.masked_fill(~causal, float('-inf')))
    inputs = B * x.unsqueeze(-2)  # (b, g, dg, n, T): Δ_s·u_s·B_s
    states = torch.matmul(weights, inputs.unsqueeze(-1)).squeeze(-1)  # (b, g, dg, n, T)
    carry = torch.exp(A[..., None] * dt.cumsum(-1).unsqueeze(-2))  # (b, g, dg, n, T): A·Σ_{k≤t} Δ_k
    states = states + carry * h.unsqueeze(-1)
    y = (states * C).sum(-2)
    return states[..., -1], y


def _scan_body(h: Tensor, dt: Tensor, x: Tensor, B: Tensor, C: Tensor, A: Tensor, causal: Tensor):
    h_next, y = _chunk_step(h, dt, x, B, C, A, causal)
    return h_next.clone(), y  # the carry must not be a view (scan's no-aliasing rule)


def _scan_chunks(h0: Tensor, xs: Tuple[Tensor, ...], A: Tensor, causal: Tensor) -> Tuple[Tensor, Tensor]:
    """The chunks through torch's scan operator: one ``scan`` node in a traced graph (an ONNX ``Scan``).

    The operator itself, not ``torch._higher_order_ops.scan.scan``: that wrapper compiles the body with
    torch.compile (dynamo, symbolic shapes: seconds per call), where calling the operator under torch.export
    traces the body directly. Loop-invariant tensors go in as additional inputs, not as closures.
    """
    from torch._higher_order_ops.scan import scan_op
    last, ys = scan_op(_scan_body, [h0], list(xs), (A, causal))
    return last, ys


def selective_scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                           z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                           delta_softplus: bool = False, return_last_state: bool = False,
                           chunk: int = DEFAULT_CHUNK, loop: str = 'python') -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Selective scan (mamba-ssm ``selective_scan_fn`` semantics) in chunked matrix form, differentiable by autograd.

    ``Δ = softplus(delta + delta_bias)`` (softplus only with ``delta_softplus``),
    ``h_t = exp(Δ_t·A)·h_{t-1} + Δ_t·u_t·B_t``, ``y_t = C_t·h_t + D·u_t``, then ``y *= silu(z)``. Math in fp32
    (fp64 for fp64 inputs); y in u's dtype.

    Args:
        u, delta: (batch, dim, length).
        A: (dim, d_state), real (the exponents are never positive when ``Δ·A ≤ 0``).
        B, C: (batch, d_state, length), (batch, groups, d_state, length) or time-invariant (dim, d_state).
        D, delta_bias: (dim,), optional.
        z: (batch, dim, length) gate, optional.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return h_L, (batch, dim, d_state) in the compute dtype.
        chunk: steps per chunk, T (work per chunk grows as T², the number of chunks as L / T).
        loop: how the chunks are visited: ``'python'`` (a loop over chunks) or ``'scan'`` (torch's scan
            operator: one node in a torch.export graph, an ONNX ``Scan`` node in the exported file).

    Returns:
        y (batch, dim, length), or ``(y, last_state)``.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f'chunk must be a positive int, got {chunk!r}')
    if loop not in LOOPS:
        raise ValueError(f'loop must be one of {LOOPS}, got {loop!r}')
    batch, dim, length = u.shape
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    B = expand_bc(B, batch, dim, length)
    C = expand_bc(C, batch, dim, length)
    groups, dstate = B.shape[1], A.shape[1]
    if dim % groups or C.shape[1] != groups:
        raise ValueError(f'the number of channels ({dim}) must be divisible by the B/C groups ({groups}, '
                         f'{C.shape[1]}), the same for B and C')
    dg = dim // groups
    steps = min(chunk, length)
    chunks = -(-length // steps)
    pad = chunks * steps - length

    u_c = u.to(compute)
    dt = delta.to(compute)
    if delta_bias is not None:
        dt = dt + delta_bias.to(compute)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    x = dt * u_c

    def chunked(t: Tensor, lead: Tuple[int, ...]) -> Tensor:
        """(..., L) -> (chunks, ..., T) with the padding appended."""
        t = F.pad(t, (0, pad)) if pad else t
        t = t.reshape(*lead, chunks, steps)
        rank = t.dim()  # explicit non-negative permutation (the TorchScript exporter mishandles negative dims)
        return t.permute(rank - 2, *range(rank - 2), rank - 1)

    dt_k = chunked(dt.view(batch, groups, dg, length), (batch, groups, dg))
    x_k = chunked(x.view(batch, groups, dg, length), (batch, groups, dg))
    B_k = chunked(B.to(compute), (batch, groups, dstate))  # (chunks, b, g, n, T)
    C_k = chunked(C.to(compute), (batch, groups, dstate))
    A_g = A.to(compute).view(groups, dg, dstate)
    causal = torch.ones(steps, steps, dtype=torch.bool, device=u.device).tril()
    h0 = torch.zeros(batch, groups, dg, dstate, dtype=compute, device=u.device)

    if chunks == 1:  # nothing to carry: no loop in the graph either
        last, y_chunk = _chunk_step(h0, dt_k[0], x_k[0], B_k[0], C_k[0], A_g, causal)
        ys = y_chunk.unsqueeze(0)
    elif loop == 'scan':
        last, ys = _scan_chunks(h0, (dt_k, x_k, B_k, C_k), A_g, causal)
    else:
        h, outs = h0, []
        for index in range(chunks):
            h, y_chunk = _chunk_step(h, dt_k[index], x_k[index], B_k[index], C_k[index], A_g, causal)
            outs.append(y_chunk)
        last, ys = h, torch.stack(outs)
    y = ys.permute(1, 2, 3, 0, 4).reshape(batch, dim, chunks * steps)  # (chunks, b, g, dg, T) -> (b, d, L)
    if pad:
        y = y[..., :length]
    if D is not None:
        y = y + D.to(compute)[:, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(compute))
    y = y.to(u.dtype)
    return (y, last.reshape(batch, dim, dstate)) if return_last_state else y
