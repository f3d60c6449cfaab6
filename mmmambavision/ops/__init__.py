"""Operators: the selective scan and its backends (probed lazily, at first use), and the fused residual +
LayerNorm of half-precision inference."""
from .residual_norm import residual_norm, residual_norm_available
from .scan_chunked import selective_scan_chunked
from .scan_reference import selective_scan_reference
from .selective_scan import (BACKENDS, ENV_VAR, cuda_kernel_available, selected_backend, selective_scan,
                             triton_available)

__all__ = ['selective_scan', 'selective_scan_reference', 'selective_scan_chunked', 'selected_backend',
           'cuda_kernel_available', 'triton_available', 'BACKENDS', 'ENV_VAR', 'residual_norm',
           'residual_norm_available']
