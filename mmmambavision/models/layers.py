"""Building blocks of MambaVision: stem, convolutional blocks, windowing, attention and the hybrid block.

Module and parameter names follow the published checkpoints so that their weights load without conversion.
"""
import contextlib
import math
from typing import Iterator, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.residual_norm import residual_norm, residual_norm_available
from .mixer import MambaVisionMixer
from .utils import inference_cached, round_up_on


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (the residual branch is dropped for a whole sample)."""
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0], ) + (1, ) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep_prob)
    return x * mask.div_(keep_prob)


class DropPath(nn.Module):

    def __init__(self, drop_prob: float = 0.):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'


class PatchEmbed(nn.Module):
    """Stem: two stride-2 3x3 convolutions (no bias), each followed by BatchNorm (eps 1e-4) and ReLU."""

    def __init__(self, in_channels: int, in_dim: int, dim: int):
        super().__init__()
        self.conv_down = nn.Sequential(
            Conv2d(in_channels, in_dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(in_dim, eps=1e-4),
            nn.ReLU(),
            Conv2d(in_dim, dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(dim, eps=1e-4),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_down(x)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution doubling the width (no bias, no norm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Sequential(Conv2d(dim, 2 * dim, 3, 2, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(x)


class ConvBlock(nn.Module):
    """Residual block ``x + BN(Conv(GELU_tanh(BN(Conv(x)))))`` of stages 1-2."""

    def __init__(self, dim: int, drop_path: float = 0., layer_scale: Optional[float] = None):
        super().__init__()
        self.conv1 = Conv2d(dim, dim, 3, 1, 1)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5)
        self.act1 = nn.GELU(approximate='tanh')  # the published weights were trained with the tanh GELU
        self.conv2 = Conv2d(dim, dim, 3, 1, 1)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5)
        if layer_scale is not None:
            self.gamma = nn.Parameter(layer_scale * torch.ones(dim))
        else:
            self.gamma = None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self._conv_norm(self.conv2, self.norm2, self.act1(self._conv_norm(self.conv1, self.norm1, x)))
        if self.gamma is not None:
            x = x * self.gamma.view(1, -1, 1, 1)
        return shortcut + self.drop_path(x)

    @staticmethod
    def _conv_norm(conv: 'Conv2d', norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``norm(conv(x))``. In inference with an eval-mode BatchNorm the convolution's bias goes into the norm's
        mean instead (``BN(y + b)`` normalises with ``running_mean - b``): the same values without the separate
        pass that adds a convolution's bias to its output. (A BatchNorm folded into the convolution, e.g. by
        ``mmcv.cnn.fuse_conv_bn``, leaves an ``Identity`` here: then the plain path.)"""
        if (torch.is_grad_enabled() or conv.bias is None or not isinstance(norm, nn.BatchNorm2d) or norm.training
                or norm.running_mean is None or conv.padding_mode != 'zeros'):
            return norm(conv(x))
        mean = inference_cached(norm, 'mean_minus_bias', (norm.running_mean, conv.bias),
                                lambda: norm.running_mean - conv.bias.detach().to(norm.running_mean.dtype))
        return F.batch_norm(conv.unbiased(x), mean, norm.running_var, norm.weight, norm.bias, False, 0., norm.eps)


def _no_autocast():
    """A context in which autocast does not intercept ops (every device type); cheap, unlike a full
    ``torch.autocast(enabled=False)`` (it only excludes the autocast dispatch keys)."""
    guard = getattr(torch._C, '_DisableAutocast', None)
    if guard is not None:
        return guard()
    return torch.autocast('cuda', enabled=False)  # pragma: no cover - older torch


def half_inference_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """fp16/bf16 when the current call runs without autograd under half-precision autocast (and not inside
    ``torch.compile``) - the case the cached-weight inference paths below serve - else None."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return None
    dtype = torch.get_autocast_dtype(device_type)
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


def _half_params(module: nn.Module, dtype: torch.dtype, transpose: bool = False):
    """``module``'s weight (transposed if asked) and bias (or None) in ``dtype``, cached for inference."""
    def make():
        weight = module.weight.detach().to(dtype)
        bias = None if module.bias is None else module.bias.detach().to(dtype)
        return (weight.t() if transpose else weight), bias
    sources = (module.weight, ) if module.bias is None else (module.weight, module.bias)
    return inference_cached(module, 'half', sources, make, dtype)


#: Devices on which half-precision inference runs each residual addition of the hybrid blocks together with the
#: LayerNorm after it, as one kernel (:func:`mmmambavision.ops.residual_norm`; where Triton imports).
FUSE_RESIDUAL_NORM_ON = ('cuda', )


