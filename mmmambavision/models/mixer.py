"""The MambaVision mixer: a selective-scan branch and a gating-free convolutional branch, concatenated."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import selective_scan
from .utils import compute_dtype, inference_cached, round_up_on

#: On these devices the mixer pads its sequence with zero tokens up to a multiple of ``TOKEN_ALIGN`` (rows dropped
#: before ``out_proj``; exact: ``in_proj`` has no bias, so a padded token is what the depthwise convolution's own
#: zero padding reads, and the scan is causal). Its projections are batched matmuls over (channels, tokens)
#: operands: a token count that is not a multiple of 8 (196 and 49 in classification) misaligns their rows, and
#: cuBLAS falls back to kernels several times slower.
ALIGN_TOKENS_ON = ('cuda', )
TOKEN_ALIGN = 8


def aligned_length(length: int, device: torch.device) -> int:
    """The sequence length the mixer runs with on ``device`` (``length`` rounded up where it pads)."""
    return round_up_on(length, TOKEN_ALIGN, device, ALIGN_TOKENS_ON)


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

    def _weights(self, dtype: torch.dtype):
        """in_proj, x_proj, dt_proj weights, out_proj's halves (transposed) and both depthwise conv kernels (one
        grouped conv over the concatenated halves), in ``dtype``."""
        def make():
            w_out = self.out_proj.weight.to(dtype)
            return (self.in_proj.weight.to(dtype), self.x_proj.weight.to(dtype), self.dt_proj.weight.to(dtype),
                    w_out[:, :self.dim // 2].t(), w_out[:, self.dim // 2:].t(),
                    torch.cat([self.conv1d_x.weight, self.conv1d_z.weight], dim=0).to(dtype))
        sources = (self.in_proj.weight, self.x_proj.weight, self.dt_proj.weight, self.out_proj.weight,
                   self.conv1d_x.weight, self.conv1d_z.weight)
        return inference_cached(self, 'weights', sources, make, dtype)

    def _scan_params(self):
        """A = -exp(A_log), D and the delta bias, fp32. dt_proj's bias is counted twice: ``dt_proj`` keeps its
        bias and the scan adds it again as ``delta_bias`` - the published weights were trained so; here both go
        to the scan at once (``2·bias``), so the projection is a plain matmul."""
        def make():
            return -torch.exp(self.A_log.float()), self.D.float(), 2 * self.dt_proj.bias.float()
        return inference_cached(self, 'scan', (self.A_log, self.D, self.dt_proj.bias), make)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Channel-major (B, C, L) from the input projection on: the layout of the convolutions and the scan. Every
        # projection is a batched matmul that reads its operand transposed where needed (strided, no copy), and the
        # scan reads x, B and C as views, so the mixer copies nothing (but the zero tokens that align a sequence
        # on CUDA, see ALIGN_TOKENS_ON); out_proj sums its two halves' products instead of concatenating y and z.
        batch, length = hidden_states.shape[:2]
        half = self.dim // 2
        padded = aligned_length(length, hidden_states.device)
        if padded != length:
            hidden_states = F.pad(hidden_states, (0, 0, 0, padded - length))
        w_in, w_x, w_dt, w_out_y, w_out_z, w_conv = self._weights(compute_dtype(hidden_states, self.in_proj.weight))
        xz = torch.bmm(w_in.expand(batch, -1, -1), hidden_states.transpose(1, 2))  # (B, dim, L)
        xz = F.silu(F.conv1d(xz, w_conv, padding='same', groups=self.dim))
        x, z = xz[:, :half], xz[:, half:]
        x_dbl = torch.bmm(w_x.expand(batch, -1, -1), x)  # (B, dt_rank + 2 * d_state, L)
        dt = x_dbl[:, :self.dt_rank]
        B = x_dbl[:, self.dt_rank:self.dt_rank + self.d_state]
        C = x_dbl[:, self.dt_rank + self.d_state:]
        delta = torch.bmm(w_dt.expand(batch, -1, -1), dt)  # (B, dim / 2, L), bias in delta_bias
        A, D, delta_bias = self._scan_params()
        y = selective_scan(x, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=True)
        if padded != length:  # views: rows of ``padded`` elements stay aligned for the matmuls
            y, z = y[..., :length], z[..., :length]
        out = torch.bmm(y.transpose(1, 2), w_out_y.expand(batch, -1, -1))  # (B, L, dim)
        return torch.baddbmm(out, z.transpose(1, 2), w_out_z.expand(batch, -1, -1))
