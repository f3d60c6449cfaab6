"""Selective scan on CUDA: Triton kernels and mamba-ssm's selective_scan_cuda vs float64 and each other.

Skipped without CUDA; the cuda-kernel comparisons are skipped where ``selective_scan_cuda`` does not import, the
Triton ones where Triton does not. Run with ``-s`` to see the error table.
"""
import pytest
import torch

from mmmambavision.ops import selected_backend, selective_scan, selective_scan_reference
from mmmambavision.ops.selective_scan import cuda_kernel_available, triton_available

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

needs_cuda_kernel = pytest.mark.skipif(not torch.cuda.is_available() or not cuda_kernel_available(),
                                       reason='selective_scan_cuda (mamba-ssm) is not built')
needs_triton = pytest.mark.skipif(not torch.cuda.is_available() or not triton_available(),
                                  reason='triton is not installed')

# max |got - want| / max |want| vs float64 on the same (rounded) inputs; the CUDA kernel uses fast math
TOLERANCE = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# MambaVision-T: classification stage 3 (window 14) and 4 (window 7) for 128 images; detection windows (bs 2)
REAL_SHAPES = [(128, 160, 196), (128, 320, 49), (2, 160, 12544), (2, 320, 3136)]


def make_inputs(shape, dtype, dstate=8, groups=None, seed=0):
    batch, dim, length = shape
    gen = torch.Generator().manual_seed(seed)
    bc_shape = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)
    x = dict(u=torch.randn(batch, dim, length, generator=gen),
             delta=torch.randn(batch, dim, length, generator=gen) * 0.5,
             A=-torch.exp(torch.rand(dim, dstate, generator=gen) * 2.7),
             B=torch.randn(bc_shape, generator=gen), C=torch.randn(bc_shape, generator=gen),
             D=torch.randn(dim, generator=gen), delta_bias=torch.rand(dim, generator=gen) * 4 - 6)
    for k in ('u', 'delta', 'B', 'C'):
        x[k] = x[k].to(dtype)
    return {k: v.cuda() for k, v in x.items()}


def relative_error(got, want):
    """Max error relative to the reference's largest magnitude; absolute where the reference is exactly 0.

    (dA at L=1 is exactly 0: h_{-1} = 0, so any rounding would make a relative error meaningless.)"""
    scale = want.double().abs().max()
    error = (got.double() - want.double()).abs().max()
    return (error / scale if scale > 0 else error).item()


def float64_truth(inputs, grad_out, **kwargs):
    """Values and last state from the sequential loop; gradients from autograd through it."""
    leaves = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
    y, last = selective_scan_reference(**leaves, return_last_state=True, **kwargs)
    grads = torch.autograd.grad(y, list(leaves.values()), grad_out.double())
    return y.detach(), last, dict(zip(leaves, grads))


def run_backend(backend, inputs, grad_out, **kwargs):
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y, last = selective_scan(**leaves, return_last_state=True, backend=backend, **kwargs)
    assert y.dtype == inputs['u'].dtype and last.dtype == torch.float32
    grads = torch.autograd.grad(y, list(leaves.values()), grad_out.to(y.dtype))
    for name, grad in zip(leaves, grads):
        assert grad.dtype == leaves[name].dtype and grad.shape == leaves[name].shape, name
    return y.detach(), last, dict(zip(leaves, grads))


def errors(result, truth):
    y, last, grads = result
    out = {'y': relative_error(y, truth[0]), 'last_state': relative_error(last, truth[1])}
    out.update({f'd{k}': relative_error(g, truth[2][k]) for k, g in grads.items()})
    return out


def assert_close_to(result, truth, tolerance, label):
    y, _, grads = result
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads.values()), label
    errs = errors(result, truth)
    worst = max(errs, key=errs.get)
    print(f'{label}: worst {worst} {errs[worst]:.2e}')
    assert errs[worst] <= tolerance, (label, errs)