def fused_residual_norm_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The half dtype of the current inference call when its residual additions and LayerNorms run fused on
    ``x``'s device, else None."""
    dtype = half_inference_dtype(x)
    if (dtype is None or x.device.type not in FUSE_RESIDUAL_NORM_ON or torch.jit.is_tracing()
            or not residual_norm_available(x)):
        return None  # (a trace, e.g. for ONNX, records torch's ops, not a Triton launch)
    return dtype


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that, in inference under fp16/bf16 autocast, stays in the activations' dtype.

    Autocast runs LayerNorm in fp32 and writes an fp32 output that the next matmul casts back to fp16: two extra
    passes over the activations. Without autograd (``torch.no_grad`` / ``inference_mode``) and with a half-precision
    input under autocast, this normalises in the input's dtype instead (the kernel's statistics are fp32 either
    way; the affine parameters are cast once and cached; autocast, whose CUDA policy would cast all three back to
    fp32, is kept out of the call). Training keeps autocast's fp32 LayerNorm: its parameter
    gradients sum over every token and need fp32 range. Parameters and state dict are ``nn.LayerNorm``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16) and half_inference_dtype(x) and self.weight is not None:
            weight, bias = _half_params(self, x.dtype)
            # Autocast has its own (fp32) kernel for native_layer_norm on CUDA: step past it.
            with _no_autocast():
                return torch.native_layer_norm(x, self.normalized_shape, weight, bias, self.eps)[0]
        return super().forward(x)


class Linear(nn.Linear):
    """``nn.Linear`` that, in half-precision inference (no autograd, fp16/bf16 autocast), multiplies by a cached
    half copy of its weight in one ``addmm`` with the bias, outside autocast: the same kernel and values as under
    autocast, without autocast's cast of weight and bias at every call (two kernels and their launches per layer
    and forward). Training and fp32 inference are ``nn.Linear``'s; parameters and state dict too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = half_inference_dtype(x)
        if dtype is None or x.dim() < 2:
            return super().forward(x)
        weight_t, bias = _half_params(self, dtype, transpose=True)
        with _no_autocast():
            flat = x.to(dtype).reshape(-1, self.in_features)
            out = torch.mm(flat, weight_t) if bias is None else torch.addmm(bias, flat, weight_t)
        return out.view(*x.shape[:-1], self.out_features)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with the inference path of :class:`Linear`: cached half weight and bias, no per-call casts.
    The cached copy keeps the weight's memory format (channels_last after ``model.to(memory_format=...)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != 'zeros':
            return super().forward(x)
        return self._convolve(x, with_bias=True)

    def unbiased(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution without its bias (zeros padding mode), on the same paths as :meth:`forward`."""
        return self._convolve(x, with_bias=False)

    def _convolve(self, x: torch.Tensor, with_bias: bool) -> torch.Tensor:
        dtype = half_inference_dtype(x)
        if dtype is None:
            bias = self.bias if with_bias else None
            return F.conv2d(x, self.weight, bias, self.stride, self.padding, self.dilation, self.groups)
        weight, bias = _half_params(self, dtype)
        with _no_autocast():
            return F.conv2d(x.to(dtype), weight, bias if with_bias else None, self.stride, self.padding,
                            self.dilation, self.groups)


class Mlp(nn.Module):

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# Bound on the elements of one chunk of explicit attention scores (sequences x heads x queries x keys) when the
# weights are recorded: a detection window of 112 x 112 tokens would otherwise need a 12544 x 12544 matrix per head.
_RECORD_CHUNK_ELEMENTS = 1 << 24

#: On these devices the cropped block's attention pads its query count up to a multiple of ``QUERY_BUCKET``
#: (zero queries, their output rows dropped: exact, every query attends on its own). cuDNN's attention builds an
#: execution plan per query count, a new image size under multi-scale training brings a new count, and a plan costs
#: a noticeable pause; rounded up, a training run meets at most ``ceil(window**2 / QUERY_BUCKET)`` counts per stage.
PAD_QUERIES_ON = ('cuda', )
QUERY_BUCKET = 512


def padded_query_count(tokens: int, device: torch.device) -> int:
    """The query count the cropped attention runs with on ``device`` (``tokens`` rounded up where it pads)."""
    return round_up_on(tokens, QUERY_BUCKET, device, PAD_QUERIES_ON)


