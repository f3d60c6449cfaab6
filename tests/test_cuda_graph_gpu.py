"""``cuda_graph=True`` on CUDA (skipped without): graph replays against the eager forward of the same weights, in
fp32 and under fp16 autocast, at segmentation and detection windows; outputs that later replays leave alone; new
weights and a dtype switch after the capture; mmseg's sliding-window test through the graphs."""
import pytest
import torch

from mmmambavision import MambaVision
from mmmambavision.ops import ENV_VAR
from test_mixer_gpu import GPU_BACKENDS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


def pair(window, **graph):
    torch.manual_seed(0)
    graphed = MambaVision('tiny', window_size=window, cuda_graph=graph or True)
    graphed.init_weights()
    eager = MambaVision('tiny', window_size=window)
    eager.load_state_dict(graphed.state_dict())
    return graphed.cuda().eval(), eager.cuda().eval()


def forward(model, x, half):
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16, enabled=half):
        return model(x)


@pytest.fixture
def backend(request, monkeypatch):
    monkeypatch.setenv(ENV_VAR, request.param)
    return request.param


@pytest.mark.parametrize('backend', GPU_BACKENDS, indirect=True)
@pytest.mark.parametrize('half', [False, True])
@pytest.mark.parametrize('window,size', [((8, 8, 64, 32), (512, 683)), ((8, 8, 112, 56), (800, 1216))])
def test_replays_equal_the_eager_forward(backend, half, window, size):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    graphed, eager = pair(window)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        for _ in range(3):  # capture, then replays of new inputs
            x = torch.randn(1, 3, *size, device='cuda').to(memory_format=memory_format)
            for a, b in zip(forward(graphed, x, half), forward(eager, x, half)):
                assert a.dtype == b.dtype and a.stride() == b.stride()
                # the same kernels on the same values: equal up to cuDNN / cuBLAS algorithm choices
                torch.testing.assert_close(a, b, rtol=1e-3 if half else 1e-5, atol=1e-3 if half else 1e-5)
    assert graphed._graphs.captures == 2  # one graph per memory format


def test_outputs_stay_after_later_replays_and_new_weights_are_read():
    graphed, eager = pair((8, 8, 64, 32))
    x1, x2 = (torch.randn(1, 3, 512, 512, device='cuda') for _ in range(2))
    first = forward(graphed, x1, True)
    kept = [o.clone() for o in first]
    forward(graphed, x2, True)
    for a, b in zip(first, kept):
        assert torch.equal(a, b)
    # new weights, loaded in place after the capture: the next call sees them
    torch.manual_seed(1)
    other = MambaVision('tiny', window_size=(8, 8, 64, 32))
    other.init_weights()
    graphed.load_state_dict(other.state_dict())
    eager.load_state_dict(other.state_dict())
    for a, b in zip(forward(graphed, x1, True), forward(eager, x1, True)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert graphed._graphs.captures == 2


def test_an_eager_call_in_another_dtype_leaves_the_graph_weights_alone():
    """With one graph kept, an fp32 call runs eagerly and replaces the cached half-precision weights of the
    modules; the fp16 graph captured before must still read its own."""
    graphed, eager = pair((8, 8, 64, 32), max_shapes=1)
    x = torch.randn(1, 3, 512, 512, device='cuda')
    forward(graphed, x, True)
    forward(graphed, x, False)  # eager: no room for a second graph
    torch.cuda.empty_cache()
    filler = [torch.full((1 << 20, ), float('nan'), device='cuda') for _ in range(64)]  # reuse freed memory
    for a, b in zip(forward(graphed, x, True), forward(eager, x, True)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    del filler
    assert graphed._graphs.captures == 1


def test_mmseg_slide_inference_through_the_graphs():
    """UperNet's sliding-window test (512 crops, stride 341: two crops of a 512 x 700 image) with and without
    graphs: the same segmentation."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    init_default_scope('mmseg')
    cfg = Config.fromfile('configs/seg/upernet_mambavision_t_160k_ade20k.py')
    cfg.model.backbone.init_cfg = None
    cfg.model.data_preprocessor.size = None
    cfg.model.test_cfg = dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
    models = []
    for cuda_graph in (True, False):
        torch.manual_seed(0)
        cfg.model.backbone.cuda_graph = cuda_graph
        cfg.model.pop('pretrained', None)
        model = MODELS.build(cfg.model)
        model.init_weights()
        models.append(model.cuda().eval())
    models[1].load_state_dict(models[0].state_dict())
    image = torch.randint(0, 256, (3, 512, 700), dtype=torch.uint8)
    sample = SegDataSample(metainfo=dict(img_shape=(512, 700), ori_shape=(512, 700)))
    logits = []
    for model in models:
        with torch.no_grad():
            out = model.test_step(dict(inputs=[image], data_samples=[sample]))
        logits.append(out[0].seg_logits.data)
    assert models[0].backbone._graphs.captures == 1  # every crop 512 x 512: one graph
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)
