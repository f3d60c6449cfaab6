"""The backbone's fast paths against the float64 reference and the plain path: the last block of a padded window
stage computing only the image's tokens, the stages running channels_last, and compiled hybrid blocks."""
import pytest
import torch
import torch.nn.functional as F

from mmmambavision import MambaVision
from mmmambavision.models import layers, mixer
from float64_reference import reference_forward
from test_backbone import SMALL_ARCH, randomize_


def _outputs_and_grads(model, x, weights):
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    outs = model(x)
    sum((o * w).sum() for o, w in zip(outs, weights)).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], grads, x.grad.clone()


@pytest.mark.parametrize('window,size', [
    ((8, 8, 16, 8), (40, 30)),   # one window per image, padded on both axes: queries cropped to 3 x 2 (stage 3)
    ((8, 8, 3, 2), (61, 93)),    # several windows per image: the crop keeps whole windows along both axes
    ((8, 8, 4, 16), (27, 100)),  # stage 3: 2 x 7 windows; stage 4: one window across, cropped in height
])
@pytest.mark.parametrize('padded', [False, True])
def test_gradients_match_the_float64_reference(window, size, padded, monkeypatch):
    """Outputs and every gradient (parameters and input) of the train-mode backbone in float64 against autograd
    through the independent float64 reference; the last blocks' query crop is on (the default), and with
    ``padded`` its query count is rounded up (zero queries) and the mixers' sequences padded with zero tokens as on
    CUDA, here to multiples of 4 and 7 (no window here holds a multiple of 7 tokens)."""
    if padded:
        monkeypatch.setattr(layers, 'PAD_QUERIES_ON', ('cpu', ))
        monkeypatch.setattr(layers, 'QUERY_BUCKET', 4)
        monkeypatch.setattr(mixer, 'ALIGN_TOKENS_ON', ('cpu', ))
        monkeypatch.setattr(mixer, 'TOKEN_ALIGN', 7)
    model = randomize_(MambaVision(SMALL_ARCH, window_size=window, drop_path_rate=0.), seed=3).double().eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, *size, generator=gen, dtype=torch.float64)
    shapes = [o.shape for o in model(x)]
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    ours, grads, grad_x = _outputs_and_grads(model, x, weights)

    state = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in model.state_dict().items()}
    x_ref = x.clone().requires_grad_(True)
    ref = reference_forward(state, x_ref, model.arch['num_heads'], model.window_size, differentiable=True)
    sum((o * w).sum() for o, w in zip(ref, weights)).backward()
    for i, (a, b) in enumerate(zip(ours, ref)):
        _close(a, b.detach(), f'stage {i} output')
    _close(grad_x, x_ref.grad, 'input gradient')
    checked = 0
    for name, grad in grads.items():
        ref_grad = state[name].grad
        assert ref_grad is not None, f'{name}: the reference gives no gradient'
        _close(grad, ref_grad, name)
        checked += 1
    assert checked == len(list(model.parameters()))


def relative(a, b):
    """The norm of ``a - b`` relative to ``b``'s."""
    return ((a - b).norm() / b.norm()).item()


def bias_before_train_bn(name):
    """A convolution bias of stages 1-2, which train-mode BatchNorm follows: its gradient is zero up to rounding."""
    return name.startswith(('levels.0.', 'levels.1.')) and name.endswith(('conv1.bias', 'conv2.bias'))


def _close(a, b, what, tol=1e-4):
    """Relative to ``b``'s scale (the scan computes in fp32 whatever its inputs: float64 models agree to ~1e-6)."""
    rel = relative(a, b)
    worst = (a - b).abs().max() / b.abs().max()
    assert rel < tol and worst < tol, f'{what}: relative error {rel:.2e}, max {worst:.2e}'


def _attention_queries(model, x, monkeypatch):
    """The query lengths of every attention call in a forward."""
    lengths = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        lengths.append((q.shape[-2], k.shape[-2]))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    with torch.no_grad():
        outs = model(x)
    monkeypatch.setattr(F, 'scaled_dot_product_attention', sdpa)
    return lengths, outs


