"""The selective scan's custom ops (mmmambavision/ops/custom_op.py) and torch.compile tracing through them (CPU).

``torch.library.opcheck`` checks both ops (schema, fake kernels against the real ones, autograd registration,
AOT dispatch with static and symbolic shapes); ``torch._dynamo.explain`` shows no graph break around the scan
nor in the mixer; compiled functions match the float64 loop in values and in every input's gradient. The Triton
backend goes through the ops under the Triton interpreter; the GPU runs are in test_selective_scan_gpu.py.
"""
import importlib

import pytest
import torch

from mmmambavision.models.mixer import MambaVisionMixer
from mmmambavision.ops import selective_scan, selective_scan_reference
from mmmambavision.ops.custom_op import selective_scan_bwd, selective_scan_fwd
from test_selective_scan import make_inputs, relative_error

scan_module = importlib.import_module('mmmambavision.ops.selective_scan')

NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')
LAYOUTS = {'bnl': None, 'bgnl': 2, 'dn': 'dn'}  # B/C (b, n, L), (b, g, n, L), time-invariant (d, n)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}
OP_TARGETS = (torch.ops.mmmambavision.selective_scan_fwd.default, torch.ops.mmmambavision.selective_scan_fwd)

try:
    import triton  # noqa: F401
except ImportError:  # pragma: no cover - triton is installed here
    HAVE_TRITON = False
else:
    HAVE_TRITON = True
    from test_triton_interpreter import interpreted_kernels  # noqa: F401  (the fixture)


def scan_inputs(layout='bnl', dtype=torch.float32, batch=2, dim=4, length=20, dstate=4, D=True, z=True,
                delta_bias=True, seed=0):
    """All eight inputs (None where left out), B/C in the given layout; A, D and delta_bias fp32 as the mixer makes
    them, fp64 with fp64 inputs."""
    groups = LAYOUTS[layout]
    x = make_inputs(batch, dim, length, dstate=dstate, groups=None if groups == 'dn' else groups, dtype=dtype,
                    seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    if groups == 'dn':
        x['B'] = torch.randn(dim, dstate, generator=gen)
        x['C'] = torch.randn(dim, dstate, generator=gen)
    x['z'] = torch.randn(batch, dim, length, generator=gen).to(dtype) if z else None
    x['D'] = x['D'] if D else None
    x['delta_bias'] = x['delta_bias'] if delta_bias else None
    if dtype == torch.float64:
        x = {k: v.double() if v is not None else None for k, v in x.items()}
    return {k: x[k] for k in NAMES}


# --- opcheck ---------------------------------------------------------------------------------------------------

OPCHECK_CASES = [
    # backend, dtype, layout, (D, z, delta_bias), softplus
    ('torch', torch.float64, 'bnl', (True, True, True), True),
    ('torch', torch.float32, 'bgnl', (False, False, False), False),
    ('torch', torch.float32, 'dn', (True, False, True), True),
    ('torch', torch.float64, 'dn', (False, True, False), False),
    ('chunked', torch.float32, 'bnl', (False, True, False), True),
    ('chunked', torch.float64, 'bgnl', (True, True, True), True),
    ('chunked', torch.float64, 'dn', (True, False, False), False),
    ('chunked', torch.float32, 'dn', (False, False, True), True),
]


def case_id(case):
    backend, dtype, layout, (D, z, bias), softplus = case
    flags = ''.join(name for name, on in (('D', D), ('z', z), ('bias', bias), ('softplus', softplus)) if on)
    return f'{backend}-{str(dtype)[-7:].strip(".")}-{layout}-{flags or "plain"}'


@pytest.mark.parametrize('case', OPCHECK_CASES, ids=case_id)
def test_opcheck_forward_and_backward_ops(case):
    backend, dtype, layout, (D, z, bias), softplus = case
    x = scan_inputs(layout, dtype, D=D, z=z, delta_bias=bias)
    args = tuple(t.requires_grad_(True) if t is not None else None for t in x.values())
    torch.library.opcheck(selective_scan_fwd, args + (softplus, backend, True))
    detached = tuple(t.detach() if t is not None else None for t in args)
    torch.library.opcheck(selective_scan_fwd, detached + (softplus, backend, False))  # the inference form
    y, _, state, pre_gate = selective_scan_fwd(*detached, softplus, backend, True)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
    for needs in ([True] * 8, [False, True, False, True, True, False, True, False]):
        torch.library.opcheck(selective_scan_bwd, (grad_y,) + detached + (state, pre_gate, softplus, backend, needs))


def test_backward_op_gives_each_gradient_in_its_inputs_shape_and_dtype():
    """Grouped B/C, fp32: the gradients asked for come in their inputs' shapes and dtypes, contiguous; the others
    are 0-element placeholders."""
    x = scan_inputs('bgnl', torch.float32)
    y, last, state, pre_gate = selective_scan_fwd(*x.values(), True, 'torch', True)
    assert last.shape == (2, 4, 4) and last.dtype == torch.float32 and y.dtype == torch.float32
    needs = [True, False, True, True, False, True, True, False]
    grads = selective_scan_bwd(torch.ones_like(y), *x.values(), state, pre_gate, True, 'torch', needs)
    for name, grad, need in zip(NAMES, grads, needs):
        if need:
            assert grad.shape == x[name].shape and grad.dtype == x[name].dtype, name
            assert grad.is_contiguous() and torch.isfinite(grad).all(), name
        else:
            assert grad.numel() == 0, name


def test_ops_reject_an_unresolved_backend():
    x = scan_inputs()
    with pytest.raises(ValueError, match='resolved'):
        selective_scan_fwd(*x.values(), True, 'auto', True)


# --- no graph break ---------------------------------------------------------------------------------------------

def scan_between_linears(backend):
    torch.manual_seed(0)
    first, second = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def fn(u, delta, A, B, C, D, z, delta_bias):
        u = first(u.transpose(1, 2)).transpose(1, 2)
        y = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, backend=backend)
        return second(y.transpose(1, 2))

    return fn, (first, second)


