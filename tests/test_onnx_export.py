"""ONNX export: the chunked selective scan against the float64 reference, a small backbone round-tripped through
onnxruntime, tools/deployment/export_onnx.py's arguments and (slow tier) its runs at MambaVision-T 224 px with
the classification windows and 512 px with the segmentation windows."""
import importlib.util
import os.path as osp
import re
import sys

import numpy as np
import pytest
import torch

from analysis_tools_cli import usage_error
from mmmambavision.ops import selective_scan, selective_scan_chunked, selective_scan_reference
from test_selective_scan import TOLERANCE, check_against_reference, make_inputs, relative_error

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'deployment', 'export_onnx.py')
SMALL_ARCH = dict(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4), layer_scale=1e-5)


def load_tool():
    spec = importlib.util.spec_from_file_location('export_onnx', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chunked_and_reference(inputs, chunk, **kwargs):
    """Values, last state and gradients of every input from the chunked scan and from the float64 loop."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    y, last = selective_scan_chunked(**leaves, return_last_state=True, chunk=chunk, **kwargs)
    y_ref, last_ref = selective_scan_reference(**leaves, return_last_state=True, **kwargs)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    names = list(leaves)
    grads = torch.autograd.grad((y.double() * grad_out).sum(), [leaves[k] for k in names])
    grads_ref = torch.autograd.grad((y_ref * grad_out).sum(), [leaves[k] for k in names])
    return y, last, y_ref, last_ref, dict(zip(names, zip(grads, grads_ref)))


# --- the chunked scan ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('chunk', [1, 7, 16, 64])
@pytest.mark.parametrize('length', [1, 37, 130])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_chunked_scan_matches_float64_loop(chunk, length, dtype):
    """Values, last state and all seven gradients, chunk sizes dividing L or not (the last chunk padded)."""
    inputs = make_inputs(2, 4, length, dstate=4, dtype=dtype)
    y, last, y_ref, last_ref, grads = chunked_and_reference(inputs, chunk, delta_softplus=True)
    assert y.dtype == dtype and y.shape == inputs['u'].shape and last.shape == (2, 4, 4)
    assert relative_error(y, y_ref) <= TOLERANCE[dtype]
    assert relative_error(last, last_ref) <= TOLERANCE[dtype]
    for name, (got, want) in grads.items():
        assert got.shape == inputs[name].shape and torch.isfinite(got).all(), name
        assert relative_error(got, want) <= TOLERANCE[dtype], (name, relative_error(got, want))


@pytest.mark.parametrize('variant', ['grouped', 'time_invariant', 'no_D', 'z', 'no_bias', 'no_softplus',
                                     'no_D_no_bias_no_softplus'])
@pytest.mark.parametrize('chunk', [5, 64])
def test_chunked_scan_options_match_float64_loop(variant, chunk):
    inputs = make_inputs(2, 6, 45, dstate=3, groups=3 if variant == 'grouped' else None, dtype=torch.float64)
    kwargs = dict(delta_softplus=variant not in ('no_softplus', 'no_D_no_bias_no_softplus'))
    if variant == 'time_invariant':
        inputs['B'] = torch.randn(6, 3, dtype=torch.float64)
        inputs['C'] = torch.randn(6, 3, dtype=torch.float64)
    if variant in ('no_D', 'no_D_no_bias_no_softplus'):
        inputs['D'] = None
    if variant in ('no_bias', 'no_D_no_bias_no_softplus'):
        inputs['delta_bias'] = None
    if variant == 'no_softplus':  # Δ = delta + bias ≥ 0 as it is in use
        inputs['delta'], inputs['delta_bias'] = inputs['delta'].abs(), inputs['delta_bias'].abs()
    # no_D_no_bias_no_softplus: Δ = delta of either sign, some exponents positive: still exact (no overflow here)
    if variant == 'z':
        inputs['z'] = torch.randn(2, 6, 45, dtype=torch.float64)
    y, last, y_ref, last_ref, grads = chunked_and_reference(inputs, chunk, **kwargs)
    assert relative_error(y, y_ref) <= 1e-10
    assert relative_error(last, last_ref) <= 1e-10
    for name, (got, want) in grads.items():
        assert relative_error(got, want) <= 1e-10, (name, relative_error(got, want))


def test_chunked_scan_stress_inputs_stay_finite_and_exact():
    """Large Δ·A (Δ up to ~30, |A| up to 30): every exponent ≤ 0, nothing overflows, no cancellation."""
    inputs = make_inputs(1, 4, 200, dstate=8, delta_scale=15.0, a_max=30.0)
    inputs['delta_bias'] = inputs['delta_bias'] + 5.0
    y, last, y_ref, last_ref, grads = chunked_and_reference(inputs, 64, delta_softplus=True)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    assert relative_error(y, y_ref) <= TOLERANCE[torch.float32]
    for name, (got, want) in grads.items():
        assert torch.isfinite(got).all(), name
        assert relative_error(got, want) <= TOLERANCE[torch.float32], (name, relative_error(got, want))


def test_chunked_scan_half_inputs_compute_in_fp32():
    inputs = make_inputs(2, 4, 70, dtype=torch.float16)
    y = selective_scan_chunked(**inputs, delta_softplus=True)
    assert y.dtype == torch.float16
    assert relative_error(y, selective_scan_reference(**inputs, delta_softplus=True)) <= TOLERANCE[torch.float16]


def test_chunked_scan_torch_scan_loop_equals_python_loop():
    """The loop form used during export (torch's scan operator) computes what the Python loop over chunks does."""
    inputs = make_inputs(2, 4, 150, dstate=4, groups=2)
    with torch.no_grad():
        by_python = selective_scan_chunked(**inputs, delta_softplus=True, return_last_state=True, loop='python')
        by_scan = selective_scan_chunked(**inputs, delta_softplus=True, return_last_state=True, loop='scan')
    for got, want in zip(by_scan, by_python):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_chunked_scan_rejects_bad_chunk_and_loop():
    inputs = make_inputs(1, 2, 5)
    with pytest.raises(ValueError, match='chunk must be a positive int'):
        selective_scan_chunked(**inputs, chunk=0)
    with pytest.raises(ValueError, match=r"loop must be one of \('python', 'scan'\)"):
        selective_scan_chunked(**inputs, loop='unrolled')


def test_dispatcher_chunked_backend_matches_float64_loop():
    """backend='chunked' through selective_scan: the dispatcher's checks, values, last state (without gradient,
    as every backend) and the gradients of all inputs."""
    check_against_reference(make_inputs(2, 4, 100), TOLERANCE[torch.float32], backend='chunked',
                            delta_softplus=True)
    leaves = {k: v.requires_grad_(True) for k, v in make_inputs(1, 2, 9).items()}
    _, last = selective_scan(**leaves, return_last_state=True, backend='chunked')
    assert not last.requires_grad


def test_backend_names_list_chunked(monkeypatch):
    with pytest.raises(ValueError, match=r"'auto', 'cuda', 'triton', 'torch', 'chunked'.*'onnx'"):
        selective_scan(**make_inputs(1, 2, 5), backend='onnx')
    monkeypatch.setenv('MMMV_SCAN_BACKEND', 'chunked')
    x = make_inputs(1, 2, 5)
    torch.testing.assert_close(selective_scan(**x), selective_scan(**x, backend='torch'))


# --- export of a small backbone --------------------------------------------------------------------------------

def test_small_backbone_exports_as_plain_onnx_and_matches_in_onnxruntime(tmp_path, capsys):
    """Stage 3 scans 144 tokens (three chunks, the last padded), stage 4 16; the file has a Scan node over the
    chunks, only standard-domain ops, and its outputs match PyTorch's in a fresh onnxruntime session."""
    pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    import onnx

    from mmmambavision import MambaVision
    tool = load_tool()
    model = MambaVision(SMALL_ARCH, window_size=(8, 8, 12, 4))
    model.init_weights()
    model.eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        want = [t.numpy() for t in model(image)]
    path = str(tmp_path / 'small.onnx')
    tool.export(model, image, path)
    onnx.checker.check_model(path)
    graph = onnx.load(path).graph
    op_types = {node.op_type for node in graph.node}
    assert 'Scan' in op_types and not op_types & {'Loop', 'If'}
    assert {node.domain for node in graph.node} <= {'', 'ai.onnx'}
    half = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    assert not any(t.data_type in half for t in graph.initializer)  # the layers' half-precision caches stay out
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in [*graph.input, *graph.output])
    assert [v.name for v in graph.output] == ['out0', 'out1', 'out2', 'out3']
    ok, differences = tool.compare(tool.run_onnxruntime(path, image), want, ['out0', 'out1', 'out2', 'out3'],
                                   1e-4)
    assert ok and len(differences) == 4 and max(differences) < 1e-4, differences
    assert 'out2 1x64x4x6: max relative difference' in capsys.readouterr().out


def test_compare_flags_a_difference_above_tolerance_and_a_shape_mismatch(capsys):
    tool = load_tool()
    want = [np.ones((1, 2, 3, 3), np.float32), np.ones((1, 4, 2, 2), np.float32)]
    ok, differences = tool.compare([want[0] * (1 + 1e-3), want[1]], want, ['out0', 'out1'], 1e-4)
    assert not ok and differences[0] == pytest.approx(1e-3, rel=1e-3) and differences[1] == 0
    ok, _ = tool.compare([want[0], np.ones((1, 4, 3, 3), np.float32)], want, ['out0', 'out1'], 1e-4)
    assert not ok and 'out1: shape (1, 4, 3, 3) from onnxruntime' in capsys.readouterr().out


@pytest.mark.parametrize('prefix', ['backbone.', ''])
def test_checkpoint_prefix_is_detected(tmp_path, prefix, capsys):
    """A det / seg checkpoint (backbone.* among other parts) and an ImageNet-style file (no prefix, with a
    classification head the backbone lacks) load the same backbone weights."""
    from mmmambavision import MambaVision
    tool = load_tool()
    source = MambaVision(SMALL_ARCH)
    state = {prefix + k: v for k, v in source.state_dict().items()}
    if prefix:
        state['neck.conv.weight'] = torch.ones(2)
    else:
        state['head.weight'] = torch.ones(2)
    path = tmp_path / 'weights.pth'
    torch.save({'state_dict': state, 'meta': {'epoch': 1}}, path)
    target = MambaVision(SMALL_ARCH)
    tool.load_weights(target, str(path))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)
    out = capsys.readouterr().out
    assert f'(prefix {prefix or "none"})' in out and '1 not in the backbone ignored' in out