@pytest.mark.parametrize('dtype', DTYPES, ids=lambda d: str(d).split('.')[-1])
@pytest.mark.parametrize('shape', REAL_SHAPES, ids=lambda s: 'x'.join(map(str, s)))
def test_triton_and_cuda_kernel_match_float64_and_each_other(shape, dtype):
    backends = [b for b, ok in (('triton', triton_available()), ('cuda', cuda_kernel_available())) if ok]
    if not backends:
        pytest.skip('neither triton nor selective_scan_cuda is available')
    inputs = make_inputs(shape, dtype)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).cuda().to(dtype)
    truth = float64_truth(inputs, grad_out, delta_softplus=True)
    results = {}
    for backend in backends:
        results[backend] = run_backend(backend, inputs, grad_out, delta_softplus=True)
        assert_close_to(results[backend], truth, TOLERANCE[dtype], f'{backend} {shape} {dtype}')
    if len(results) == 2:
        triton_result, cuda_result = results['triton'], results['cuda']
        agreement = errors(triton_result, (cuda_result[0].double(), cuda_result[1],
                                           {k: g.double() for k, g in cuda_result[2].items()}))
        worst = max(agreement, key=agreement.get)
        assert agreement[worst] <= TOLERANCE[dtype], ('triton vs cuda', agreement)


@needs_triton
@pytest.mark.parametrize('variant', ['d_state_16', 'd_state_3', 'grouped', 'z_gate', 'no_softplus_no_bias_no_D',
                                     'time_invariant_B_C', 'stress'])
def test_triton_variants_match_float64(variant):
    kwargs = dict(delta_softplus=True)
    shape = (3, 24, 1000)
    if variant == 'd_state_16':
        inputs = make_inputs(shape, torch.float32, dstate=16)
    elif variant == 'd_state_3':
        inputs = make_inputs(shape, torch.float32, dstate=3)
    elif variant == 'grouped':
        inputs = make_inputs(shape, torch.float32, groups=4)
    elif variant == 'z_gate':
        inputs = make_inputs(shape, torch.float32)
        inputs['z'] = torch.randn(shape, device='cuda')
    elif variant == 'no_softplus_no_bias_no_D':
        inputs = make_inputs(shape, torch.float32)
        inputs['delta'] = inputs['delta'].abs()
        inputs['D'] = inputs['delta_bias'] = None
        inputs = {k: v for k, v in inputs.items() if v is not None}
        kwargs['delta_softplus'] = False
    elif variant == 'time_invariant_B_C':
        inputs = make_inputs(shape, torch.float32)
        inputs['B'] = torch.randn(24, 8, device='cuda')
        inputs['C'] = torch.randn(24, 8, device='cuda')
    else:
        inputs = make_inputs(shape, torch.float32)
        inputs['delta'] = inputs['delta'] * 20
        inputs['delta_bias'] = torch.linspace(-2, 20, 24, device='cuda')
        inputs['A'] = -torch.rand(24, 8, device='cuda') * 30
    grad_out = torch.randn(shape, device='cuda')
    truth = float64_truth(inputs, grad_out, **kwargs)
    assert_close_to(run_backend('triton', inputs, grad_out, **kwargs), truth, 1e-4, f'triton {variant}')


@needs_triton
@pytest.mark.parametrize('length', [1, 7, 49, 196, 257, 2049, 4096])
def test_triton_lengths_match_float64(length):
    inputs = make_inputs((2, 16, length), torch.float32)
    grad_out = torch.randn((2, 16, length), device='cuda')
    truth = float64_truth(inputs, grad_out, delta_softplus=True)
    assert_close_to(run_backend('triton', inputs, grad_out, delta_softplus=True), truth, 1e-4,
                    f'triton L={length}')


# Triton kernel settings (mmmambavision.ops.triton.kernel_settings) at real shapes: a classification and a
# detection window
TRITON_CONFIGS = {
    'state-atomic': dict(BLOCK_D=4, BLOCK_T=256, num_warps=4, bc='atomic'),
    'state-partial': dict(BLOCK_D=2, BLOCK_T=512, num_warps=4, bc='partial'),
    'state-long': dict(BLOCK_D=1, BLOCK_T=2048, num_warps=8, bc='atomic', BWD_T=0),
    'state-loop': dict(BLOCK_D=1, BLOCK_T=256, num_warps=1, UNROLL=1),
    'state-unrolled': dict(BLOCK_D=1, BLOCK_T=256, num_warps=1, UNROLL=8),
    'state-split': dict(BLOCK_D=1, BLOCK_T=2048, num_warps=8, BWD_T=256),
    'state-split-D2': dict(BLOCK_D=2, BLOCK_T=1024, num_warps=8, BWD_T=128, bwd_warps=1, bc='partial'),
}
_truth_cache = {}


