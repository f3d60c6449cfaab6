"""Float64 sequential selective scan: the ground truth every backend is tested against.

Written from the recurrence, one time step at a time, so that it is obviously right rather than fast.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def expand_bc(bc: Tensor, batch: int, dim: int, length: int) -> Tensor:
    """Bring B or C to the grouped layout (b, g, n, L).

    Args:
        bc: (b, n, L) input-dependent, (b, g, n, L) grouped, or (d, n) time-invariant (returned as a
            broadcast view with one group per channel, g = d).
        batch, dim, length: b, d and L of ``u``.
    """
    if bc.dim() == 3:
        return bc.unsqueeze(1)
    if bc.dim() == 4:
        return bc
    if bc.dim() == 2:
        return bc[None, :, :, None].expand(batch, dim, bc.shape[1], length)
    raise ValueError(f'B and C must be (b, n, L), (b, g, n, L) or (d, n); got shape {tuple(bc.shape)}')


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                             D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                             delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                             return_last_state: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Selective scan computed step by step in float64 (differentiable through autograd).

    ``Δ = softplus(delta + delta_bias)``, ``h_t = exp(Δ_t·A)·h_{t-1} + Δ_t·u_t·B_t``,
    ``y_t = C_t·h_t + D·u_t``, ``y *= silu(z)``.

    Args:
        u, delta: (b, d, L).
        A: (d, n), real.
        B, C: (b, n, L), (b, g, n, L) with d divisible by g, or (d, n).
        D, delta_bias: (d,) or None.
        z: (b, d, L) or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return h_L, (b, d, n).

    Returns:
        y (b, d, L) in float64, and h_L (b, d, n) float64 when ``return_last_state``.
    """
    f64 = torch.float64
    batch, dim, length = u.shape
    groups_B = expand_bc(B, batch, dim, length).to(f64)
    groups_C = expand_bc(C, batch, dim, length).to(f64)
    # channel c reads group c // (d / g)
    B_ch = groups_B.repeat_interleave(dim // groups_B.shape[1], dim=1)  # (b, d, n, L)
    C_ch = groups_C.repeat_interleave(dim // groups_C.shape[1], dim=1)
    u64, A64 = u.to(f64), A.to(f64)
    dt = delta.to(f64)
    if delta_bias is not None:
        dt = dt + delta_bias.to(f64)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    h = u64.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, :, t, None] * A64)
        h = decay * h + (dt[:, :, t] * u64[:, :, t])[:, :, None] * B_ch[:, :, :, t]
        ys.append((h * C_ch[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(f64)[:, None] * u64
    if z is not None:
        y = y * F.silu(z.to(f64))
    return (y, h) if return_last_state else y