def scan_nodes(explanation):
    return [node for graph in explanation.graphs for node in graph.graph.nodes
            if node.op == 'call_function' and node.target in OP_TARGETS]


@pytest.mark.parametrize('backend', [None, 'torch', 'chunked'])
def test_explain_shows_no_graph_break_around_the_scan(backend, monkeypatch):
    """One graph holding the custom op, for the automatic choice made at trace time (the per-process cache of the
    choice emptied first, so that the choice itself is traced) and for explicit backends."""
    monkeypatch.delenv('MMMV_SCAN_BACKEND', raising=False)
    monkeypatch.setattr(scan_module, '_selected', {})
    torch._dynamo.reset()
    fn, _ = scan_between_linears(backend)
    x = {k: v.requires_grad_(True) if v is not None else None for k, v in scan_inputs().items()}
    explanation = torch._dynamo.explain(fn)(*x.values())
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    assert explanation.graph_count == 1
    nodes = scan_nodes(explanation)
    assert len(nodes) == 1
    assert nodes[0].args[9] == (backend or 'torch')  # resolved before the op: a constant of the graph


def test_environment_variable_picks_the_backend_when_tracing(monkeypatch):
    monkeypatch.setenv('MMMV_SCAN_BACKEND', 'chunked')
    torch._dynamo.reset()
    fn, _ = scan_between_linears(None)
    explanation = torch._dynamo.explain(fn)(*scan_inputs().values())
    assert explanation.graph_break_count == 0
    assert [node.args[9] for node in scan_nodes(explanation)] == ['chunked']


def test_explain_shows_no_graph_break_in_the_mixer(monkeypatch):
    monkeypatch.delenv('MMMV_SCAN_BACKEND', raising=False)
    torch._dynamo.reset()
    mixer = MambaVisionMixer(16, d_state=4)
    explanation = torch._dynamo.explain(mixer)(torch.randn(2, 10, 16))
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    assert explanation.graph_count == 1 and len(scan_nodes(explanation)) == 1