def test_last_block_asks_queries_only_for_image_tokens(monkeypatch):
    # 40 x 30 input: stage 3 is 3 x 2 in a 16 x 16 window (256 tokens), stage 4 is 2 x 1 in an 8 x 8 window.
    model = randomize_(MambaVision(SMALL_ARCH, window_size=(8, 8, 16, 8))).eval()
    x = torch.randn(2, 3, 40, 30)
    lengths, outs = _attention_queries(model, x, monkeypatch)
    # SMALL_ARCH: stages 3 and 4 have depths 3 and 2; the last block of each attends
    assert lengths == [(6, 256), (2, 64)]
    for level in model.levels:
        level.crop_last_block = False
    full_lengths, full = _attention_queries(model, x, monkeypatch)
    assert full_lengths == [(256, 256), (64, 64)]
    for a, b in zip(outs, full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_padded_query_counts(monkeypatch):
    """Where it pads (CUDA), the cropped attention rounds its query count up to QUERY_BUCKET's multiples, never past
    the window's tokens; elsewhere it asks exactly the image's tokens."""
    assert layers.padded_query_count(4200, torch.device('cpu')) == 4200
    assert layers.padded_query_count(4200, torch.device('cuda')) == 4608
    assert layers.padded_query_count(4096, torch.device('cuda')) == 4096
    monkeypatch.setattr(layers, 'PAD_QUERIES_ON', ('cpu', ))
    monkeypatch.setattr(layers, 'QUERY_BUCKET', 4)
    model = randomize_(MambaVision(SMALL_ARCH, window_size=(8, 8, 16, 8))).eval()
    x = torch.randn(2, 3, 40, 30)
    lengths, outs = _attention_queries(model, x, monkeypatch)
    assert lengths == [(8, 256), (4, 64)]  # 6 and 2 image tokens asked as 8 and 4
    monkeypatch.setattr(layers, 'QUERY_BUCKET', 1000)  # more than a window holds: capped at the window's 256 / 64
    capped, _ = _attention_queries(model, x, monkeypatch)
    assert capped == [(256, 256), (64, 64)]
    monkeypatch.setattr(layers, 'PAD_QUERIES_ON', ())
    plain, exact = _attention_queries(model, x, monkeypatch)
    assert plain == [(6, 256), (2, 64)]
    for a, b in zip(outs, exact):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mixer_aligns_its_sequence(monkeypatch):
    """Where it aligns (CUDA), the mixer runs on its tokens followed by zero tokens up to TOKEN_ALIGN's multiple and
    returns the real tokens' rows: the scan sees the padded length, the output equals the unpadded mixer's."""
    assert mixer.aligned_length(49, torch.device('cpu')) == 49
    assert mixer.aligned_length(49, torch.device('cuda')) == 56
    assert mixer.aligned_length(196, torch.device('cuda')) == 200
    assert mixer.aligned_length(12544, torch.device('cuda')) == 12544
    torch.manual_seed(0)
    module = mixer.MambaVisionMixer(16).double().eval()
    x = torch.randn(3, 49, 16, dtype=torch.float64)
    seen = []
    scan = mixer.selective_scan
    monkeypatch.setattr(mixer, 'selective_scan', lambda u, *a, **k: seen.append(u.shape[-1]) or scan(u, *a, **k))
    plain = module(x)
    monkeypatch.setattr(mixer, 'ALIGN_TOKENS_ON', ('cpu', ))
    padded = module(x)
    assert seen == [49, 56]
    assert padded.shape == plain.shape == (3, 49, 16)
    torch.testing.assert_close(padded, plain, rtol=1e-12, atol=1e-12)


def test_mixer_inference_folds_dt_proj_into_x_proj(monkeypatch):
    """Without autograd the mixer gets delta, B and C from one matmul (dt_proj's weight multiplied into x_proj's dt
    rows): a batched matmul fewer than training's path, the float64 reference's outputs, and a weight update (the
    folded weight is cached) is followed."""
    from float64_reference import _mixer as reference_mixer
    torch.manual_seed(0)
    module = mixer.MambaVisionMixer(64).eval()
    with torch.no_grad():
        for p in module.parameters():  # weights of trained magnitude, not the tiny init
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 40, 64)
    calls = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, 'bmm', lambda *a: calls.append(1) or bmm(*a))

    def check(step):
        sd = {k: v.double() for k, v in module.state_dict().items()}
        want = reference_mixer(x.double(), sd, '')
        calls.clear()
        with torch.no_grad():
            got = module(x)
        inference_calls = len(calls)
        calls.clear()
        trained = module(x)
        assert (inference_calls, len(calls)) == (3, 4), step  # + the baddbmm of out_proj's second half
        for out in (got, trained):
            rel = ((out.double() - want).abs().max() / want.abs().max()).item()
            assert rel < 1e-5, f'{step}: {rel:.2e}'

    check('initial weights')
    with torch.no_grad():
        module.dt_proj.weight.mul_(-1.5)
        module.x_proj.weight[:module.dt_rank].add_(0.2)
    check('after an in-place update of dt_proj and x_proj')