def test_checkpoint_of_another_arch_is_refused(tmp_path):
    from mmmambavision import MambaVision
    tool = load_tool()
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': MambaVision(dict(SMALL_ARCH, dim=24)).state_dict()}, path)
    with pytest.raises(ValueError, match='shapes differ'):
        tool.load_weights(MambaVision(SMALL_ARCH), str(path))


# --- the command line ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('args,message', [
    (['--arch', 'huge', '--shape', '224', '224'], r'argument --arch: .*huge.*allowed: tiny, tiny2, small'),
    (['--arch', 'tiny', '--shape', '224', '224', '7'], r'argument --shape: .*32\.\.4096'),
    (['--arch', 'tiny', '--shape', '16'], r'argument --shape: .*got 16'),
    (['--arch', 'tiny'], r'the following arguments are required: --shape'),
    (['--shape', '224'], r'one of the arguments --arch --config is required'),
    (['--arch', 'tiny', '--config', 'x.py', '--shape', '224'], r'argument --config: not allowed with argument'),
    (['--config', 'missing.py', '--shape', '224'], r'argument --config: file not found: missing.py'),
    (['--arch', 'tiny', '--shape', '224', '--checkpoint', 'missing.pth'],
     r'argument --checkpoint: file not found: missing.pth'),
    (['--arch', 'tiny', '--shape', '224', '--opset', '11'], r'argument --opset: expected an int in 18\.\.23'),
    (['--arch', 'tiny', '--shape', '224', '--window-size', '8', '8', '0', '7'], r'argument --window-size: .*positive'),
    (['--arch', 'tiny', '--shape', '224', '--tolerance', '-1'], r'argument --tolerance: expected a positive'),
    (['--arch', 'tiny', '--shape', '224', '--out', 'model.pt'], r'argument --out: .*\.onnx'),
])
def test_bad_arguments_exit_2_naming_the_argument(args, message, capsys):
    if '--out' not in args:
        args = args + ['--out', 'x.onnx']
    assert re.search(message, usage_error(load_tool().main, args, capsys)), message


