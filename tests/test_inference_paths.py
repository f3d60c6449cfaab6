"""Inference-only fast paths: they must compute what the plain modules compute."""
import collections
import copy

import pytest
import torch
import torch.nn.functional as F

from torch.utils._python_dispatch import TorchDispatchMode

from mmmambavision import MambaVision
from mmmambavision.models.layers import Conv2d, ConvBlock, LayerNorm, Linear
from mmmambavision.models.mambavision import LayerNorm2d


def _ln(dim=48):
    torch.manual_seed(0)
    norm = LayerNorm(dim)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(dim))
        norm.bias.copy_(0.3 * torch.randn(dim))
    return norm


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_layernorm_in_inference_matches_fp32(dtype):
    norm = _ln()
    x = (3 * torch.randn(4, 10, 48) + 1).to(dtype)
    expected = F.layer_norm(x.double(), (48, ), norm.weight.double(), norm.bias.double(), norm.eps)
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        out = norm(x)
    assert out.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def test_half_layernorm_runs_outside_autocast(monkeypatch):
    # On CUDA, autocast has an fp32 kernel for native_layer_norm: called under autocast, the "half" path casts
    # input and parameters to fp32 and writes fp32 (three casts more, not fewer). The call must skip autocast.
    seen = []
    native = torch.native_layer_norm

    def spy(*args, **kwargs):
        seen.append(torch._C._dispatch_tls_is_dispatch_key_excluded(torch._C.DispatchKey.AutocastCPU))
        return native(*args, **kwargs)

    monkeypatch.setattr(torch, 'native_layer_norm', spy)
    norm = _ln()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert not torch._C._dispatch_tls_is_dispatch_key_excluded(torch._C.DispatchKey.AutocastCPU)
        norm(torch.randn(2, 5, 48).to(torch.bfloat16))
    assert seen == [True]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_half_layernorm_stays_half_under_cuda_autocast():
    norm = _ln().cuda()
    x = torch.randn(4, 10, 48, device='cuda', dtype=torch.float16)
    expected = F.layer_norm(x.double(), (48, ), norm.weight.double(), norm.bias.double(), norm.eps)
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16):
        out = norm(x)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)


def test_training_keeps_autocasts_own_layernorm():
    norm = _ln()
    plain = torch.nn.LayerNorm(48)
    plain.load_state_dict(norm.state_dict())
    x = torch.randn(4, 10, 48).to(torch.bfloat16).requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, ref = norm(x), plain(x)
    assert out.dtype == ref.dtype and out.requires_grad
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_half_parameter_cache_follows_weight_updates():
    norm = _ln()
    x = torch.randn(2, 5, 48).to(torch.bfloat16)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        first = norm(x)
        norm.bias.add_(1.0)
        second = norm(x)
    torch.testing.assert_close(second.float() - first.float(), torch.ones_like(first.float()), rtol=0, atol=2e-2)


class _CountOps(TorchDispatchMode):
    """Counts the aten ops that reach the dispatcher below autocast (autocast's own casts included)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _linear_and_conv_pairs():
    """(ours, torch's) Linear and Conv2d pairs with the same random parameters, and an input for each."""
    torch.manual_seed(0)
    pairs = []
    for ours, plain, x in [
            (Linear(48, 96), torch.nn.Linear(48, 96), torch.randn(2, 7, 48)),
            (Linear(48, 96, bias=False), torch.nn.Linear(48, 96, bias=False), torch.randn(14, 48)),
            (Conv2d(8, 16, 3, 2, 1), torch.nn.Conv2d(8, 16, 3, 2, 1), torch.randn(2, 8, 10, 12)),
            (Conv2d(8, 16, 3, 1, 1, bias=False), torch.nn.Conv2d(8, 16, 3, 1, 1, bias=False),
             torch.randn(2, 8, 10, 12).to(memory_format=torch.channels_last))]:
        plain.load_state_dict(ours.state_dict())
        pairs.append((ours, plain, x))
    return pairs


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_linear_and_conv_match_autocast_without_casting_weights(dtype):
    for ours, plain, x in _linear_and_conv_pairs():
        x = x.to(dtype)
        with torch.no_grad():
            with torch.autocast('cpu', dtype=dtype):
                ours(x)  # fills the cache (kept across autocast regions, unlike autocast's own weight cache)
            with torch.autocast('cpu', dtype=dtype), _CountOps() as plain_ops:
                expected = plain(x)
            with torch.autocast('cpu', dtype=dtype), _CountOps() as ours_ops:
                out = ours(x)
        assert out.dtype == expected.dtype == dtype and out.shape == expected.shape
        torch.testing.assert_close(out, expected)
        assert out.is_contiguous(memory_format=torch.channels_last) == expected.is_contiguous(
            memory_format=torch.channels_last)
        # autocast casts the weight (and bias) once per autocast region (each forward of a benchmark or test
        # loop); the cached path casts nothing
        assert plain_ops.ops['_to_copy'] >= 1
        assert ours_ops.ops['_to_copy'] == 0, ours_ops.ops


def test_linear_and_conv_train_and_fp32_paths_are_torchs():
    for ours, plain, x in _linear_and_conv_pairs():
        for autocast in (False, True):
            x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
                out, expected = ours(x1), plain(x2)
            torch.testing.assert_close(out, expected, rtol=0, atol=0)
            out.float().square().sum().backward()
            expected.float().square().sum().backward()
            torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=0)
            torch.testing.assert_close(ours.weight.grad, plain.weight.grad, rtol=0, atol=0)
            ours.zero_grad(), plain.zero_grad()
        with torch.no_grad():  # fp32 inference: no autocast, no cache
            torch.testing.assert_close(ours(x), plain(x), rtol=0, atol=0)


