"""Small helpers shared by the layers."""
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn


def inference_cached(module: nn.Module, name: str, sources: Sequence[torch.Tensor], make: Callable[[], object],
                     *extra_key) -> object:
    """``make()``, kept on ``module`` while ``sources`` are unchanged: for values derived from parameters
    (half-precision copies, ``-exp(A_log)``) that inference would otherwise recompute at every call.

    Only without autograd (a cached value would carry no graph) and outside ``torch.compile`` (which folds such
    casts into its kernels anyway); otherwise ``make()`` every call. The key holds each source's storage address
    and version counter, so ``.to()``/``.half()``, ``load_state_dict`` and in-place updates all invalidate it.
    """
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return make()
    key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources) + extra_key
    cache = module.__dict__.setdefault('_inference_cache', {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = (key, make())
        cache[name] = hit
    return hit[1]


def round_up_on(value: int, multiple: int, device: torch.device, devices: Sequence[str]) -> int:
    """``value`` rounded up to a multiple of ``multiple`` where ``device``'s type is one of ``devices``, else
    ``value`` itself (a padded length or count that only some devices' kernels want)."""
    if device.type not in devices:
        return value
    return -(-value // multiple) * multiple


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype a matmul of ``x`` with ``weight`` runs in: autocast's when it is on for x's device, else the
    weight's."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


#: torch.compile modes that record CUDA graphs (inductor's cudagraph trees) and replay them.
GRAPH_COMPILE_MODES = ('reduce-overhead', 'max-autotune')


def compile_records_graphs(options: Optional[dict]) -> bool:
    """Whether ``torch.compile(..., **options)`` records and replays CUDA graphs: a mode in
    :data:`GRAPH_COMPILE_MODES`, or inductor's ``triton.cudagraphs`` option."""
    if not options:
        return False
    return bool(options.get('mode') in GRAPH_COMPILE_MODES or (options.get('options') or {}).get('triton.cudagraphs'))