def test_config_whose_backbone_is_not_mambavision_is_refused(tmp_path, capsys):
    config = tmp_path / 'resnet.py'
    config.write_text("model = dict(backbone=dict(type='ResNet', depth=50))\n")
    with pytest.raises(SystemExit) as exit_info:
        load_tool().main(['--config', str(config), '--shape', '224', '--out', str(tmp_path / 'x.onnx')])
    assert exit_info.value.code == 2
    assert "argument --config: model.backbone is 'ResNet'" in capsys.readouterr().err


def test_missing_onnxruntime_names_the_pip_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import onnxruntime raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        load_tool().main(['--arch', 't', '--shape', '224', '--out', str(tmp_path / 'x.onnx')])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert 'onnxruntime not installed' in err and 'pip install onnx==1.23.2 onnxruntime==1.31.1' in err


def run_cli(args, timeout):
    import subprocess
    import os
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    return subprocess.run([sys.executable, TOOL, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def printed_differences(stdout):
    return {name: float(value) for name, value in
            re.findall(r'^(out\d) [\dx]+: max relative difference (\S+)$', stdout, flags=re.M)}


@pytest.mark.slow
def test_cli_tiny_224_classification_windows(tmp_path):
    pytest.importorskip('onnxruntime')
    out = tmp_path / 'mambavision_t_224.onnx'
    result = run_cli(['--arch', 'tiny', '--shape', '224', '224', '--window-size', '8', '8', '14', '7',
                      '--out', str(out)], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    differences = printed_differences(result.stdout)
    assert sorted(differences) == ['out0', 'out1', 'out2', 'out3'] and max(differences.values()) < 1e-4
    assert 'random (seeded) weights' in result.stdout and 'OK: largest relative difference' in result.stdout
    assert 'out3 1x640x7x7' in result.stdout and out.is_file()


@pytest.mark.slow
def test_cli_seg_config_512_with_a_segmentor_checkpoint(tmp_path):
    """The T segmentation config's backbone (windows 8, 8, 64, 32: stage 3 scans 4096 tokens, stage 4 1024) with
    weights from an mmseg-style checkpoint (backbone.* keys)."""
    pytest.importorskip('onnxruntime')
    pytest.importorskip('mmseg')
    from mmmambavision import MambaVision
    model = MambaVision('tiny')
    model.init_weights()
    with torch.no_grad():  # weights unlike the seeded random ones the tool would make
        for name, param in model.named_parameters():
            if name.endswith('A_log'):
                param.add_(0.5)
    checkpoint = tmp_path / 'upernet_t.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in model.state_dict().items()},
                'meta': {'iter': 160000}}, checkpoint)
    out = tmp_path / 'mambavision_t_seg512.onnx'
    result = run_cli(['--config', 'configs/seg/upernet_mambavision_t_160k_ade20k.py', '--checkpoint',
                      str(checkpoint), '--shape', '512', '512', '--out', str(out)], timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'window_size=(8, 8, 64, 32)' in result.stdout and '(prefix backbone.)' in result.stdout
    differences = printed_differences(result.stdout)
    assert sorted(differences) == ['out0', 'out1', 'out2', 'out3'] and max(differences.values()) < 1e-4
    assert 'out0 1x80x128x128' in result.stdout
