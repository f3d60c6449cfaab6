"""The Triton scan kernels' logic on CPU, run by the Triton interpreter, against the float64 loop.

``@triton.jit`` returns an interpreted kernel only if ``TRITON_INTERPRET=1`` is set when it decorates, and Triton's
own jit functions (``tl.sum``, ``tl.cumsum``, ``tl.zeros``, ``tl.cdiv``) are interpreted only if it was set when
``triton.language`` was imported; but other test modules need the kernels compiled-mode in the same process
(test_triton_layout compiles them for sm_90). So the ``interpreted_kernels`` fixture executes a second copy of
``mmmambavision/ops/triton/kernels.py`` under another module name with the variable set (its kernels and jit
helpers are interpreted), and gives that copy a ``tl`` that is ``triton.language`` except that Triton's jit
functions are their plain Python bodies, which run on the interpreter's tensors. The copy also holds
``triton.language`` and ``triton.language.core`` themselves, so that the interpreter patches both for a kernel's
run and restores them afterwards. The package's own ``kernels`` module stays compiled-mode; the scan runs the
copy through ``use_kernels``. The variable stays set during each test: the dispatcher accepts CPU tensors for
backend 'triton' only under it.

A few cases (fast tier) cover the forward and backward at the default config, the chunk-parallel backward, grouped
B/C, with and without D/bias/softplus, views read in place and the inference path; the full sweep is ``slow``.
"""
import importlib.util
import os
import types
from contextlib import contextmanager

import pytest
import torch

pytest.importorskip('triton')
import triton.language as tl  # noqa: E402
# imported here, at collection, never under TRITON_INTERPRET: the package's kernels stay compiled-mode
from mmmambavision.ops import selective_scan, selective_scan_reference  # noqa: E402
from mmmambavision.ops.triton import function, kernel_settings, kernels, use_kernels  # noqa: E402

TOLERANCE = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
DTYPE_NAMES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}
KERNEL_NAMES = ('state_fwd_kernel', 'state_bwd_kernel', 'state_carry_kernel')


class InterpretedLanguage(types.ModuleType):
    """``triton.language`` as an interpreted kernel sees it: Triton's jit functions as their Python bodies
    (attributes looked up at each use: the interpreter patches the builtins for a kernel's run)."""

    def __init__(self):
        super().__init__('triton.language (interpreted)')

    def __getattr__(self, name):
        from triton.runtime.jit import JITFunction
        value = getattr(tl, name)
        return value.fn if isinstance(value, JITFunction) else value


@pytest.fixture(scope='module')
def interpreted_kernels():
    """A copy of the kernels module executed with TRITON_INTERPRET=1: every @triton.jit in it is interpreted."""
    from triton.runtime.interpreter import InterpretedFunction
    spec = importlib.util.spec_from_file_location('mmmambavision_interpreted_scan_kernels', kernels.__file__)
    module = importlib.util.module_from_spec(spec)
    saved = os.environ.get('TRITON_INTERPRET')
    os.environ['TRITON_INTERPRET'] = '1'
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del os.environ['TRITON_INTERPRET']
        else:
            os.environ['TRITON_INTERPRET'] = saved
    module.tl = InterpretedLanguage()
    module.triton_language, module.triton_language_core = tl, tl.core  # patched and restored per kernel run
    assert all(isinstance(getattr(module, name), InterpretedFunction) for name in KERNEL_NAMES)
    assert not isinstance(kernels.state_fwd_kernel, InterpretedFunction)  # the package's own copy: compiled
    return module


@pytest.fixture(autouse=True)
def interpreter(interpreted_kernels, monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '1')  # the dispatcher runs backend 'triton' on CPU only under it
    monkeypatch.delenv('MMMV_SCAN_BACKEND', raising=False)
    with use_kernels(interpreted_kernels):
        yield interpreted_kernels


