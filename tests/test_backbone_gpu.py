"""The backbone's fast paths on CUDA (skipped without): the last block's query crop at the published detection
windows, and ``compile=`` (inductor) against eager, in fp32 and under fp16 autocast, forward and gradients, for
each scan backend that imports here."""
import pytest
import torch

from mmmambavision import MambaVision
from mmmambavision.ops import ENV_VAR
from test_backbone_fast_paths import bias_before_train_bn, relative
from test_mixer_gpu import GPU_BACKENDS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


def _step(model, x, weights, half):
    model.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=torch.float16, enabled=half):
        outs = model(x)
    # each output's term scaled by 1 / sqrt(its size): fp16 weight gradients (the stem's convolutions sum over every
    # position) stay finite without a loss scaler, and the per-element gradients stay clear of fp16's subnormals
    sum((o.float() * w).sum() / o.numel() ** 0.5 for o, w in zip(outs, weights)).backward()
    return [o.detach().float() for o in outs], {n: p.grad.float() for n, p in model.named_parameters()}


@pytest.fixture
def backend(request, monkeypatch):
    monkeypatch.setenv(ENV_VAR, request.param)
    return request.param


@pytest.mark.parametrize('backend', GPU_BACKENDS, indirect=True)
@pytest.mark.parametrize('half,compiled', [(False, False), (True, False), (True, True), (False, True)])
def test_fast_paths_match_the_plain_path_at_detection_windows(backend, half, compiled):
    """Detection-sized maps in the published windows (8, 8, 112, 56): the crop (and, when asked, inductor) against
    the plain eager path (crop off) in fp32, outputs and every gradient. Under fp16 autocast the fast path must be
    as close to that fp32 reference as the plain path under fp16 autocast is (some gradients, e.g. LayerNorm biases
    before attention, are near-cancelling sums that fp16 rounding alone moves by tens of percent)."""
    torch._dynamo.reset()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    fast = MambaVision('tiny', window_size=(8, 8, 112, 56), drop_path_rate=0., compile=compiled)
    fast.init_weights()
    plain = MambaVision('tiny', window_size=(8, 8, 112, 56), drop_path_rate=0.)
    plain.load_state_dict(fast.state_dict())
    fast, plain = fast.cuda().train(), plain.cuda().train()
    for level in plain.levels:
        level.crop_last_block = False
    # stage 3 is 40 x 63 in one 112 x 112 window, stage 4 20 x 32 in a 56 x 56 one
    x = torch.randn(2, 3, 640, 1000, device='cuda')
    weights = [torch.randn(o.shape, device='cuda') for o in plain(x)]
    out_ref, grads_ref = _step(plain, x, weights, half=False)
    out_f, grads_f = _step(fast, x, weights, half)
    if half:
        out_h, grads_h = _step(plain, x, weights, half=True)
    for i, (a, b) in enumerate(zip(out_f, out_ref)):
        bound = max(1e-4, 2 * relative(out_h[i], b)) if half else 1e-4
        assert relative(a, b) < bound, f'stage {i}: {relative(a, b):.2e} (bound {bound:.2e})'
    # Without a loss scaler fp16 can overflow in the backward of a from-scratch model with padded windows (the stem's
    # weight gradients came back NaN on the plain path too): such gradients say nothing about the fast path, which
    # must overflow nowhere the plain path does not.
    def nonfinite(grads):
        return {name for name, grad in grads.items() if not torch.isfinite(grad).all()}

    skipped = nonfinite(grads_h) if half else set()
    assert nonfinite(grads_f) <= skipped, f'non-finite gradients only on the fast path: {nonfinite(grads_f) - skipped}'
    for name in grads_ref:
        if bias_before_train_bn(name) or name in skipped:
            continue
        error = relative(grads_f[name], grads_ref[name])
        bound = max(5e-4, 2 * relative(grads_h[name], grads_ref[name])) if half else 5e-4
        assert error < bound, f'{name}: {error:.2e} (bound {bound:.2e})'


def _graph_roots() -> int:
    """How many CUDA graph trees inductor's ``reduce-overhead`` mode has recorded on the current device."""
    from torch._inductor import cudagraph_trees
    manager = cudagraph_trees.get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    return 0 if manager is None or manager.roots is None else sum(len(nodes) for nodes in manager.roots.values())