@needs_triton
@pytest.mark.parametrize('config', list(TRITON_CONFIGS))
@pytest.mark.parametrize('shape', [(128, 160, 196), (2, 320, 3136)], ids=lambda s: 'x'.join(map(str, s)))
def test_triton_configs_match_float64(shape, config):
    from mmmambavision.ops.triton import kernel_settings
    if shape not in _truth_cache:
        inputs = make_inputs(shape, torch.float32)
        grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).cuda()
        _truth_cache.clear()
        _truth_cache[shape] = (inputs, grad_out, float64_truth(inputs, grad_out, delta_softplus=True))
    inputs, grad_out, truth = _truth_cache[shape]
    with kernel_settings(**TRITON_CONFIGS[config]):
        result = run_backend('triton', inputs, grad_out, delta_softplus=True)
    assert_close_to(result, truth, TOLERANCE[torch.float32], f'triton {config} {shape}')


@needs_cuda_kernel
def test_cuda_kernel_z_gate_and_last_state_match_float64():
    shape = (2, 32, 3000)  # two of the kernel's 2048-step chunks: last state comes from the last one
    inputs = make_inputs(shape, torch.float32)
    inputs['z'] = torch.randn(shape, device='cuda')
    grad_out = torch.randn(shape, device='cuda')
    truth = float64_truth(inputs, grad_out, delta_softplus=True)
    assert_close_to(run_backend('cuda', inputs, grad_out, delta_softplus=True), truth, TOLERANCE[torch.float32],
                    'cuda z gate')


@needs_cuda_kernel
def test_cuda_kernel_last_state_with_time_invariant_B_C_matches_float64():
    """(d, n) B and C: the kernel keeps h / B as its state (B is applied at the output); h_L must be h."""
    shape = (2, 24, 3000)
    inputs = make_inputs(shape, torch.float32)
    inputs['B'] = torch.randn(24, 8, device='cuda')
    inputs['C'] = torch.randn(24, 8, device='cuda')
    grad_out = torch.randn(shape, device='cuda')
    truth = float64_truth(inputs, grad_out, delta_softplus=True)
    assert_close_to(run_backend('cuda', inputs, grad_out, delta_softplus=True), truth, TOLERANCE[torch.float32],
                    'cuda time-invariant B/C')


def test_auto_backend_on_cuda_prefers_the_compiled_kernel_then_triton():
    expected = 'cuda' if cuda_kernel_available() else 'triton' if triton_available() else 'torch'
    assert selected_backend('cuda') == expected


def test_torch_backend_runs_on_cuda_tensors():
    inputs = make_inputs((2, 16, 300), torch.bfloat16)
    grad_out = torch.randn((2, 16, 300), device='cuda')
    truth = float64_truth(inputs, grad_out, delta_softplus=True)
    assert_close_to(run_backend('torch', inputs, grad_out, delta_softplus=True), truth,
                    TOLERANCE[torch.bfloat16], 'torch on cuda bf16')


