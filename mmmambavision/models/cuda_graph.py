"""Inference forwards replayed from CUDA graphs, one graph per input shape.

At batch 1 (mmseg's sliding-window test: every crop 512x512; a detector's test at one image size) the backbone's
GPU work is a few milliseconds, and launching it from Python - hundreds of kernels, each through the dispatcher -
takes longer than running it. A CUDA graph records the launches of one forward once and replays them with one call.
:class:`GraphCache` does that for a module's forward: per input shape (and dtype, strides, device, autocast state)
it runs the forward twice on a side stream (cuDNN's algorithm search, Triton's compilation and the cached
half-precision weights happen there), captures a third call, and from then on copies each input into the graph's
input buffer, replays, and returns copies of the graph's outputs (the next replay overwrites its buffers).

A replay runs the kernels chosen at capture on the tensors of the capture: the parameters' storage and the cached
half-precision copies made from them. So every call first checks each parameter's and buffer's storage address and
in-place version: a parameter replaced by another tensor (``model.to(...)``, ``.half()``) or changed in place
(``load_state_dict``, an optimiser step) drops every graph, and the next call captures anew.
"""
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

Outputs = Tuple[torch.Tensor, ...]
#: input shapes a module keeps graphs for by default; inputs of further shapes run eagerly
DEFAULT_MAX_SHAPES = 4
WARMUP_CALLS = 2


def graph_applicable(x: torch.Tensor) -> bool:
    """Whether a forward of ``x`` can be taken from a graph: CUDA, no autograd, not while tracing, compiling or
    capturing (an outer graph records the eager launches itself)."""
    return (x.is_cuda and not torch.is_grad_enabled() and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and not torch.cuda.is_current_stream_capturing())


def inference_caches(module: nn.Module) -> list:
    """The values of every ``_inference_cache`` in ``module`` (:func:`..utils.inference_cached`: half-precision
    weights and other tensors derived from parameters)."""
    return [dict(m.__dict__['_inference_cache']) for m in module.modules() if '_inference_cache' in m.__dict__]


class CapturedForward:
    """One captured forward of ``module`` through ``forward``: ``static_input`` copied in, ``graph`` replayed,
    ``static_outputs`` copied out.

    The graph reads the cached tensors derived from parameters that the warm-up made (half-precision weights);
    an eager call in another dtype replaces a module's cache entry, which would free them: the capture keeps its
    own references (``kept``), so their memory stays theirs."""

    def __init__(self, module: nn.Module, forward: Callable[[torch.Tensor], Outputs], x: torch.Tensor,
                 warmup: int = WARMUP_CALLS):
        self.static_input = x.clone()
        autocast = torch.is_autocast_enabled('cuda')
        dtype = torch.get_autocast_dtype('cuda')
        stream = torch.cuda.Stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        # autocast's cache of cast weights would hold tensors of the capture's pool past it: off while capturing
        with torch.cuda.device(x.device), torch.autocast('cuda', dtype=dtype, enabled=autocast, cache_enabled=False):
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    forward(self.static_input)
            torch.cuda.current_stream(x.device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_outputs = tuple(forward(self.static_input))
        self.kept = inference_caches(module)

    def __call__(self, x: torch.Tensor) -> Outputs:
        self.static_input.copy_(x)
        self.graph.replay()
        return tuple(out.clone() for out in self.static_outputs)


class GraphCache:
    """Graphs of ``forward`` for up to ``max_shapes`` input keys (shape, strides, dtype, device, autocast state,
    inference mode); an input of a further key runs ``forward`` eagerly (capturing costs three forwards and the
    graph's memory; a detector tested at many image sizes would fill the cache with graphs it rarely replays).

    Args:
        max_shapes: graphs kept, at least 1.
        capture: ``capture(module, forward, x)`` -> a callable ``replay(x)``; :class:`CapturedForward` (tests pass
            a stand-in to exercise the bookkeeping without CUDA).
    """

    def __init__(self, max_shapes: int = DEFAULT_MAX_SHAPES,
                 capture: Callable[..., Callable] = CapturedForward):
        if isinstance(max_shapes, bool) or not isinstance(max_shapes, int) or max_shapes < 1:
            raise ValueError(f'max_shapes must be a positive int, got {max_shapes!r}')
        self.max_shapes = max_shapes
        self.capture = capture
        self.graphs: Dict[tuple, Callable] = {}
        self.state: Optional[tuple] = None
        self.captures = 0  # graphs captured so far (every capture, also those dropped on invalidation)

    def clear(self) -> None:
        """Drops every graph (and with it its memory pool)."""
        self.graphs.clear()

    def __getstate__(self) -> dict:
        """Copies and pickles (``copy.deepcopy(model)``, an EMA model, ``torch.save(model)``) start without
        graphs: a graph belongs to the tensors it was captured on."""
        state = dict(self.__dict__)
        state.update(graphs={}, state=None)
        return state

    @staticmethod
    def input_key(x: torch.Tensor) -> tuple:
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        # inference mode too: a buffer made under it cannot be written outside it
        return (tuple(x.shape), x.stride(), x.dtype, x.device, autocast,
                torch.get_autocast_dtype(device_type) if autocast else None, torch.is_inference_mode_enabled())

    @staticmethod
    def state_key(tensors: Sequence[torch.Tensor]) -> tuple:
        """Storage address and in-place version of every parameter and buffer."""
        return tuple((t.data_ptr(), t._version) for t in tensors)

    def __call__(self, module: nn.Module, forward: Callable[[torch.Tensor], Outputs], x: torch.Tensor,
                 tensors: Sequence[torch.Tensor]) -> Outputs:
        """``forward(x)``, from the graph of ``x``'s key when there is (or there is room for) one. ``tensors``:
        ``module``'s parameters and buffers; a change of any (another storage, or an in-place update) drops every
        graph first."""
        state = self.state_key(tensors)
        if state != self.state:
            self.graphs.clear()
            self.state = state
        key = self.input_key(x)
        replay = self.graphs.get(key)
        if replay is None:
            if len(self.graphs) >= self.max_shapes:
                return forward(x)
            replay = self.capture(module, forward, x)
            self.captures += 1
            self.graphs[key] = replay
        return replay(x)


def graph_settings(cuda_graph) -> Optional[int]:
    """The ``cuda_graph`` argument of the backbone -> the number of input shapes to keep graphs for (None: off)."""
    if isinstance(cuda_graph, bool):
        return DEFAULT_MAX_SHAPES if cuda_graph else None
    if isinstance(cuda_graph, dict):
        unknown = set(cuda_graph) - {'max_shapes'}
        max_shapes = cuda_graph.get('max_shapes', DEFAULT_MAX_SHAPES)
        if unknown or isinstance(max_shapes, bool) or not isinstance(max_shapes, int) or max_shapes < 1:
            raise ValueError(f"cuda_graph must be a bool or dict(max_shapes=<positive int>), got {cuda_graph!r}")
        return max_shapes
    raise TypeError(f'cuda_graph must be a bool or dict(max_shapes=<positive int>), got {cuda_graph!r}')