def test_eager_calls_do_not_go_through_the_op(monkeypatch):
    """The eager path is unchanged: the op only runs under torch.compile."""
    def fail(*args, **kwargs):
        raise AssertionError('the custom op ran in an eager call')

    monkeypatch.setattr(scan_module, 'selective_scan_op', fail)
    x = scan_inputs()
    selective_scan(*x.values(), delta_softplus=True, backend='torch')
    torch._dynamo.reset()
    with pytest.raises(Exception, match='the custom op ran'):
        torch.compile(selective_scan, backend='eager', fullgraph=True)(*x.values(), delta_softplus=True,
                                                                       backend='torch')


# --- compiled vs the float64 loop ------------------------------------------------------------------------------

def compiled_vs_reference(compiler, backend, dtype, layout, softplus=True, grad=True, dynamic=None, fullgraph=False,
                          **flags):
    """y, h_L and the gradients of every input of a compiled scan-between-linears vs the float64 loop on the same
    (rounded) inputs and the same linear layers in float64."""
    torch._dynamo.reset()
    fn, (first, second) = scan_between_linears(backend)
    first.to(dtype), second.to(dtype)

    def with_state(u, delta, A, B, C, D, z, delta_bias):
        u = first(u.transpose(1, 2)).transpose(1, 2)
        y, last = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=softplus,
                                 return_last_state=True, backend=backend)
        return second(y.transpose(1, 2)), last

    x = scan_inputs(layout, dtype, **flags)
    leaves = {k: v.clone().requires_grad_(grad) for k, v in x.items() if v is not None}
    args = [leaves.get(k) for k in NAMES]
    with torch.set_grad_enabled(grad):
        out, last = torch.compile(with_state, backend=compiler, dynamic=dynamic, fullgraph=fullgraph)(*args)
    assert out.dtype == dtype and not last.requires_grad

    ref_leaves = {k: v.detach().double().requires_grad_(grad) for k, v in leaves.items()}
    first64 = torch.nn.Linear(4, 4).double()
    second64 = torch.nn.Linear(4, 4).double()
    first64.load_state_dict(first.state_dict()), second64.load_state_dict(second.state_dict())
    ref_args = [ref_leaves.get(k) for k in NAMES]
    with torch.set_grad_enabled(grad):
        u = first64(ref_args[0].transpose(1, 2)).transpose(1, 2)
        y, last_ref = selective_scan_reference(u, *ref_args[1:], delta_softplus=softplus, return_last_state=True)
        ref = second64(y.transpose(1, 2))
    tolerance = TOLERANCE[dtype]
    errors = {'y': relative_error(out, ref), 'last_state': relative_error(last, last_ref)}
    if grad:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        names = list(leaves)
        grads = torch.autograd.grad((out.double() * grad_out).sum(), [leaves[k] for k in names])
        grads_ref = torch.autograd.grad((ref * grad_out).sum(), [ref_leaves[k] for k in names])
        for name, got, want in zip(names, grads, grads_ref):
            assert got.dtype == leaves[name].dtype and got.shape == leaves[name].shape, name
            errors[f'd{name}'] = relative_error(got, want)
    bad = {k: f'{e:.1e}' for k, e in errors.items() if not e <= tolerance}
    assert not bad, f'beyond {tolerance:.0e} of float64: {bad}'


@pytest.mark.parametrize('backend', ['torch', 'chunked'])
@pytest.mark.parametrize('dtype,layout', [(torch.float64, 'bnl'), (torch.float32, 'bgnl'), (torch.float64, 'dn')],
                         ids=['fp64-bnl', 'fp32-bgnl', 'fp64-dn'])
def test_aot_eager_compiled_values_and_grads_match_float64(backend, dtype, layout):
    compiled_vs_reference('aot_eager', backend, dtype, layout)


def test_aot_eager_compiled_without_options_and_without_grad_match_float64():
    compiled_vs_reference('aot_eager', 'torch', torch.float32, 'bnl', softplus=False, D=False, z=False,
                          delta_bias=False)
    compiled_vs_reference('aot_eager', 'torch', torch.float64, 'bgnl', grad=False)  # differentiable=False


