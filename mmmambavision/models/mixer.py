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

    def _weights(self, dtype: torch.dtype, fold_delta: bool):
        """in_proj's weight, the delta/B/C projection (see :meth:`forward`), dt_proj's weight, out_proj's halves
        (transposed) and both depthwise conv kernels (one grouped conv over the concatenated halves), in ``dtype``.

        The projection is x_proj's weight, or with ``fold_delta`` one (dim/2 + 2·d_state, dim/2) matrix:
        ``dt_proj.weight @ x_proj.weight[:dt_rank]`` (multiplied in fp32, or float64 for float64 weights) above
        x_proj's B and C rows, so that a single matmul gives delta, B and C; dt_proj's weight is then None."""
        def make():
            w_x = self.x_proj.weight
            if fold_delta:
                exact = torch.promote_types(w_x.dtype, torch.float32)
                w_delta = self.dt_proj.weight.to(exact) @ w_x[:self.dt_rank].to(exact)
                w_x = torch.cat([w_delta, w_x[self.dt_rank:].to(exact)])
            w_dt = None if fold_delta else self.dt_proj.weight.to(dtype)
            w_out = self.out_proj.weight.to(dtype)
            return (self.in_proj.weight.to(dtype), w_x.to(dtype), w_dt,
                    w_out[:, :self.dim // 2].t(), w_out[:, self.dim // 2:].t(),
                    torch.cat([self.conv1d_x.weight, self.conv1d_z.weight], dim=0).to(dtype))
        return inference_cached(self, 'weights', self._weight_sources(), make, dtype, fold_delta)

    def _batched_weights(self, dtype: torch.dtype, fold_delta: bool, batch: int):
        """:meth:`_weights`' matrices expanded (views) over ``batch`` for the batched matmuls, and the conv
        kernels; cached for inference apart from ``_weights`` (a new batch size only expands again)."""
        def make():
            *matrices, w_conv = self._weights(dtype, fold_delta)
            return tuple(None if w is None else w.expand(batch, -1, -1) for w in matrices) + (w_conv, )
        return inference_cached(self, 'batched', self._weight_sources(), make, dtype, fold_delta, batch)

    def _weight_sources(self):
        return (self.in_proj.weight, self.x_proj.weight, self.dt_proj.weight, self.out_proj.weight,
                self.conv1d_x.weight, self.conv1d_z.weight)

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
        # Without autograd one matmul gives delta, B and C (dt_proj folded into x_proj, see _weights): a launch
        # fewer per mixer where inference is bound by host time; training keeps the two projections.
        fold = not torch.is_grad_enabled()
        w_in, w_x, w_dt, w_out_y, w_out_z, w_conv = self._batched_weights(
            compute_dtype(hidden_states, self.in_proj.weight), fold, batch)
        xz = torch.bmm(w_in, hidden_states.transpose(1, 2))  # (B, dim, L)
        xz = F.silu(F.conv1d(xz, w_conv, padding='same', groups=self.dim))
        x, z = xz[:, :half], xz[:, half:]
        x_dbl = torch.bmm(w_x, x)  # (B, dt_rank or dim / 2, then 2 * d_state, L)
        rows = half if fold else self.dt_rank
        B = x_dbl[:, rows:rows + self.d_state]
        C = x_dbl[:, rows + self.d_state:]
        # (B, dim / 2, L), bias in delta_bias
        delta = x_dbl[:, :half] if fold else torch.bmm(w_dt, x_dbl[:, :self.dt_rank])
        A, D, delta_bias = self._scan_params()
        y = selective_scan(x, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=True)
        if padded != length:  # views: rows of ``padded`` elements stay aligned for the matmuls
            y, z = y[..., :length], z[..., :length]
        out = torch.bmm(y.transpose(1, 2), w_out_y)  # (B, L, dim)
        return torch.baddbmm(out, z.transpose(1, 2), w_out_z)
