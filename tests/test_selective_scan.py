"""Selective scan: the float64 reference, the torch backend and dispatch (CPU). The Triton kernels' logic on CPU:
test_triton_interpreter.py."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import importlib
from mmmambavision.ops import selected_backend, selective_scan, selective_scan_reference
from mmmambavision.ops.scan_torch import selective_scan_torch

scan_module = importlib.import_module('mmmambavision.ops.selective_scan')

GRAD_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')
# max |got - want| / max |want| per output dtype (inputs rounded to that dtype before the reference sees them)
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float64: 1e-10}


def make_inputs(batch, dim, length, dstate=8, groups=None, dtype=torch.float32, delta_scale=0.5,
                a_max=5.0, seed=0):
    """Scan inputs as the mixer makes them: u, delta, B, C in the activation dtype; A, D, delta_bias fp32."""
    gen = torch.Generator().manual_seed(seed)
    bc_shape = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)
    u = torch.randn(batch, dim, length, generator=gen).to(dtype)
    delta = (torch.randn(batch, dim, length, generator=gen) * delta_scale).to(dtype)
    A = -(torch.rand(dim, dstate, generator=gen) * (a_max - 0.1) + 0.1)
    B = torch.randn(bc_shape, generator=gen).to(dtype)
    C = torch.randn(bc_shape, generator=gen).to(dtype)
    D = torch.randn(dim, generator=gen)
    delta_bias = torch.randn(dim, generator=gen) * 0.5 - 1.0
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias)


def relative_error(got, want):
    """Max error relative to the reference's largest magnitude; absolute where the reference is exactly 0.

    (dA at L=1 is exactly 0: h_{-1} = 0, so any rounding would make a relative error meaningless.)"""
    scale = want.double().abs().max()
    error = (got.double() - want.double()).abs().max()
    return (error / scale if scale > 0 else error).item()


def check_against_reference(inputs, tolerance, grad_tolerance=None, **kwargs):
    """Values, last state and the gradients of all seven inputs vs the float64 loop."""
    grad_tolerance = grad_tolerance or tolerance
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    y, last = selective_scan(**leaves, return_last_state=True, **kwargs)
    assert y.dtype == inputs['u'].dtype and y.shape == inputs['u'].shape
    assert last.dtype == torch.float32 or inputs['u'].dtype == torch.float64
    assert torch.isfinite(y).all()
    ref_kwargs = {k: v for k, v in kwargs.items() if k != 'backend'}
    y_ref, last_ref = selective_scan_reference(**leaves, return_last_state=True, **ref_kwargs)
    assert relative_error(y, y_ref) <= tolerance
    assert relative_error(last, last_ref) <= tolerance
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    names = list(leaves)
    grads = torch.autograd.grad((y.double() * grad_out).sum(), [leaves[k] for k in names])
    grads_ref = torch.autograd.grad((y_ref * grad_out).sum(), [leaves[k] for k in names])
    for name, got, want in zip(names, grads, grads_ref):
        assert got.dtype == leaves[name].dtype and got.shape == leaves[name].shape, name
        assert torch.isfinite(got).all(), name
        assert relative_error(got, want) <= grad_tolerance, (name, relative_error(got, want))


# --- the reference itself ------------------------------------------------------------------------------------

def test_reference_matches_closed_form_sum():
    """h_t = Σ_{s≤t} exp(A·Σ_{s<k≤t} Δ_k)·Δ_s·u_s·B_s, evaluated without any recurrence."""
    x = make_inputs(2, 3, 9, dstate=4, dtype=torch.float64)
    dt = F.softplus(x['delta'] + x['delta_bias'][:, None])  # (b, d, L)
    cum = dt.cumsum(-1)
    # decay[b, d, n, t, s] = exp(A·(cum_t - cum_s)) for s <= t
    exponent = (cum[..., :, None] - cum[..., None, :])[:, :, None] * x['A'][None, :, :, None, None]
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    decay = torch.where(causal, exponent, torch.full_like(exponent, -float('inf'))).exp()
    drive = (dt * x['u'])[:, :, None, :] * x['B'][:, None]  # (b, d, n, s)
    h = (decay * drive[:, :, :, None, :]).sum(-1)  # (b, d, n, t)
    y = (h * x['C'][:, None]).sum(2) + x['D'][:, None] * x['u']
    got = selective_scan_reference(**x, delta_softplus=True)
    torch.testing.assert_close(got, y, rtol=1e-12, atol=1e-12)


def test_reference_single_step_is_c_dot_delta_u_b_plus_du():
    x = make_inputs(1, 2, 1, dstate=3, dtype=torch.float64)
    dt = x['delta'] + x['delta_bias'][:, None]
    expected = (x['C'][:, None, :, 0] * (dt * x['u'])[..., 0, None] * x['B'][:, None, :, 0]).sum(-1)
    expected = expected[..., None] + x['D'][:, None] * x['u']
    torch.testing.assert_close(selective_scan_reference(**x), expected)


# --- torch backend vs the reference ----------------------------------------------------------------------------

@pytest.mark.parametrize('length,batch,dim', [(1, 2, 8), (7, 2, 8), (49, 2, 8), (196, 2, 6), (257, 1, 4),
                                              (2049, 1, 2), (4096, 1, 2)])
def test_torch_backend_matches_float64_loop_fp32(length, batch, dim):
    inputs = make_inputs(batch, dim, length, dstate=4 if length > 1000 else 8)
    check_against_reference(inputs, TOLERANCE[torch.float32], backend='torch', delta_softplus=True)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float64])
def test_torch_backend_matches_float64_loop_low_precision_and_double(dtype):
    inputs = make_inputs(2, 4, 70, dtype=dtype)
    check_against_reference(inputs, TOLERANCE[dtype], backend='torch', delta_softplus=True)


def test_torch_backend_crosses_chunk_boundaries_exactly():
    """Chunked forward/backward with tiny chunks equals one chunk (checkpoints carry the state)."""
    x = make_inputs(2, 4, 50, dtype=torch.float64)
    outs = []
    for chunk in (3, 16, 50):
        leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
        B, C = leaves['B'].unsqueeze(1), leaves['C'].unsqueeze(1)
        y, _ = selective_scan_torch(leaves['u'], leaves['delta'], leaves['A'], B, C, leaves['D'],
                                    leaves['delta_bias'], True, torch.float64, chunk=chunk)
        y.square().sum().backward()
        outs.append([y.detach()] + [leaves[k].grad for k in GRAD_NAMES])
    for other in outs[:2]:
        for got, want in zip(other, outs[2]):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('variant', ['grouped', 'time_invariant', 'no_D_no_bias_no_softplus', 'z_gate'])
def test_torch_backend_variants_match_reference(variant):
    kwargs = dict(backend='torch', delta_softplus=True)
    if variant == 'grouped':
        inputs = make_inputs(2, 6, 33, dstate=4, groups=3)
    elif variant == 'time_invariant':
        inputs = make_inputs(2, 6, 33, dstate=4)
        inputs['B'] = torch.randn(6, 4)
        inputs['C'] = torch.randn(6, 4)
    elif variant == 'no_D_no_bias_no_softplus':
        inputs = make_inputs(2, 6, 33, dstate=4)
        inputs['D'] = inputs['delta_bias'] = None
        inputs['delta'] = inputs['delta'].abs()
        kwargs['delta_softplus'] = False
    else:
        inputs = make_inputs(2, 6, 33, dstate=4)
        inputs['z'] = torch.randn(2, 6, 33)
    check_against_reference(inputs, TOLERANCE[torch.float32], **kwargs)


def test_torch_backend_survives_stress_inputs():
    """Large Δ (softplus of up to ~30) and |A| up to 30: decays underflow to 0, nothing overflows."""
    inputs = make_inputs(1, 8, 120, delta_scale=10.0, a_max=30.0)
    inputs['delta_bias'] = torch.linspace(-2, 20, 8)
    check_against_reference(inputs, 1e-4, grad_tolerance=2e-4, backend='torch', delta_softplus=True)
    tiny = make_inputs(1, 4, 300, delta_scale=0.01, a_max=0.2)
    tiny['delta_bias'] = torch.full((4,), -8.0)  # Δ ~ 3e-4: near-identity decays, long memory
    check_against_reference(tiny, 1e-4, backend='torch', delta_softplus=True)


def test_last_state_carries_no_gradient_and_matches_reference():
    x = make_inputs(1, 4, 20)
    u = x.pop('u').requires_grad_(True)
    y, last = selective_scan(u, **x, delta_softplus=True, return_last_state=True, backend='torch')
    assert not last.requires_grad and y.requires_grad
    _, last_ref = selective_scan_reference(u, **x, delta_softplus=True, return_last_state=True)
    assert relative_error(last, last_ref) < 1e-5


def test_torch_backend_saves_only_inputs_and_chunk_checkpoints():
    """Bounded memory: what autograd keeps is the inputs plus one (b, d, n) state per chunk, not (b, d, n, L)."""
    batch, dim, length, dstate = 1, 4, 2048, 8
    x = {k: v.requires_grad_(True) for k, v in make_inputs(batch, dim, length, dstate=dstate).items()}
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan(**x, delta_softplus=True, backend='torch')
    input_elements = sum(v.numel() for v in x.values())
    assert sum(saved) < input_elements + batch * dim * dstate * length // 16


def test_mamba_style_call_from_the_mixer():
    """The call the MambaVision mixer makes: fp32 A/D/delta_bias, softplus, no z; works under autocast-like dtypes."""
    x = make_inputs(2, 16, 49, dtype=torch.bfloat16)
    y = selective_scan(x['u'], x['delta'], x['A'], x['B'], x['C'], x['D'], delta_bias=x['delta_bias'],
                       delta_softplus=True)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 16, 49)


# --- dispatch -------------------------------------------------------------------------------------------------

@pytest.fixture
def fresh_dispatch(monkeypatch):
    monkeypatch.setattr(scan_module, '_selected', {})
    monkeypatch.delenv('MMMV_SCAN_BACKEND', raising=False)
    messages = []
    monkeypatch.setattr(scan_module, '_log', messages.append)
    return messages


def test_cpu_tensors_use_torch_backend_chosen_and_logged_once(fresh_dispatch):
    x = make_inputs(1, 2, 5)
    for _ in range(3):
        selective_scan(**x)
    assert selected_backend('cpu') == 'torch'
    assert len(fresh_dispatch) == 1 and "'torch'" in fresh_dispatch[0]


def test_invalid_backend_argument_names_argument_and_choices(fresh_dispatch):
    with pytest.raises(ValueError, match=r"backend.*'auto', 'cuda', 'triton', 'torch'.*'fast'"):
        selective_scan(**make_inputs(1, 2, 5), backend='fast')


def test_invalid_environment_variable_is_rejected(fresh_dispatch, monkeypatch):
    monkeypatch.setenv('MMMV_SCAN_BACKEND', 'gpu')
    with pytest.raises(ValueError, match='MMMV_SCAN_BACKEND'):
        selective_scan(**make_inputs(1, 2, 5))


def test_environment_variable_selects_backend_and_argument_overrides_it(fresh_dispatch, monkeypatch):
    monkeypatch.setenv('MMMV_SCAN_BACKEND', 'cuda')
    with pytest.raises(RuntimeError, match="'cuda'.*MMMV_SCAN_BACKEND=cuda.*cpu"):
        selective_scan(**make_inputs(1, 2, 5))
    assert selected_backend('cpu', backend='torch') == 'torch'
    selective_scan(**make_inputs(1, 2, 5), backend='torch')
    monkeypatch.setenv('MMMV_SCAN_BACKEND', 'torch')
    assert selected_backend('cpu') == 'torch'


def test_cuda_backend_on_cpu_tensors_is_a_clear_error(fresh_dispatch):
    with pytest.raises(RuntimeError, match="backend 'cuda'.*CUDA tensors only"):
        selective_scan(**make_inputs(1, 2, 5), backend='cuda')


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(fresh_dispatch, monkeypatch):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    with pytest.raises(RuntimeError, match="backend 'triton'.*TRITON_INTERPRET"):
        selective_scan(**make_inputs(1, 2, 5), backend='triton')


def test_bad_shapes_are_rejected_with_the_expected_shape():
    x = make_inputs(1, 4, 5)
    with pytest.raises(ValueError, match='A must be'):
        selective_scan(**{**x, 'A': torch.zeros(3, 8)})
    with pytest.raises(ValueError, match='divisible by groups'):
        selective_scan(**{**x, 'B': torch.zeros(1, 3, 8, 5)})


def test_importing_the_package_probes_no_kernel():
    code = ('import sys, mmmambavision.ops; '
            "assert not {'selective_scan_cuda', 'triton', 'mamba_ssm'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, '-c', code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_cuda_kernel_states_with_time_invariant_B_are_scaled_back_to_h():
    """mamba-ssm's kernel scans ``delta·u`` alone when B is time-invariant ((d, n)) and applies B at the output, so
    its saved state is the state of the same scan with B = 1; ``last_state_of`` must turn that into h_L (float64
    loop as the reference). With (b, n, L) B the state is h_L itself."""
    from mmmambavision.ops.scan_cuda import last_state_of
    gen = torch.Generator().manual_seed(0)
    batch, dim, length, dstate = 2, 6, 40, 4
    u, delta = torch.randn(batch, dim, length, generator=gen), torch.rand(batch, dim, length, generator=gen)
    A = -torch.rand(dim, dstate, generator=gen) - 0.1
    B, C = torch.randn(dim, dstate, generator=gen), torch.randn(dim, dstate, generator=gen)
    _, truth = selective_scan_reference(u, delta, A, B, C, return_last_state=True)
    _, unit = selective_scan_reference(u, delta, A, torch.ones_like(B), C, return_last_state=True)
    x = torch.zeros(batch, dim, 1, 2 * dstate)
    x[..., 1::2] = unit.unsqueeze(2).float()  # what the kernel keeps: the state without B
    torch.testing.assert_close(last_state_of(x, B).double(), truth, rtol=1e-5, atol=1e-6)
    B_t = torch.randn(batch, 1, dstate, length, generator=gen)
    x[..., 1::2] = truth.unsqueeze(2).float()
    assert torch.equal(last_state_of(x, B_t), x[:, :, -1, 1::2])

