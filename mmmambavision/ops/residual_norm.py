"""Residual addition, layer scale and LayerNorm in one pass, for inference on CUDA.

A hybrid block ends ``x + gamma * y`` and the next step normalises the sum: separately that is a scaling pass, an
addition (fp32 when there is layer scale: the fp32 ``gamma`` promotes the sum), a LayerNorm and, under autocast, a
cast of the normalised fp32 activations back to fp16 for the next matmul - four passes over the tokens, about
32 bytes per element for the layer-scale sizes. :func:`residual_norm` reads ``x`` and ``y`` once and writes the sum
and the normalised half-precision activations (12 bytes per element), as one Triton kernel.
"""
import functools
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

# largest width one program normalises in registers (MambaVision-L's stage 4 has 1568 channels)
MAX_WIDTH = 4096
_kernel = None
_launcher = None


def residual_norm_available(x: Tensor) -> bool:
    """Whether :func:`residual_norm` can run its kernel for ``x``: a CUDA tensor and Triton installed (or a CPU
    tensor under ``TRITON_INTERPRET=1``, Triton's interpreter; tests)."""
    if x.device.type != 'cuda' and not (x.device.type == 'cpu'
                                         and os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')):
        return False
    return _load_kernel() is not None and x.shape[-1] <= MAX_WIDTH


def _load_kernel():
    """The kernel (None without Triton), and its launcher kept in ``_launcher``; imported on first use."""
    global _kernel, _launcher
    if _kernel is None:
        try:
            from .triton.launch import launcher
            from .triton.residual_norm_kernel import residual_norm_kernel
        except ImportError:
            _kernel = False
        else:
            _kernel, _launcher = residual_norm_kernel, launcher
    return _kernel or None


@functools.lru_cache(maxsize=256)  # a model normalises a handful of shapes: no grid or dict to build per call
def _launch_shape(rows: int, width: int, has_gamma: bool = False) -> Tuple[tuple, dict]:
    """Grid and constexprs: a program normalises ``BLOCK_M`` rows of ``BLOCK_N`` (``width`` rounded up to a power
    of two) columns, about 4096 elements. The options dict is shared between calls: not to be changed."""
    block_n = 1 << max(width - 1, 0).bit_length()
    block_m = max(1, min(16, 4096 // block_n))
    return (-(-rows // block_m), ), dict(BLOCK_M=block_m, BLOCK_N=block_n, HAS_GAMMA=has_gamma,
                                         num_warps=8 if block_n >= 2048 else 4)


def residual_norm(x: Tensor, y: Tensor, gamma: Optional[Tensor], weight: Tensor, bias: Tensor, eps: float,
                  out_dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """``s = x + gamma * y`` (``x + y`` when ``gamma`` is None) in the dtype torch would give it (fp32 as soon as
    one operand is), and ``LayerNorm(s)`` over the last dimension with ``weight``, ``bias`` and ``eps``, in
    ``out_dtype``; statistics in fp32. Returns ``(s, normalised)``. Inference only (no autograd)."""
    if x.shape != y.shape:
        raise ValueError(f'residual_norm: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}')
    width = x.shape[-1]
    if weight.shape != (width, ) or bias.shape != (width, ) or (gamma is not None and gamma.shape != (width, )):
        raise ValueError(f'residual_norm: weight, bias and gamma must have shape ({width},) like the last dimension '
                         'of x')
    kernel = _load_kernel()
    if kernel is None:
        raise RuntimeError('residual_norm needs Triton (pip install triton); check residual_norm_available() first')
    # is_contiguous() is a cheap attribute read, contiguous() a dispatched op even where it returns x itself
    x = x if x.is_contiguous() else x.contiguous()
    y = y if y.is_contiguous() else y.contiguous()
    sum_dtype = torch.promote_types(x.dtype, y.dtype)
    if gamma is not None:
        sum_dtype = torch.promote_types(sum_dtype, gamma.dtype)
    total = torch.empty(x.shape, dtype=sum_dtype, device=x.device)
    normed = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    rows = x.numel() // width if width else 0
    if rows == 0:
        return total, normed
    grid, options = _launch_shape(rows, width, gamma is not None)
    _launcher(kernel, grid, (x, y, weight if gamma is None else gamma, weight, bias, total, normed, rows, width,
                             float(eps)), options)
    return total, normed