def test_half_linear_cache_follows_weight_updates():
    layer = Linear(8, 4)
    x = torch.randn(3, 8).to(torch.bfloat16)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        first = layer(x)
        layer.bias.add_(1.0)
        second = layer(x)
        layer.weight.zero_()
        third = layer(x)
    torch.testing.assert_close(second.float() - first.float(), torch.ones_like(first.float()), rtol=0, atol=2e-2)
    torch.testing.assert_close(third.float(), (layer.bias.float().expand(3, 4)), rtol=0, atol=1e-2)


def test_layernorm2d_keeps_channels_last_and_matches():
    torch.manual_seed(0)
    norm = LayerNorm2d(16)
    x = torch.randn(2, 16, 5, 7)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (16, ), norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)
    plain = norm(x)
    assert plain.is_contiguous()
    cl = norm(x.contiguous(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(plain, ref)
    torch.testing.assert_close(cl, ref)


def test_backbone_inference_under_autocast_is_close_to_fp32():
    torch.manual_seed(0)
    arch = dict(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4))
    model = MambaVision(arch, window_size=(8, 8, 3, 2)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    for a, b in zip(out, ref):
        assert torch.isfinite(a).all()
        assert (a.float() - b).norm() / b.norm() < 3e-2


@pytest.mark.parametrize('dtype', [torch.float64, torch.bfloat16])
def test_conv_block_inference_moves_the_bias_into_the_batchnorm(dtype, monkeypatch):
    """In inference the conv block convolves without bias and normalises with ``running_mean - bias``: the values
    of BN(conv(x) + bias), written out here in float64 with the conv's bias."""
    gen = torch.Generator().manual_seed(0)
    block = ConvBlock(8).double().eval()
    with torch.no_grad():
        for name, t in block.state_dict().items():
            if t.is_floating_point():
                t.copy_(1 + 0.3 * torch.rand(t.shape, generator=gen, dtype=t.dtype) if name.endswith(('var', 'weight'))
                        and 'norm' in name else 0.3 * torch.randn(t.shape, generator=gen, dtype=t.dtype))
    x = torch.randn(2, 8, 9, 7, generator=gen, dtype=torch.float64)

    def conv_bn(conv, norm, t):
        t = F.conv2d(t, conv.weight, conv.bias, padding=1)
        return F.batch_norm(t, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0., norm.eps)

    expected = x + conv_bn(block.conv2, block.norm2,
                           F.gelu(conv_bn(block.conv1, block.norm1, x), approximate='tanh'))
    biases = []
    conv2d = F.conv2d
    monkeypatch.setattr(F, 'conv2d', lambda *a, **k: biases.append(a[2] if len(a) > 2 else k.get('bias'))
                        or conv2d(*a, **k))
    with torch.no_grad():
        if dtype == torch.float64:
            out = block(x)
        else:  # an fp32 model under autocast
            with torch.autocast('cpu', dtype=dtype):
                out = copy.deepcopy(block).float()(x.float())
    assert len(biases) == 2 and all(b is None for b in biases)
    if dtype == torch.float64:
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    else:
        assert (out.double() - expected).norm() / expected.norm() < 1e-2
    with torch.enable_grad():  # training's path: the conv adds its bias
        biases.clear()
        torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)
    assert len(biases) == 2 and all(b is not None for b in biases)


def test_folding_batchnorm_into_convolutions_keeps_the_outputs():
    """tools/analysis_tools/benchmark.py --fuse-conv-bn folds every BatchNorm (stem, conv blocks) into its
    convolution."""
    mmcv_cnn = pytest.importorskip('mmcv.cnn')
    torch.manual_seed(0)
    arch = dict(dim=16, in_dim=8, depths=(2, 1, 2, 2), num_heads=(1, 2, 2, 4))
    model = MambaVision(arch, window_size=(8, 8, 3, 2))
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(2, 3, 64, 64) * 2 + 0.5)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fused = mmcv_cnn.fuse_conv_bn(model)
        out = fused(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_torch_compile_traces_the_whole_backbone_without_a_graph_break():
    """torch.compile: dynamo traces the whole backbone, the scan as its custom op; values and grads unchanged."""
    import torch._dynamo as dynamo
    torch.manual_seed(0)
    arch = dict(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4))
    model = MambaVision(arch, window_size=(8, 8, 3, 2)).train()
    x = torch.randn(2, 3, 64, 64)
    dynamo.reset()
    explanation = dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    graph_ops = {str(node.target) for graph in explanation.graphs for node in graph.graph.nodes}
    assert any('selective_scan' in op for op in graph_ops), 'the scan op is not in the traced graph'

    dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', dynamic=False)
    torch.manual_seed(1)
    outs = model(x)
    sum(o.square().mean() for o in outs).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(1)
    outs_c = compiled(x)
    sum(o.square().mean() for o in outs_c).backward()
    for a, b in zip(outs_c, outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-4, atol=1e-6, msg=name)