@pytest.mark.parametrize('channels_last', [False, True])
def test_outputs_keep_the_input_layout(channels_last):
    model = MambaVision(SMALL_ARCH, window_size=(8, 8, 16, 8)).eval()
    x = torch.randn(1, 3, 40, 30)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        outs = model(x.contiguous(memory_format=fmt))
        other = model(x.contiguous(memory_format=torch.contiguous_format if channels_last else torch.channels_last))
    for out, out_other in zip(outs, other):
        assert out.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(out, out_other, rtol=1e-5, atol=1e-6)


def test_compile_argument_is_checked():
    with pytest.raises(TypeError, match='compile must be a bool or a dict'):
        MambaVision(SMALL_ARCH, compile='yes')
    with pytest.raises(ValueError, match=r"compile\['stages'\] must be stage indices in 0..3"):
        MambaVision(SMALL_ARCH, compile=dict(stages=(2, 4)))


def test_compile_selects_the_stages():
    model = MambaVision(SMALL_ARCH, compile=dict(stages=(1, 3), mode='max-autotune-no-cudagraphs'))
    assert [level.compile_options for level in model.levels] == [
        None, dict(mode='max-autotune-no-cudagraphs'), None, dict(mode='max-autotune-no-cudagraphs')]
    assert [level.compile_options for level in MambaVision(SMALL_ARCH, compile=True).levels] == [None, None, {}, {}]
    assert all(level.compile_options is None for level in MambaVision(SMALL_ARCH).levels)


@pytest.mark.parametrize('options,splits', [
    (dict(mode='reduce-overhead'), False), (dict(options={'triton.cudagraphs': True}), False),
    (dict(mode='max-autotune-no-cudagraphs'), True), (dict(), True)])
def test_stages_recording_cuda_graphs_are_compiled_without_ddp_graph_splitting(monkeypatch, options, splits):
    """Compiled stages that record CUDA graphs run with dynamo's DDP optimizer off (it is read when dynamo compiles,
    inside the call): inside a DistributedDataParallel forward it would split each graph at DDP's bucket boundaries,
    which failed with CUDA graphs. Other compile settings keep dynamo's default. (torch.compile is replaced by a
    recorder of the setting; the compiled stages' numerics are the other tests'.)"""
    seen = []

    def recording_compile(fn, **kwargs):
        def run(*args):
            seen.append(torch._dynamo.config.optimize_ddp)
            return fn(*args)
        return run

    monkeypatch.setattr(torch, 'compile', recording_compile)
    model = MambaVision(SMALL_ARCH, window_size=(8, 8, 16, 8), drop_path_rate=0., compile=options).train()
    with torch._dynamo.config.patch(optimize_ddp=True):
        model(torch.randn(1, 3, 40, 30))
        assert torch._dynamo.config.optimize_ddp is True  # restored after each call
    assert len(seen) == 2 and all(value is splits for value in seen), seen


@pytest.mark.parametrize('window,size', [
    ((8, 8, 16, 8), (40, 30)),
    pytest.param((8, 8, None, None), (40, 30), marks=pytest.mark.slow),  # ~30 s a compile on 2 cores
])
def test_compiled_blocks_match_eager(window, size):
    """``compile=`` (aot_eager here: the traced graph run by eager kernels; inductor is in the slow tier) gives the
    eager outputs and gradients in float64."""
    torch._dynamo.reset()
    eager = randomize_(MambaVision(SMALL_ARCH, window_size=window, drop_path_rate=0.)).double().train()
    compiled = randomize_(MambaVision(SMALL_ARCH, window_size=window, drop_path_rate=0.,
                                      compile=dict(backend='aot_eager', stages=(0, 1, 2, 3)))).double().train()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, *size, generator=gen, dtype=torch.float64)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in eager(x)]
    out_e, grads_e, gx_e = _outputs_and_grads(eager, x, weights)
    out_c, grads_c, gx_c = _outputs_and_grads(compiled, x, weights)
    assert all(level._compiled_blocks for level in compiled.levels)
    for a, b in zip(out_c, out_e):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx_c, gx_e, rtol=1e-9, atol=1e-12)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-9, atol=1e-12, msg=lambda m: f'{name}: {m}')


