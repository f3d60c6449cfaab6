"""The MambaVision mixer: a selective-scan branch and a gating-free convolutional branch, concatenated."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import selective_scan


class MambaVisionMixer(nn.Module):
    """MambaVision token mixer (paper Sec. 3.2) over sequences of shape (B, L, dim).

    ``in_proj`` splits into x and z halves (dim/2 each). x: depthwise 'same' conv (k3, no bias), SiLU, then
    ``x_proj`` gives dt, B, C and ``dt_proj`` gives delta for a selective scan with ``A = -exp(A_log)`` and
    ``D``. z: its own depthwise conv and SiLU, no gating. ``out_proj(cat([scan(x), z]))``.

    Args:
        dim: model width (expand 1, so the inner width is ``dim`` and each branch ``dim // 2``).
        d_state: SSM state size.
        d_conv: depthwise convolution kernel size.
    """

    def __init__(self, dim: int, d_state: int = 8, d_conv: int = 3, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f'MambaVisionMixer needs an even dim, got {dim}')
        self.dim = dim
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        half = dim // 2
        self.in_proj = nn.Linear(dim, dim, bias=False)
        self.x_proj = nn.Linear(half, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, half, bias=True)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.conv1d_x = nn.Conv1d(half, half, d_conv, groups=half, bias=False, padding='same')
        self.conv1d_z = nn.Conv1d(half, half, d_conv, groups=half, bias=False, padding='same')
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(half, 1))
        self.D = nn.Parameter(torch.ones(half))
        # Mamba's dt initialisation: bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max].
        with torch.no_grad():
            std = self.dt_rank ** -0.5
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(half) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (B, dim, L)
        # Both depthwise convs as one grouped conv over the concatenated halves (same weights, one kernel launch).
        conv_weight = torch.cat([self.conv1d_x.weight, self.conv1d_z.weight], dim=0)
        xz = F.silu(F.conv1d(xz, conv_weight, padding='same', groups=self.dim))
        x, z = xz.split(half, dim=1)
        x_dbl = F.linear(x.transpose(1, 2), self.x_proj.weight)  # (B, L, dt_rank + 2 * d_state)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt_proj keeps its bias and the scan adds it again as delta_bias: the published weights were trained so.
        delta = self.dt_proj(dt).transpose(1, 2)
        A = -torch.exp(self.A_log.float())
        y = selective_scan(
            x, delta.contiguous(), A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
            D=self.D.float(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        y = torch.cat([y, z], dim=1).transpose(1, 2)
        return self.out_proj(y)