def test_dynamic_shapes_compile_once_for_two_lengths():
    """Symbolic lengths: the fake kernels' shapes (the torch backend's checkpoint count) follow the length."""
    torch._dynamo.reset()
    counts = []

    def count(gm, example_inputs):
        counts.append(1)
        return gm.forward

    def fn(u, delta, A, B, C, D):
        return selective_scan(u, delta, A, B, C, D, delta_softplus=True, backend='torch')

    compiled = torch.compile(fn, backend=count, dynamic=True)
    for length in (20, 37):
        x = scan_inputs(length=length, z=False, delta_bias=False)
        args = [x[k] for k in NAMES[:6]]
        y = compiled(*args)
        want = selective_scan_reference(*args, delta_softplus=True)
        assert relative_error(y, want) <= 1e-4
    assert len(counts) == 1


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['torch', 'chunked'])
@pytest.mark.parametrize('dtype,layout', [(torch.float64, 'bnl'), (torch.float32, 'bgnl'), (torch.float64, 'dn')],
                         ids=['fp64-bnl', 'fp32-bgnl', 'fp64-dn'])
def test_inductor_compiled_values_and_grads_match_float64(backend, dtype, layout):
    """Inductor on CPU (C++ kernels for the layers around the op; a cold cache takes tens of seconds)."""
    compiled_vs_reference('inductor', backend, dtype, layout)


# --- the Triton backend through the ops, under the interpreter ---------------------------------------------------

@pytest.fixture
def interpreted(request, monkeypatch):
    if not HAVE_TRITON:
        pytest.skip('triton is not installed')
    from mmmambavision.ops.triton import use_kernels
    kernels = request.getfixturevalue('interpreted_kernels')
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    with use_kernels(kernels):
        yield kernels


@pytest.mark.parametrize('layout', ['bnl', 'dn'])
def test_triton_backend_compiled_matches_float64_under_the_interpreter(interpreted, layout):
    """fp32 inputs, z gate, D and bias: values and every input's gradient through the Triton kernels (the
    forward op's checkpoints and ungated output, the backward op's kernel launches)."""
    compiled_vs_reference('aot_eager', 'triton', torch.float32, layout)


def test_triton_backend_compiles_whole_with_symbolic_sizes_under_the_interpreter(interpreted):
    """dynamic=True (what dynamo does by itself from a frame's second input size on, e.g. the second hybrid stage
    of a compiled backbone): the forward's checkpoint count follows from the launch settings at the traced sizes,
    so the fake kernel specialises on them: no unbacked size, which dynamo in torch 2.11 breaks the graph at."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled_vs_reference(record, 'triton', torch.float32, 'bnl', dynamic=True, fullgraph=True)
    unbacked = [n.name for gm in graphs for n in gm.graph.nodes if free_unbacked_symbols(n.meta.get('example_value'))]
    assert len(graphs) == 1 and not unbacked, unbacked


@pytest.mark.slow
@pytest.mark.parametrize('layout', ['bnl', 'bgnl', 'dn'])
def test_opcheck_triton_backend_under_the_interpreter(interpreted, layout):
    x = scan_inputs(layout, torch.float32, z=layout != 'bgnl', D=layout != 'dn')
    args = tuple(t.requires_grad_(True) if t is not None else None for t in x.values())
    torch.library.opcheck(selective_scan_fwd, args + (True, 'triton', True))
    detached = tuple(t.detach() if t is not None else None for t in args)
    y, _, state, pre_gate = selective_scan_fwd(*detached, True, 'triton', True)
    torch.library.opcheck(selective_scan_bwd, (torch.randn_like(y),) + detached + (state, pre_gate, True, 'triton',
                                                                                   [True] * 8))


def test_triton_backward_refuses_other_launch_settings(interpreted):
    from mmmambavision.ops.triton import kernel_settings
    x = scan_inputs('bnl', torch.float32, length=40)
    with kernel_settings(BLOCK_T=16):
        y, _, state, pre_gate = selective_scan_fwd(*x.values(), True, 'triton', True)
    with kernel_settings(BLOCK_T=32), pytest.raises(RuntimeError, match='checkpoints'):
        selective_scan_bwd(torch.ones_like(y), *x.values(), state, pre_gate, True, 'triton', [True] * 8)
