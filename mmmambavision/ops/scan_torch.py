"""Selective scan in plain PyTorch: a chunked time-major loop with an analytic backward.

Runs on any device. Time is cut into chunks; for one chunk the decays ``exp(Δ·A)`` and inputs ``Δ·u·B`` are
computed in one vectorised shot in time-major layout (T, b, g, d/g, n), so that the sequential part is a single
in-place ``h_t = a_t·h_{t-1} + x_t`` per step on a contiguous slice. The forward keeps only the state at each
chunk start; the backward recomputes a chunk from its checkpoint and runs the adjoint recurrence
``g_t = C_t·dy_t + a_{t+1}·g_{t+1}`` backwards, so memory is bounded by one chunk whatever L is.

On a 2-core CPU this beats log-depth parallel scans (more flops, no parallelism to use) and cumsum-of-log
formulations (which overflow for |A·Δ| sums of a few hundred).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# elements (T·b·d·n) of one chunk's working tensors; ~4 MiB in fp32 keeps them cache-friendly
_CHUNK_ELEMENTS = 1 << 20
_MAX_CHUNK = 512
_MIN_CHUNK = 16


def _chunk_length(batch: int, dim: int, dstate: int, length: int) -> int:
    per_step = max(batch * dim * dstate, 1)
    chunk = max(_MIN_CHUNK, min(_MAX_CHUNK, _CHUNK_ELEMENTS // per_step))
    return max(1, min(chunk, length))


def _time_major(x: Tensor, t0: int, t1: int, compute_dtype: torch.dtype) -> Tensor:
    """(b, ..., L) -> (T, b, ...) contiguous, in the compute dtype."""
    x = x[..., t0:t1]
    return x.permute(x.dim() - 1, *range(x.dim() - 1)).to(compute_dtype).contiguous()


class _Chunk:
    """One chunk's time-major tensors. Shapes: per channel (T, b, g, dg); per state (T, b, g, dg, n)."""

    def __init__(self, u, delta, A, B, C, delta_bias, delta_softplus, t0, t1, groups, compute_dtype):
        steps = t1 - t0
        batch, dim = u.shape[:2]
        shape = (steps, batch, groups, dim // groups)
        self.u = _time_major(u, t0, t1, compute_dtype).view(shape)
        self.delta_in = _time_major(delta, t0, t1, compute_dtype).view(shape)
        if delta_bias is not None:
            self.delta_in = self.delta_in + delta_bias.to(compute_dtype).view(groups, -1)
        self.dt = F.softplus(self.delta_in) if delta_softplus else self.delta_in
        self.B = _time_major(B, t0, t1, compute_dtype).unsqueeze(3)  # (T, b, g, 1, n)
        self.C = _time_major(C, t0, t1, compute_dtype).unsqueeze(3)
        self.A = A.to(compute_dtype).view(groups, dim // groups, -1)
        self.decay = torch.exp(self.dt.unsqueeze(-1) * self.A)  # a_t
        self.dt_u = self.dt * self.u
        self.inputs = self.dt_u.unsqueeze(-1) * self.B  # x_t

    def run_states(self, h0: Tensor) -> Tensor:
        """h_t for every step of the chunk (overwrites and returns ``self.inputs``)."""
        states, decay = self.inputs, self.decay
        states[0].addcmul_(decay[0], h0)
        for t in range(1, states.shape[0]):
            states[t].addcmul_(decay[t], states[t - 1])
        return states


def _check_grouping(dim: int, groups: int) -> None:
    if dim % groups:
        raise ValueError(f'the number of channels ({dim}) must be divisible by the B/C groups ({groups})')


class ChunkedSelectiveScan(torch.autograd.Function):
    """Autograd Function of the torch backend. B and C come grouped, (b, g, n, L)."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                delta_bias: Optional[Tensor], delta_softplus: bool, out_dtype: torch.dtype,
                chunk: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        batch, dim, length = u.shape
        groups, dstate = B.shape[1], A.shape[1]
        _check_grouping(dim, groups)
        compute_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        chunk = chunk or _chunk_length(batch, dim, dstate, length)
        starts = list(range(0, length, chunk))
        checkpoints = u.new_empty((len(starts), batch, groups, dim // groups, dstate), dtype=compute_dtype)
        y = torch.empty((batch, dim, length), dtype=out_dtype, device=u.device)
        h = u.new_zeros((batch, groups, dim // groups, dstate), dtype=compute_dtype)
        for index, t0 in enumerate(starts):
            t1 = min(t0 + chunk, length)
            checkpoints[index] = h
            part = _Chunk(u, delta, A, B, C, delta_bias, delta_softplus, t0, t1, groups, compute_dtype)
            states = part.run_states(h)
            y_part = (states * part.C).sum(-1)  # (T, b, g, dg)
            if D is not None:
                y_part = y_part + part.u * D.to(compute_dtype).view(groups, -1)
            y[:, :, t0:t1] = y_part.reshape(t1 - t0, batch, dim).permute(1, 2, 0)
            h = states[-1].clone()
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, checkpoints)
        ctx.delta_softplus, ctx.chunk = delta_softplus, chunk
        last_state = h.view(batch, dim, dstate)
        ctx.mark_non_differentiable(last_state)
        return y, last_state

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_last_state: Optional[Tensor]):
        # like selective_scan_fn, the returned last state carries no gradient
        u, delta, A, B, C, D, delta_bias, checkpoints = ctx.saved_tensors
        batch, dim, length = u.shape
        groups, dstate = B.shape[1], A.shape[1]
        dg = dim // groups
        compute_dtype = checkpoints.dtype
        chunk = ctx.chunk
        need = ctx.needs_input_grad
        grad_u = torch.empty((batch, dim, length), dtype=compute_dtype, device=u.device)
        grad_delta = torch.empty_like(grad_u)
        grad_B = torch.empty((batch, groups, dstate, length), dtype=compute_dtype, device=u.device)
        grad_C = torch.empty_like(grad_B)
        grad_A = torch.zeros((groups, dg, dstate), dtype=compute_dtype, device=u.device)
        grad_D = torch.zeros((groups, dg), dtype=compute_dtype, device=u.device)
        grad_bias = torch.zeros((groups, dg), dtype=compute_dtype, device=u.device)
        D_c = D.to(compute_dtype).view(groups, dg) if D is not None else None
        carry = None  # a_{t1}·g_{t1} from the chunk after this one
        starts = list(range(0, length, chunk))
        for index in reversed(range(len(starts))):
            t0 = starts[index]
            t1 = min(t0 + chunk, length)
            steps = t1 - t0
            part = _Chunk(u, delta, A, B, C, delta_bias, ctx.delta_softplus, t0, t1, groups, compute_dtype)
            h0 = checkpoints[index]
            states = part.run_states(h0)
            gy = _time_major(grad_y, t0, t1, compute_dtype).view(steps, batch, groups, dg)
            adj = gy.unsqueeze(-1) * part.C  # becomes g_t = dL/dh_t
            decay = part.decay
            if carry is not None:
                adj[-1] += carry
            for t in range(steps - 2, -1, -1):
                adj[t].addcmul_(decay[t + 1], adj[t + 1])
            carry = decay[0] * adj[0]
            # dL/d(Δ·A)_t = g_t · a_t · h_{t-1}
            grad_decay_arg = adj * decay
            grad_decay_arg[1:] *= states[:-1]
            grad_decay_arg[0] *= h0
            grad_A += (grad_decay_arg * part.dt.unsqueeze(-1)).sum((0, 1))
            adj_B = (adj * part.B).sum(-1)  # Σ_n g_t·B_t, (T, b, g, dg)
            grad_dt = (grad_decay_arg * part.A).sum(-1) + part.u * adj_B
            grad_u_part = part.dt * adj_B
            if D_c is not None:
                grad_u_part = grad_u_part + D_c * gy
                grad_D += (gy * part.u).sum((0, 1))
            if ctx.delta_softplus:
                grad_dt = grad_dt * torch.sigmoid(part.delta_in)
            grad_bias += grad_dt.sum((0, 1))
            grad_u[:, :, t0:t1] = grad_u_part.reshape(steps, batch, dim).permute(1, 2, 0)
            grad_delta[:, :, t0:t1] = grad_dt.reshape(steps, batch, dim).permute(1, 2, 0)
            if need[3]:
                grad_B[..., t0:t1] = (adj * part.dt_u.unsqueeze(-1)).sum(3).permute(1, 2, 3, 0)
            if need[4]:
                grad_C[..., t0:t1] = (gy.unsqueeze(-1) * states).sum(3).permute(1, 2, 3, 0)
        return (grad_u.to(u.dtype) if need[0] else None,
                grad_delta.to(delta.dtype) if need[1] else None,
                grad_A.view(dim, dstate).to(A.dtype) if need[2] else None,
                grad_B.to(B.dtype) if need[3] else None,
                grad_C.to(C.dtype) if need[4] else None,
                grad_D.view(dim).to(D.dtype) if D is not None and need[5] else None,
                grad_bias.view(dim).to(delta_bias.dtype) if delta_bias is not None and need[6] else None,
                None, None, None)


def selective_scan_torch(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                         delta_bias: Optional[Tensor], delta_softplus: bool, out_dtype: torch.dtype,
                         chunk: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Torch backend on normalised inputs (B, C grouped (b, g, n, L)). Returns y and h_L (fp32)."""
    return ChunkedSelectiveScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype, chunk)