class Attention(nn.Module):
    """Multi-head self-attention over a window's tokens (qkv with bias, scaled dot product).

    The weights can be read: with ``record_weights = True`` (or inside :func:`record_attention`) the forward
    computes them explicitly, ``softmax(q @ k.T / sqrt(head_dim))`` per head, multiplies them into ``v`` (in query
    chunks of bounded memory) and keeps them, detached and in float32 (float64 for a float64 input), in
    ``attn_weights``: (sequences, heads, queries, keys), every query or only the query tokens listed in
    ``record_queries`` (in that order). The output equals the default path's to float rounding; parameters and
    state dict are the same. With the default ``record_weights = False`` the forward is
    ``F.scaled_dot_product_attention`` and keeps nothing.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, dim * 3, bias=True)
        self.proj = Linear(dim, dim)
        self.record_weights = False
        self.record_queries: Optional[Sequence[int]] = None
        self.attn_weights: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor, queries: Optional['WindowCrop'] = None) -> torch.Tensor:
        """``x``: (sequences, tokens, dim). ``queries``: only the tokens of this window rectangle ask (the keys and
        values are every token's): the output is (sequences, queries.tokens, dim), the full output's rows of those
        tokens."""
        batch, length, dim = x.shape
        if queries is not None and not self.record_weights:
            tokens = queries.tokens
            asked = min(padded_query_count(tokens, x.device), length)
            q = self._project(queries.select(x), 0, dim)
            if asked > tokens:
                q = F.pad(q, (0, 0, 0, asked - tokens))
            q = q.view(batch, asked, self.num_heads, self.head_dim).transpose(1, 2)
            kv = self._project(x, dim, 3 * dim).view(batch, length, 2, self.num_heads, self.head_dim)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
            x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
            if asked > tokens:
                x = x[:, :tokens]
            return self.proj(x.reshape(batch, tokens, dim))
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.record_weights:
            x = self._attend_and_record(q, k, v)
        else:
            x = F.scaled_dot_product_attention(q, k, v)
        x = self.proj(x.transpose(1, 2).reshape(batch, length, dim))
        return x if queries is None else queries.select(x)

    def _project(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Output features ``start:stop`` of ``qkv(x)`` (its q part or its k, v part)."""
        dtype = half_inference_dtype(x)
        if dtype is None:
            return F.linear(x, self.qkv.weight[start:stop], self.qkv.bias[start:stop])
        weight_t, bias = _half_params(self.qkv, dtype, transpose=True)
        with _no_autocast():
            flat = x.to(dtype).reshape(-1, x.shape[-1])
            out = torch.addmm(bias[start:stop], flat, weight_t[:, start:stop])
        return out.view(*x.shape[:-1], stop - start)

    def _attend_and_record(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Explicit softmax attention, chunked over the queries; keeps the weights in ``attn_weights``."""
        seqs, heads, length, _ = q.shape
        dtype = torch.promote_types(q.dtype, torch.float32)  # half-precision scores: softmax in float32
        rows = None
        if self.record_queries is not None:
            rows = torch.as_tensor(self.record_queries, dtype=torch.long, device=q.device).reshape(-1)
            if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= length):
                raise ValueError(f'record_queries must be token indices in 0..{length - 1} (the sequences have '
                                 f'{length} tokens), got {self.record_queries!r}')
            kept = q.new_empty(seqs, heads, rows.numel(), length, dtype=dtype)
        else:
            kept = q.new_empty(seqs, heads, length, length, dtype=dtype)
        chunk = max(1, _RECORD_CHUNK_ELEMENTS // (seqs * heads * length))
        k_t = k.transpose(-2, -1).to(dtype)
        outs = []
        for start in range(0, length, chunk):
            stop = min(start + chunk, length)
            scores = (q[:, :, start:stop].to(dtype) @ k_t) * self.head_dim ** -0.5
            attn = torch.softmax(scores, dim=-1)
            outs.append(attn.to(v.dtype) @ v)
            if rows is None:
                kept[:, :, start:stop] = attn.detach()
            else:
                inside = (rows >= start) & (rows < stop)
                if bool(inside.any()):
                    kept[:, :, inside] = attn.detach()[:, :, rows[inside] - start]
        self.attn_weights = kept
        return torch.cat(outs, dim=2)


@contextlib.contextmanager
def record_attention(module: nn.Module, queries: Optional[Sequence[int]] = None) -> Iterator[List[Attention]]:
    """Record the weights of every :class:`Attention` in ``module`` (itself included) while inside the block.

    Sets ``record_weights = True`` and ``record_queries = queries`` (None: every query token) on each, clears their
    ``attn_weights``, yields the modules in ``module.modules()`` order and restores their previous settings on exit;
    the weights of the last forward stay in ``attn_weights`` for the caller to read.
    """
    modules = [m for m in module.modules() if isinstance(m, Attention)]
    saved = [(m.record_weights, m.record_queries) for m in modules]
    try:
        for m in modules:
            m.record_weights, m.record_queries, m.attn_weights = True, queries, None
        yield modules
    finally:
        for m, (record, rows) in zip(modules, saved):
            m.record_weights, m.record_queries = record, rows


class HybridBlock(nn.Module):
    """Pre-norm block of stages 3-4: ``x + g1 * Mixer(LN(x))``, ``x + g2 * MLP(LN(x))``.

    The mixer is the MambaVision mixer or window self-attention (``use_attention``).
    """

    def __init__(self, dim: int, num_heads: int, use_attention: bool, mlp_ratio: float = 4.,
                 drop_path: float = 0., layer_scale: Optional[float] = None):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.mixer = Attention(dim, num_heads) if use_attention else MambaVisionMixer(dim)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        if layer_scale is not None:
            self.gamma_1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma_2 = nn.Parameter(layer_scale * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, crop: Optional['WindowCrop'] = None) -> torch.Tensor:
        """``x``: (sequences, tokens, dim). ``crop``: return only the tokens of this window rectangle, (sequences,
        crop.tokens, dim); attention then computes only their queries and the MLP only their rows."""
        if crop is None:
            y = self.mixer(self.norm1(x))
        elif isinstance(self.mixer, Attention):
            y = self.mixer(self.norm1(x), queries=crop)
        else:  # the scan needs every token
            y = crop.select(self.mixer(self.norm1(x)))
        if crop is not None:
            x = crop.select(x)
        x = self._residual(x, y, self.gamma_1)
        return self._residual(x, self.mlp(self.norm2(x)), self.gamma_2)

    def forward_fused(self, x: torch.Tensor, h: torch.Tensor, next_norm: Optional[nn.LayerNorm],
                      dtype: torch.dtype):
        """Inference with the residual additions fused with the LayerNorms after them: ``h`` is ``norm1(x)``
        already; returns the block's output and ``next_norm`` of it (None without ``next_norm``)."""
        y = self.mixer(h)
        x, h = residual_norm(x, y, self.gamma_1, self.norm2.weight, self.norm2.bias, self.norm2.eps, dtype)
        y = self.mlp(h)
        if next_norm is None:
            return self._residual(x, y, self.gamma_2), None
        return residual_norm(x, y, self.gamma_2, next_norm.weight, next_norm.bias, next_norm.eps, dtype)

    def _residual(self, x: torch.Tensor, y: torch.Tensor, gamma: Optional[torch.Tensor]) -> torch.Tensor:
        """``x + drop_path(gamma * y)``; without stochastic depth one ``addcmul`` (one pass over the tokens
        instead of a scaling pass and an addition; with layer scale the sum is fp32 either way under autocast)."""
        if gamma is None:
            return x + self.drop_path(y)
        if not self.training or self.drop_path.drop_prob == 0.:
            return torch.addcmul(x, y, gamma)
        return x + self.drop_path(y * gamma)


def in_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` laid out channels_last or NCHW-contiguous (no copy when it already is): a stage or norm hands back
    its input's layout."""
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, C, H, W) with H, W multiples of ``window_size`` -> (B * nH * nW, window_size**2, C), row-major."""
    batch, channels, height, width = x.shape
    x = x.view(batch, channels, height // window_size, window_size, width // window_size, window_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window_size * window_size, channels)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int,
                   channels_last: bool = False) -> torch.Tensor:
    """Inverse of :func:`window_partition`: -> (B, C, height, width), laid out channels_last if asked (then
    nothing is copied when a row of windows spans the map)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, channels)
    if channels_last:
        return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels).permute(0, 3, 1, 2)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, channels, height, width)


class WindowCrop:
    """The top-left ``height`` x ``width`` rectangle of every ``window`` x ``window`` window of a sequence batch
    (windows flattened row-major into (sequences, window**2, channels))."""

    def __init__(self, window: int, height: int, width: int):
        self.window, self.height, self.width = window, height, width
        self.tokens = height * width

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """(sequences, window**2, C) -> (sequences, height * width, C), row-major."""
        sequences, _, channels = x.shape
        x = x.reshape(sequences, self.window, self.window, channels)[:, :self.height, :self.width]
        return x.reshape(sequences, self.tokens, channels)


def pad_to_window(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Zero-pad right and bottom to a multiple of the window (the padding is not masked later)."""
    height, width = x.shape[-2:]
    pad_b = (window_size - height % window_size) % window_size
    pad_r = (window_size - width % window_size) % window_size
    if pad_b or pad_r:
        x = F.pad(x, (0, pad_r, 0, pad_b))
    return x


def num_windows(size: int, window_size: int) -> int:
    return math.ceil(size / window_size)