def mixer_views(shape, dtype, dstate=8, rank=10, seed=0):
    """Parents and a function cutting the scan inputs from them as the mixer does: u = xz[:, :d] of a
    (b, 2d, L) tensor, B and C slices of x_dbl (b, R + 2n, L) -- views the Triton kernels read in place."""
    batch, dim, length = shape
    gen = torch.Generator().manual_seed(seed)
    parents = dict(xz=torch.randn(batch, 2 * dim, length, generator=gen).to(dtype),
                   x_dbl=torch.randn(batch, rank + 2 * dstate, length, generator=gen).to(dtype),
                   delta=(torch.randn(batch, dim, length, generator=gen) * 0.5).to(dtype),
                   A=-torch.exp(torch.rand(dim, dstate, generator=gen) * 2.7),
                   D=torch.randn(dim, generator=gen), delta_bias=torch.rand(dim, generator=gen) * 4 - 6)
    parents = {k: v.cuda() for k, v in parents.items()}

    def cut(p):
        return dict(u=p['xz'][:, :dim], delta=p['delta'], A=p['A'], B=p['x_dbl'][:, rank:rank + dstate],
                    C=p['x_dbl'][:, rank + dstate:], D=p['D'], delta_bias=p['delta_bias'])
    return parents, cut


@needs_triton
@pytest.mark.parametrize('dtype', DTYPES, ids=lambda d: str(d).split('.')[-1])
@pytest.mark.parametrize('config', ['default', 'state-atomic', 'state-split'])
@pytest.mark.parametrize('shape', [(16, 160, 196), (2, 80, 3136)], ids=lambda s: 'x'.join(map(str, s)))
def test_triton_reads_mixer_views_in_place_and_grads_reach_the_parents(shape, config, dtype):
    from mmmambavision.ops.triton import kernel_settings
    parents, cut = mixer_views(shape, dtype)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).cuda().to(dtype)
    leaves64 = {k: v.double().requires_grad_(True) for k, v in parents.items()}
    y_ref, last_ref = selective_scan_reference(**cut(leaves64), return_last_state=True, delta_softplus=True)
    grads_ref = torch.autograd.grad(y_ref, list(leaves64.values()), grad_out.double())
    with kernel_settings(**TRITON_CONFIGS.get(config, {})):
        leaves = {k: v.clone().requires_grad_(True) for k, v in parents.items()}
        y, last = selective_scan(**cut(leaves), return_last_state=True, backend='triton', delta_softplus=True)
        grads = torch.autograd.grad(y, list(leaves.values()), grad_out)
    for name, grad in zip(leaves, grads):
        assert grad.dtype == leaves[name].dtype and grad.shape == leaves[name].shape, name
    assert_close_to((y.detach(), last, dict(zip(leaves, grads))),
                    (y_ref.detach(), last_ref, dict(zip(leaves, grads_ref))), TOLERANCE[dtype],
                    f'triton views {config} {shape} {dtype}')


@needs_triton
@pytest.mark.parametrize('config', ['default', 'state-atomic'])
def test_triton_inference_path_matches_the_gradient_path(config):
    """Without gradients the forward runs outside the autograd Function and stores no checkpoints: same y, h_L."""
    from mmmambavision.ops.triton import kernel_settings
    parents, cut = mixer_views((32, 160, 196), torch.float16)
    with kernel_settings(**TRITON_CONFIGS.get(config, {})):
        leaves = {k: v.clone().requires_grad_(True) for k, v in parents.items()}
        y_grad, last_grad = selective_scan(**cut(leaves), return_last_state=True, backend='triton',
                                           delta_softplus=True)
        with torch.inference_mode():
            y, last = selective_scan(**cut(parents), return_last_state=True, backend='triton', delta_softplus=True)
    assert y_grad.requires_grad and not y.requires_grad
    assert torch.equal(y, y_grad.detach()) and torch.equal(last, last_grad)


@needs_triton
@pytest.mark.parametrize('shape,dtype', [((2, 320, 3136), torch.float16), ((128, 160, 196), torch.bfloat16),
                                         ((128, 320, 49), torch.float32)], ids=['split-fp16', 'bf16', 'D4-fp32'])