def make_inputs(batch, dim, length, dstate, groups, dtype, delta_scale=0.5, a_max=5.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    bc_shape = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)
    return dict(u=torch.randn(batch, dim, length, generator=gen).to(dtype),
                delta=(torch.randn(batch, dim, length, generator=gen) * delta_scale).to(dtype),
                A=-(torch.rand(dim, dstate, generator=gen) * (a_max - 0.1) + 0.1),
                B=torch.randn(bc_shape, generator=gen).to(dtype), C=torch.randn(bc_shape, generator=gen).to(dtype),
                D=torch.randn(dim, generator=gen), delta_bias=torch.randn(dim, generator=gen) * 0.5 - 1.0)


def relative_error(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def assert_each_close(outputs, references, tolerance):
    """Every output and gradient finite and within ``tolerance`` of its float64 reference; names them if not."""
    errors = {name: relative_error(outputs[name], references[name]) for name in outputs}
    bad = {name: f'{error:.2e}' for name, error in errors.items()
           if not (error <= tolerance and torch.isfinite(outputs[name]).all())}
    assert not bad, f'beyond {tolerance:.0e} of float64 (or not finite): {bad}'


def run_and_reference(leaves, scan_inputs, **kwargs):
    """y, h_L and the gradients w.r.t. the leaves from the Triton backend and from the float64 loop, and the
    inputs the Triton backend got."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
    names = list(leaves)
    inputs = scan_inputs(leaves)
    y, last = selective_scan(**inputs, return_last_state=True, backend='triton', **kwargs)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad((y.double() * grad_out).sum(), [leaves[k] for k in names])
    y_ref, last_ref = selective_scan_reference(**scan_inputs(leaves), return_last_state=True, **kwargs)
    grads_ref = torch.autograd.grad((y_ref * grad_out).sum(), [leaves[k] for k in names])
    got = dict(y=y, last_state=last, **{f'd{k}': g for k, g in zip(names, grads)})
    want = dict(y=y_ref, last_state=last_ref, **{f'd{k}': g for k, g in zip(names, grads_ref)})
    for k, g in zip(names, grads):
        assert g.dtype == leaves[k].dtype and g.shape == leaves[k].shape, k
    assert y.dtype == inputs['u'].dtype
    return got, want, inputs


# --- values and gradients vs float64 ---------------------------------------------------------------------------

STATE = dict(BLOCK_T=16)  # several chunks at these lengths
SPLIT = dict(BLOCK_T=16, BWD_T=8)  # the chunk-parallel backward, 8-step chunks (L=40: five, L=29: four)
VARIANTS = {'state': STATE, 'split': SPLIT}


def case(variant, settings, batch, dim, length, dstate=8, groups=None, dtype=torch.float32, slow=True, tol=None,
         label='', **extra):
    """One parametrised case; its id reads e.g. ``split-bc_atomic-BLOCK_D2-B2-D4-L40-fp32``."""
    given = {k: v for k, v in settings.items() if k not in VARIANTS[variant] or variant == 'default'}
    parts = [variant] + [f'{k}{v}' if k != 'bc' else f'bc_{v}' for k, v in given.items()]
    parts += [f'B{batch}', f'D{dim}', f'L{length}'] + ([f'G{groups}'] if groups else [])
    parts += ([f'N{dstate}'] if dstate != 8 else []) + ([label] if label else []) + [DTYPE_NAMES[dtype]]
    settings = dict(VARIANTS.get(variant, {}), **settings)
    spec = dict(settings=settings, shape=(batch, dim, length, dstate, groups, dtype), tol=tol or TOLERANCE[dtype],
                **extra)
    return pytest.param(spec, id='-'.join(parts), marks=[pytest.mark.slow] if slow else [])


CASES = [case('default', {}, 2, 4, length, softplus=True, slow=length != 49) for length in (1, 7, 49)]
for _variant in VARIANTS:
    _fast = _variant == 'split'
    # (the chunk-parallel backward at BLOCK_D=2 is also checked against float64, in the fast tier, by
    # test_chunk_parallel_backward_checkpoints_carry_pass_and_grids)
    for _bc in ('atomic', 'partial'):
        CASES.append(case(_variant, dict(BLOCK_D=2, bc=_bc, num_warps=1), 2, 4, 40, softplus=True))
    # grouped B/C: one program per group (dB/dC stored), and one channel per program with partial sums
    CASES.append(case(_variant, dict(BLOCK_D=2), 2, 6, 29, 4, 3, softplus=True, slow=_fast))
    CASES.append(case(_variant, dict(BLOCK_D=1, bc='partial'), 2, 6, 29, 4, 3, softplus=True))
    # d_state 3 (padded to 4), no D, no delta_bias, no softplus, a z gate
    CASES.append(case(_variant, dict(BLOCK_D=1), 1, 3, 20, 3, label='noD-nobias-nosoftplus-z', plain=True,
                      slow=_fast))
    CASES.append(case(_variant, dict(BLOCK_D=1), 1, 4, 64, label='stress', tol=1e-4, stress=True, softplus=True))
    for _dtype in (torch.float16, torch.bfloat16):
        CASES.append(case(_variant, dict(BLOCK_D=2), 2, 4, 40, dtype=_dtype, softplus=True))


@pytest.mark.parametrize('spec', CASES)
def test_fwd_bwd_match_float64(spec):
    """y, h_L and the gradients of every input vs the float64 loop. (UNROLL changes the compiled code only; these
    cases run it at 1 (one channel per program) and at d_state (several), the defaults.)"""
    batch, dim, length, dstate, groups, dtype = spec['shape']
    inputs = make_inputs(batch, dim, length, dstate, groups, dtype)
    if spec.get('stress'):  # large Δ, |A| up to 30
        inputs = make_inputs(batch, dim, length, dstate, groups, dtype, delta_scale=10.0, a_max=30.0)
        inputs['delta_bias'] = torch.tensor([-2.0, 5.0, 12.0, 20.0])
    kwargs = dict(delta_softplus=True) if spec.get('softplus') else {}
    if spec.get('plain'):
        inputs.update(D=None, delta_bias=None)
        kwargs['z'] = torch.randn(batch, dim, length, generator=torch.Generator().manual_seed(2))
    leaves = {k: v for k, v in inputs.items() if v is not None}
    with kernel_settings(**spec['settings']):
        got, want, _ = run_and_reference(leaves, lambda x: x, **kwargs)
    assert_each_close(got, want, spec['tol'])


# --- launches: what each kernel gets --------------------------------------------------------------------------

class KernelSpy:
    """Stands in for a kernel: records the launches (arguments, options, grid), then runs the kernel."""

    def __init__(self, kernel):
        self.kernel, self.calls, self.grids = kernel, [], []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((args, kwargs))
            self.grids.append(tuple(grid))
            return self.kernel[grid](*args, **kwargs)
        return launch


@contextmanager
def spying(kernel_module):
    spies = types.SimpleNamespace(**{name: KernelSpy(getattr(kernel_module, name)) for name in KERNEL_NAMES})
    with use_kernels(spies):
        yield spies


@pytest.mark.parametrize('bwd_t,chunks', [pytest.param(8, 5, id='BWD_T8-split'),
                                          pytest.param(0, 3, id='BWD_T0-sequential', marks=pytest.mark.slow)])
def test_chunk_parallel_backward_checkpoints_carry_pass_and_grids(interpreter, bwd_t, chunks):
    """BWD_T: the forward stores a checkpoint every BWD_T steps, the backward runs a carry pass and then one
    program per chunk (3-D grids); without it, no carry pass and one program per channel block. Values and
    gradients vs float64 as well."""
    inputs = make_inputs(2, 4, 40, 8, None, torch.float32)
    with kernel_settings(BLOCK_T=16, BWD_T=bwd_t, BLOCK_D=2), spying(interpreter) as spies:
        got, want, _ = run_and_reference(inputs, lambda x: x, delta_softplus=True)
    assert_each_close(got, want, TOLERANCE[torch.float32])
    fwd, bwd, carry = spies.state_fwd_kernel, spies.state_bwd_kernel, spies.state_carry_kernel
    ckpt = fwd.calls[0][0][8]
    want_grid = (2, 2, chunks) if bwd_t else (2, 2)
    assert ckpt.shape == (2, 4, chunks, 8) and fwd.calls[0][1]['CKPT_T'] == (bwd_t or 16)
    assert fwd.grids == [(2, 2)] and bwd.grids == [want_grid]
    assert carry.grids == ([want_grid] if bwd_t else []) and bwd.calls[0][1]['SPLIT'] is bool(bwd_t)


def strided_inputs(batch, dim, length, dstate, groups, dtype, layout, rank=3, seed=0):
    """Leaves (the wider parent tensors) and a function making the scan inputs from them, as views.

    'views': u = xz[:, :dim] of a (b, 2·dim, L) tensor; B, C = slices of x_dbl (b, R + 2·g·n, L) seen as
    (b, g, n, L) (``.unsqueeze(1)`` for g = 1, as the mixer does) -- all read in place by the kernels.
    'transposed': u and B, C cut from token-major (b, L, ·) tensors, stride 1 over channels: copied."""
    gen = torch.Generator().manual_seed(seed)
    g = groups or 1
    leaves = dict(delta=(torch.randn(batch, dim, length, generator=gen) * 0.5).to(dtype),
                  A=-(torch.rand(dim, dstate, generator=gen) * 4.9 + 0.1),
                  D=torch.randn(dim, generator=gen), delta_bias=torch.randn(dim, generator=gen) * 0.5 - 1.0)
    width = rank + 2 * g * dstate
    if layout == 'views':
        leaves['xz'] = torch.randn(batch, 2 * dim, length, generator=gen).to(dtype)
        leaves['x_dbl'] = torch.randn(batch, width, length, generator=gen).to(dtype)
    else:
        leaves['xz'] = torch.randn(batch, length, 2 * dim, generator=gen).to(dtype)
        leaves['x_dbl'] = torch.randn(batch, length, width, generator=gen).to(dtype)

    def scan_inputs(x):
        if layout == 'views':
            u, x_dbl = x['xz'][:, :dim], x['x_dbl']
        else:
            u, x_dbl = x['xz'][..., :dim].transpose(1, 2), x['x_dbl'].transpose(1, 2)
        B, C = x_dbl[:, rank:rank + g * dstate], x_dbl[:, rank + g * dstate:]
        if groups is None:
            B, C = B.unsqueeze(1), C.unsqueeze(1)
        else:
            B, C = B.unflatten(1, (g, dstate)), C.unflatten(1, (g, dstate))
        return dict(u=u, delta=x['delta'], A=x['A'], B=B, C=C, D=x['D'], delta_bias=x['delta_bias'])
    return leaves, scan_inputs


def view_case(variant, settings, shape, layout, in_place, dtype=torch.float32, slow=True):
    batch, dim, length, dstate, groups = shape
    given = '-'.join(f'{k}{v}' if k != 'bc' else f'bc_{v}' for k, v in settings.items())
    name = f'{variant}-{layout}-{given}-B{batch}-D{dim}-L{length}' + (f'-G{groups}' if groups else '')
    return pytest.param(variant, settings, shape, layout, in_place, dtype, id=f'{name}-{DTYPE_NAMES[dtype]}',
                        marks=[pytest.mark.slow] if slow else [])


VIEW_CASES = []
for _variant in VARIANTS:
    _fast = _variant == 'state'
    VIEW_CASES += [view_case(_variant, dict(BLOCK_D=2, bc='atomic'), (2, 4, 40, 8, None), 'views', True,
                             slow=not _fast),
                   view_case(_variant, dict(BLOCK_D=2), (2, 4, 29, 4, 2), 'views', True),
                   view_case(_variant, dict(BLOCK_D=1, bc='partial'), (2, 4, 29, 4, None), 'transposed', False),
                   view_case(_variant, dict(BLOCK_D=4), (1, 4, 23, 8, None), 'views', True, torch.float16)]


@pytest.mark.parametrize('variant,settings,shape,layout,in_place,dtype', VIEW_CASES)
def test_views_are_read_in_place_and_grads_reach_the_parents(interpreter, variant, settings, shape, layout,
                                                             in_place, dtype):
    """Values and gradients w.r.t. the parent tensors vs float64; with ``in_place``, the forward and backward
    kernels got the views themselves (no copies), else contiguous copies."""
    batch, dim, length, dstate, groups = shape
    leaves, scan_inputs = strided_inputs(batch, dim, length, dstate, groups, dtype, layout)
    with kernel_settings(**VARIANTS[variant], **settings), spying(interpreter) as spies:
        got, want, views = run_and_reference(leaves, scan_inputs, delta_softplus=True)
    assert_each_close(got, want, TOLERANCE[dtype])
    fwd, bwd, carry = spies.state_fwd_kernel.calls, spies.state_bwd_kernel.calls, spies.state_carry_kernel.calls
    split = int(variant == 'split')
    assert len(fwd) == 1 and len(bwd) == 1 and len(carry) == split
    assert fwd[0][1]['STORE_CKPT'] is True
    for position, key in ((0, 'u'), (3, 'B'), (4, 'C')):
        view = views[key]
        for passed in [fwd[0][0][position], bwd[0][0][position]] + ([carry[0][0][2]] if split and key == 'C' else []):
            same = passed.data_ptr() == view.data_ptr() and passed.stride() == view.stride()
            if in_place:
                assert same, key
            else:
                assert passed.is_contiguous() and not same, key


class NoFunction:
    """Stands in for TritonSelectiveScan where no gradient can flow: the inference path must not use it."""

    @staticmethod
    def apply(*args):
        raise AssertionError('the autograd Function was used without gradients')


@pytest.mark.parametrize('variant,settings,length', [
    pytest.param('default', {}, 49, id='default-B2-D4-L49'),
    pytest.param('state', dict(BLOCK_D=2), 40, id='state-BLOCK_D2-B2-D4-L40', marks=pytest.mark.slow),
    pytest.param('split', dict(BLOCK_D=2), 40, id='split-BLOCK_D2-B2-D4-L40', marks=pytest.mark.slow)])
@pytest.mark.parametrize('mode', [pytest.param('no_grad', marks=pytest.mark.slow), 'inference_mode',
                                  pytest.param('no_input_requires_grad', marks=pytest.mark.slow)])
def test_without_gradients_no_function_no_checkpoints_same_values(interpreter, monkeypatch, variant, settings,
                                                                  length, mode):
    """Without gradients: the same y and h_L as the gradient path, bit for bit, from one forward launch that stores
    no checkpoints, without the autograd Function."""
    leaves, scan_inputs = strided_inputs(2, 4, length, 8, None, torch.float32, 'views')
    grad_leaves = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
    with kernel_settings(**VARIANTS.get(variant, {}), **settings):
        y_ref, last_ref = selective_scan(**scan_inputs(grad_leaves), return_last_state=True, backend='triton',
                                         delta_softplus=True)
        assert y_ref.requires_grad
        monkeypatch.setattr(function, 'TritonSelectiveScan', NoFunction)
        inputs, context = dict(no_grad=(grad_leaves, torch.no_grad), inference_mode=(grad_leaves, torch.inference_mode),
                               no_input_requires_grad=(leaves, torch.enable_grad))[mode]
        with spying(interpreter) as spies, context():
            y, last = selective_scan(**scan_inputs(inputs), return_last_state=True, backend='triton',
                                     delta_softplus=True)
    calls = spies.state_fwd_kernel.calls
    assert len(calls) == 1 and not spies.state_bwd_kernel.calls and not spies.state_carry_kernel.calls
    # no checkpoint buffer: the kernel's ckpt pointer is the last-state buffer, never written through
    assert calls[0][1]['STORE_CKPT'] is False and calls[0][0][8] is calls[0][0][9]
    assert torch.equal(y, y_ref.detach()) and torch.equal(last, last_ref) and not y.requires_grad