@pytest.mark.slow
def test_inductor_compiled_blocks_match_the_float64_reference():
    torch._dynamo.reset()
    model = randomize_(MambaVision(SMALL_ARCH, window_size=(8, 8, 16, 8), compile=True), seed=6).eval()
    x = torch.randn(1, 3, 40, 30, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours = model(x)
    ref = reference_forward(model.state_dict(), x.double(), model.arch['num_heads'], model.window_size)
    for a, b in zip(ours, ref):
        rel = (a.double() - b).norm() / b.norm()
        assert rel < 1e-4, f'relative error {rel:.2e}'


@pytest.mark.slow
def test_inductor_compiled_blocks_under_bf16_autocast_are_as_accurate_as_eager():
    """Train mode under bf16 autocast: the inductor-compiled hybrid blocks are as close to the fp32 eager
    reference as eager bf16 is, outputs and every gradient (LayerNorm-bias gradients before attention are
    near-cancelling sums: eager bf16 itself is tens of percent off there)."""
    torch._dynamo.reset()
    model = randomize_(MambaVision(SMALL_ARCH, window_size=(8, 8, 16, 8), drop_path_rate=0.), seed=7).train()
    compiled = randomize_(MambaVision(SMALL_ARCH, window_size=(8, 8, 16, 8), drop_path_rate=0., compile=True),
                          seed=7).train()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 72, 56, generator=gen)
    weights = [torch.randn(o.shape, generator=gen) for o in model(x)]

    def step(m, half):
        m.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=half):
            outs = m(x)
        sum((o.float() * w).sum() for o, w in zip(outs, weights)).backward()
        return [o.detach().float() for o in outs], {n: p.grad.clone() for n, p in m.named_parameters()}

    out_ref, grads_ref = step(model, False)
    out_eager, grads_eager = step(model, True)
    out_comp, grads_comp = step(compiled, True)

    rel = relative
    for i, (c, e, r) in enumerate(zip(out_comp, out_eager, out_ref)):
        assert rel(c, r) < max(1e-3, 2 * rel(e, r)), f'stage {i}: {rel(c, r):.2e} vs eager {rel(e, r):.2e}'
    for name, ref in grads_ref.items():
        if bias_before_train_bn(name):
            continue
        assert rel(grads_comp[name], ref) < max(1e-3, 2 * rel(grads_eager[name], ref)), (
            f'{name}: {rel(grads_comp[name], ref):.2e} vs eager {rel(grads_eager[name], ref):.2e}')


@pytest.mark.parametrize('depths', [(1, 1, 1, 1), (1, 1, 2, 3)])
def test_crop_with_a_mixer_or_a_single_block_last(depths):
    """A stage of one block (a mixer: the crop then selects the mixer's output rows, on the windows as cut) and
    odd depths give what the plain path gives, outputs and gradients (float64)."""
    arch = dict(SMALL_ARCH, depths=depths)
    model = randomize_(MambaVision(arch, window_size=(8, 8, 16, 8), drop_path_rate=0.), seed=8).double().train()
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 40, 30, generator=gen, dtype=torch.float64)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in model(x)]
    out_c, grads_c, gx_c = _outputs_and_grads(model, x, weights)
    for level in model.levels:
        level.crop_last_block = False
    out_p, grads_p, gx_p = _outputs_and_grads(model, x, weights)
    for a, b in zip(out_c, out_p):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx_c, gx_p, rtol=1e-9, atol=1e-12)
    for name in grads_p:
        torch.testing.assert_close(grads_c[name], grads_p[name], rtol=1e-8, atol=1e-12, msg=lambda m: f'{name}: {m}')