def test_triton_direct_launches_match_jit_launches(shape, dtype):
    """The Triton backend's launcher calls the compiled kernels' launchers itself from the second launch of a
    specialisation on: the same results as launches through JITFunction (y, h_L, du, ddelta bit for bit; dA, dB,
    dC, dD and dbias are atomic sums, equal up to their order), and every kernel of the call goes that way."""
    from mmmambavision.ops.triton import launcher
    inputs = make_inputs(shape, dtype)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(dtype).cuda()
    results = {}
    try:
        for direct in (False, True):
            launcher.enabled = direct
            launcher.clear()
            for _ in range(2):  # the first launch of each specialisation goes through JITFunction either way
                results[direct] = run_backend('triton', inputs, grad_out, delta_softplus=True)
            if direct:
                entries = list(launcher.cache.values())
                names = sorted(key[0].__name__ for key in launcher.cache)
    finally:
        launcher.enabled = True
    expected = ['state_bwd_kernel', 'state_fwd_kernel'] + (['state_carry_kernel'] if shape[2] > 512 else [])
    assert names == sorted(expected) and all(entries), (names, entries)
    (y0, last0, g0), (y1, last1, g1) = results[False], results[True]
    assert torch.equal(y0, y1) and torch.equal(last0, last1)
    for name in g0:
        if name in ('u', 'delta'):
            assert torch.equal(g0[name], g1[name]), name
        else:
            assert relative_error(g1[name], g0[name]) < (1e-5 if dtype == torch.float32 else 1e-2), name


# --- torch.compile through the custom ops (mmmambavision/ops/custom_op.py) ---------------------------------------

def compile_backend_marks(backend):
    return [needs_cuda_kernel] if backend == 'cuda' else [needs_triton]


COMPILE_BACKENDS = [pytest.param(b, marks=compile_backend_marks(b)) for b in ('cuda', 'triton')]
OP_LAYOUTS = {'bnl': None, 'bgnl': 2, 'dn': 'dn'}


def op_inputs(shape, dtype, layout='bnl', z=True, seed=0):
    """The scan's inputs with B/C (b, n, L), (b, g, n, L) or time-invariant (d, n) (fp32), and a z gate."""
    groups = OP_LAYOUTS[layout]
    inputs = make_inputs(shape, dtype, groups=None if groups == 'dn' else groups, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    if groups == 'dn':
        inputs['B'] = torch.randn(shape[1], 8, generator=gen).cuda()
        inputs['C'] = torch.randn(shape[1], 8, generator=gen).cuda()
    if z:
        inputs['z'] = torch.randn(shape, generator=gen).to(dtype).cuda()
    return inputs


def compiled_scan(backend, inputs, grad_out, **kwargs):
    """y, h_L and the input gradients of the scan compiled with inductor, fullgraph (a graph break would raise)."""
    torch.compiler.reset()

    def fn(**leaves):
        return selective_scan(**leaves, return_last_state=True, backend=backend, **kwargs)

    compiled = torch.compile(fn, backend='inductor', fullgraph=True)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y, last = compiled(**leaves)
    assert y.dtype == inputs['u'].dtype and last.dtype == torch.float32 and not last.requires_grad
    grads = torch.autograd.grad(y, list(leaves.values()), grad_out.to(y.dtype))
    for name, grad in zip(leaves, grads):
        assert grad.dtype == leaves[name].dtype and grad.shape == leaves[name].shape, name
    return y.detach(), last, dict(zip(leaves, grads))


@pytest.mark.parametrize('dtype', [torch.float16, torch.float32], ids=lambda d: str(d).split('.')[-1])
@pytest.mark.parametrize('shape,layout', [((16, 160, 196), 'bnl'), ((16, 160, 196), 'bgnl'),
                                          ((16, 160, 196), 'dn'), ((2, 64, 3000), 'bnl')],
                         ids=['16x160x196-bnl', '16x160x196-bgnl', '16x160x196-dn', '2x64x3000-bnl'])
@pytest.mark.parametrize('backend', COMPILE_BACKENDS)
def test_inductor_compiled_scan_matches_eager_and_float64(backend, shape, layout, dtype):
    """Compiled through the custom ops: outputs and every input's gradient vs the eager call of the same backend
    and vs float64 (L = 3000: two of the cuda kernel's 2048-step chunks, Triton's chunk-parallel backward)."""
    inputs = op_inputs(shape, dtype, layout)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).cuda().to(dtype)
    compiled = compiled_scan(backend, inputs, grad_out, delta_softplus=True)
    eager = run_backend(backend, inputs, grad_out, delta_softplus=True)
    label = f'{backend} compiled {shape} {layout} {dtype}'
    assert_close_to(compiled, float64_truth(inputs, grad_out, delta_softplus=True), TOLERANCE[dtype], label)
    assert_close_to(compiled, (eager[0].double(), eager[1], {k: g.double() for k, g in eager[2].items()}),
                    TOLERANCE[dtype], label + ' vs eager')