def _graphed_and_eager(window=(8, 8, 56, 28)):
    """MambaVision-T with ``compile=dict(mode='reduce-overhead')`` and an eager copy with the same weights, on
    CUDA, in training mode, fp32 matmuls."""
    torch._dynamo.reset()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    graphed = MambaVision('tiny', window_size=window, drop_path_rate=0., compile=dict(mode='reduce-overhead'))
    graphed.init_weights()
    eager = MambaVision('tiny', window_size=window, drop_path_rate=0.)
    eager.load_state_dict(graphed.state_dict())
    return graphed.cuda().train(), eager.cuda().train()


def _steps_match(graphed, eager, sizes, grads_of=None):
    """Training steps on new images of each size: ``graphed``'s outputs and gradients (those of ``grads_of``,
    default ``graphed`` itself) against ``eager``'s, in fp32."""
    grads_of = graphed if grads_of is None else grads_of
    for size in sizes:
        x = torch.randn(2, 3, *size, device='cuda')
        weights = [torch.randn(o.shape, device='cuda') for o in eager(x)]
        out_ref, grads_ref = _step(eager, x, weights, half=False)
        out_g, _ = _step(graphed, x, weights, half=False)
        grads_g = {n: p.grad.float() for n, p in grads_of.named_parameters()}
        for i, (a, b) in enumerate(zip(out_g, out_ref)):
            assert relative(a, b) < 1e-4, f'{size} stage {i}: {relative(a, b):.2e}'
        for name in grads_ref:
            if not bias_before_train_bn(name):
                error = relative(grads_g[name], grads_ref[name])
                assert error < 5e-4, f'{size} {name}: {error:.2e}'


@pytest.mark.parametrize('backend', GPU_BACKENDS, indirect=True)
def test_reduce_overhead_training_steps_replay_cuda_graphs_and_match_eager(backend):
    """``compile=dict(mode='reduce-overhead')``: the hybrid stages' forward and backward are recorded as CUDA graphs
    and replayed; over several training steps with new images (a second image size among them: the stages'
    window sequences keep their shape, the crop of the last block changes) the outputs and every gradient equal
    the eager model's in fp32, and CUDA graphs were in fact recorded."""
    graphed, eager = _graphed_and_eager()
    roots_before = _graph_roots()
    _steps_match(graphed, eager, [(320, 480), (320, 480), (320, 480), (288, 512), (320, 480)])
    assert _graph_roots() > roots_before, 'no CUDA graph was recorded: the compiled stages ran without graphs'


@pytest.mark.parametrize('backend', GPU_BACKENDS, indirect=True)
def test_reduce_overhead_training_inside_distributed_data_parallel(backend, tmp_path):
    """The same inside DistributedDataParallel (one process, NCCL), where dynamo would split the compiled stages at
    DDP's gradient buckets: the stages that record CUDA graphs are compiled unsplit, train, and match eager."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group('nccl', init_method=f'file://{tmp_path}/store', rank=0, world_size=1)
    try:
        graphed, eager = _graphed_and_eager()
        roots_before = _graph_roots()
        wrapped = DistributedDataParallel(graphed, device_ids=[torch.cuda.current_device()])
        _steps_match(wrapped, eager, [(320, 480), (320, 480), (288, 512), (320, 480)], grads_of=graphed)
        assert _graph_roots() > roots_before, 'no CUDA graph was recorded under DDP'
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize('backend', GPU_BACKENDS, indirect=True)
@pytest.mark.parametrize('half', [False, True])
def test_no_step_waits_for_the_gpu(backend, half):
    """Eager inference and a training forward + backward never synchronise the host with the device (no ``.item()``,
    no copy to the host, no data-dependent shape): the host keeps queueing kernels while the GPU works, which is
    what an inference- or host-bound training step's speed rests on. ``torch.cuda.set_sync_debug_mode('error')``
    raises at any synchronising call; the first run of each step (lazy initialisation, kernel compilation) is
    outside it. Padded windows with a cropped last block, and whole-map stages."""
    model = MambaVision('tiny', window_size=(8, 8, 16, None), drop_path_rate=0.1).cuda()
    x = torch.randn(2, 3, 200, 264, device='cuda').to(memory_format=torch.channels_last)

    def infer():
        model.eval()
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16, enabled=half):
            return model(x)

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        with torch.autocast('cuda', dtype=torch.float16, enabled=half):
            outs = model(x)
        sum(o.float().mean() for o in outs).backward()
        return outs

    for step in (infer, train):
        step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            outs = step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert [o.shape[-2:] for o in outs] == [(50, 66), (25, 33), (13, 17), (7, 9)], step.__name__
