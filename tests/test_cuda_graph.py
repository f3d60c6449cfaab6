"""``cuda_graph=``: the bookkeeping of :class:`GraphCache` (which input gets a graph, when graphs are dropped) with
a stand-in for the capture, and the backbone's gating (which calls go to the graphs). On CPU; the captures
themselves are checked against eager on CUDA in test_cuda_graph_gpu.py."""
import copy
import pickle

import pytest
import torch

from mmmambavision import MambaVision
from mmmambavision.models import cuda_graph, mambavision
from mmmambavision.models.cuda_graph import GraphCache, graph_settings
from mmmambavision.models.layers import record_attention


class StandInCapture:
    """A 'capture' that runs the forward on its own input buffer at each replay, as a graph replays its launches
    on the captured input (a cache that did not copy each new input in would return the first input's result)."""
    made = []

    def __init__(self, module, forward, x):
        self.forward, self.static_input, self.replays = forward, x.clone(), 0
        self.static_outputs = None
        StandInCapture.made.append(self)

    def __call__(self, x):
        self.static_input.copy_(x)
        self.static_outputs = tuple(self.forward(self.static_input))
        self.replays += 1
        return tuple(out.clone() for out in self.static_outputs)


@pytest.fixture(autouse=True)
def _forget_captures():
    StandInCapture.made = []
    yield


def linear_forward(module):
    def forward(x):
        return (module(x), )
    return forward


def test_one_capture_per_input_key_and_eager_past_max_shapes():
    lin = torch.nn.Linear(4, 3)
    tensors = tuple(lin.parameters())
    cache = GraphCache(max_shapes=2, capture=StandInCapture)
    eager_calls = []

    def forward(x):
        eager_calls.append(tuple(x.shape))
        return (lin(x), )

    with torch.no_grad():
        for _ in range(3):
            for rows in (1, 2):
                x = torch.randn(rows, 4)
                torch.testing.assert_close(cache(lin, forward, x, tensors)[0], lin(x), rtol=0, atol=0)
        assert cache.captures == 2 and [c.replays for c in StandInCapture.made] == [3, 3]
        eager_calls.clear()
        x = torch.randn(5, 4)
        torch.testing.assert_close(cache(lin, forward, x, tensors)[0], lin(x), rtol=0, atol=0)
        assert cache.captures == 2 and eager_calls == [(5, 4)]  # a third shape: no room, eager
        # another memory layout, dtype or autocast state is another key
        assert GraphCache.input_key(torch.randn(2, 4)) != GraphCache.input_key(torch.randn(4, 2).t())
        assert GraphCache.input_key(torch.randn(2, 4)) != GraphCache.input_key(torch.randn(2, 4).double())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            autocast_key = GraphCache.input_key(torch.randn(2, 4))
        assert autocast_key != GraphCache.input_key(torch.randn(2, 4))
        with torch.inference_mode():
            inference_key = GraphCache.input_key(torch.randn(2, 4))
        assert inference_key != GraphCache.input_key(torch.randn(2, 4))


def test_parameter_changes_drop_every_graph():
    lin = torch.nn.Linear(4, 3)
    cache = GraphCache(capture=StandInCapture)
    x = torch.randn(2, 4)
    with torch.no_grad():
        cache(lin, linear_forward(lin), x, tuple(lin.parameters()))
        cache(lin, linear_forward(lin), x, tuple(lin.parameters()))
        assert cache.captures == 1
        lin.load_state_dict(torch.nn.Linear(4, 3).state_dict())  # in place: versions move
        cache(lin, linear_forward(lin), x, tuple(lin.parameters()))
        assert cache.captures == 2
        lin.bias.add_(1.)
        cache(lin, linear_forward(lin), x, tuple(lin.parameters()))
        assert cache.captures == 3
        lin.double()  # new storage
        cache(lin, linear_forward(lin), x.double(), tuple(lin.parameters()))
        assert cache.captures == 4 and len(cache.graphs) == 1


def test_settings_and_errors():
    assert graph_settings(False) is None
    assert graph_settings(True) == cuda_graph.DEFAULT_MAX_SHAPES
    assert graph_settings(dict(max_shapes=1)) == 1
    for bad in (dict(max_shapes=0), dict(max_shapes=True), dict(shapes=2), dict(max_shapes=1.5)):
        with pytest.raises(ValueError, match='cuda_graph must be a bool or dict\\(max_shapes='):
            MambaVision('tiny', cuda_graph=bad)
    with pytest.raises(TypeError, match='cuda_graph must be'):
        MambaVision('tiny', cuda_graph='yes')
    with pytest.raises(ValueError, match='max_shapes must be a positive int'):
        GraphCache(max_shapes=0)


def test_copies_and_pickles_start_without_graphs():
    lin = torch.nn.Linear(4, 3)
    cache = GraphCache(max_shapes=3, capture=StandInCapture)
    with torch.no_grad():
        cache(lin, linear_forward(lin), torch.randn(2, 4), tuple(lin.parameters()))
    for clone in (copy.deepcopy(cache), pickle.loads(pickle.dumps(GraphCache(max_shapes=3)))):
        assert clone.graphs == {} and clone.state is None and clone.max_shapes == 3
    assert len(cache.graphs) == 1


@pytest.fixture
def graphed(monkeypatch):
    """A tiny MambaVision with cuda_graph=True whose cache captures with the stand-in, on CPU (the CUDA check in
    the gating pretends to pass; the other conditions are the real ones)."""
    monkeypatch.setattr(mambavision, 'graph_applicable',
                        lambda x: not torch.is_grad_enabled() and not torch.jit.is_tracing())
    model = MambaVision('tiny', window_size=(8, 8, 4, 2), cuda_graph=dict(max_shapes=2))
    model._graphs.capture = StandInCapture
    plain = MambaVision('tiny', window_size=(8, 8, 4, 2))
    plain.load_state_dict(model.state_dict())
    return model.eval(), plain.eval()


def test_backbone_sends_eval_inference_to_the_graphs(graphed):
    model, plain = graphed
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for _ in range(2):
            for a, b in zip(model(x), plain(x)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert model._graphs.captures == 1 and StandInCapture.made[0].replays == 2
    model.train()
    assert model._graphs.graphs == {}  # training gets the graphs' memory back
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)  # autograd on
    with torch.no_grad(), record_attention(model) as attentions:
        model(x)
    assert attentions[0].attn_weights is not None  # recorded, so eager
    assert model._graphs.captures == 1 and StandInCapture.made[0].replays == 2
    with torch.no_grad():
        model(x)  # eval again: captured anew
    assert model._graphs.captures == 2


def test_backbone_lists_its_tensors_again_after_eval_and_to(graphed):
    model, _ = graphed
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
        first = model._graph_tensors
        model.patch_embed.conv_down[0].weight = torch.nn.Parameter(torch.randn_like(
            model.patch_embed.conv_down[0].weight))  # a replaced parameter: seen after eval()
        model.eval()
        assert model._graph_tensors is None
        model(x)
        assert model.patch_embed.conv_down[0].weight in model._graph_tensors
        assert first is not model._graph_tensors and model._graphs.captures == 2
        model.double()
        assert model._graph_tensors is None
        model(x.double())
        assert model._graphs.captures == 3