@pytest.mark.parametrize('backend', COMPILE_BACKENDS)
def test_inductor_compiled_scan_without_options_and_without_grad(backend, shape=(8, 96, 196)):
    inputs = op_inputs(shape, torch.float16, z=False)
    inputs.pop('D'), inputs.pop('delta_bias')
    inputs['delta'] = inputs['delta'].abs()  # no softplus: keep Δ·A ≤ 0
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).cuda().half()
    compiled = compiled_scan(backend, inputs, grad_out)
    assert_close_to(compiled, float64_truth(inputs, grad_out), TOLERANCE[torch.float16], f'{backend} plain')
    torch.compiler.reset()
    with torch.no_grad():
        y, last = torch.compile(lambda **x: selective_scan(**x, return_last_state=True, backend=backend),
                                backend='inductor', fullgraph=True)(**inputs)
    torch.testing.assert_close(y, compiled[0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(last, compiled[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('dtype', [torch.float16, torch.float32], ids=lambda d: str(d).split('.')[-1])
@pytest.mark.parametrize('layout', list(OP_LAYOUTS))
@pytest.mark.parametrize('backend', COMPILE_BACKENDS)
def test_opcheck_scan_ops_on_cuda(backend, layout, dtype):
    """Fake kernels against the real ones on the GPU: shapes, dtypes and strides of y, h_L, the cuda backend's
    chunk states (two 2048-step chunks here) or Triton's checkpoints, the ungated output, every gradient. The
    tolerances cover the order of the kernels' atomic sums, which differs from run to run."""
    from mmmambavision.ops.custom_op import selective_scan_bwd, selective_scan_fwd
    inputs = op_inputs((2, 32, 2100), dtype, layout)
    names = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')
    tolerance = dict(rtol=2e-2, atol=2e-2) if dtype == torch.float16 else dict(rtol=1e-3, atol=1e-3)
    args = tuple(inputs[k].clone().requires_grad_(True) for k in names)
    torch.library.opcheck(selective_scan_fwd, args + (True, backend, True), **tolerance)
    detached = tuple(t.detach() for t in args)
    torch.library.opcheck(selective_scan_fwd, detached + (True, backend, False), **tolerance)
    y, _, state, pre_gate = selective_scan_fwd(*detached, True, backend, True)
    torch.library.opcheck(selective_scan_bwd, (torch.randn_like(y),) + detached + (state, pre_gate, True, backend,
                                                                                   [True] * 8), **tolerance)


@pytest.mark.parametrize('dtype', [torch.float16, torch.float32], ids=lambda d: str(d).split('.')[-1])
@pytest.mark.parametrize('backend', COMPILE_BACKENDS)
def test_mixer_compiles_without_graph_break_and_matches_eager(backend, dtype, monkeypatch):
    from mmmambavision.models.mixer import MambaVisionMixer
    monkeypatch.setenv('MMMV_SCAN_BACKEND', backend)
    torch.manual_seed(0)
    mixer = MambaVisionMixer(160).cuda().to(dtype)
    x = torch.randn(8, 196, 160, device='cuda', dtype=dtype)
    torch.compiler.reset()
    explanation = torch._dynamo.explain(mixer)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    torch.compiler.reset()
    compiled = torch.compile(mixer, backend='inductor', fullgraph=True)
    out = compiled(x)
    out.float().square().mean().backward()
    grads = {n: p.grad.clone() for n, p in mixer.named_parameters()}
    mixer.zero_grad()
    ref = mixer(x)
    ref.float().square().mean().backward()
    tolerance = TOLERANCE[dtype]
    assert relative_error(out, ref) <= tolerance
    for name, p in mixer.named_parameters():
        assert relative_error(grads[name], p.grad) <= 5 * tolerance, name
