"""The fused residual + layer scale + LayerNorm of half-precision inference (``mmmambavision.ops.residual_norm``),
its Triton kernel run by Triton's interpreter on CPU against float64, and the backbone's inference with it against
the backbone's inference without it. The interpreter runs in a child process: ``TRITON_INTERPRET=1`` has to be set
before Triton is first imported, and other test modules need Triton's kernels compiled-mode."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mmmambavision.models import layers
from mmmambavision.ops.residual_norm import residual_norm, residual_norm_available

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_interpreted(script: str) -> dict:
    pytest.importorskip('triton')
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]))
    done = subprocess.run([sys.executable, '-c', textwrap.dedent(script)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernel_matches_float64():
    """Sum and normalised output against float64, with and without layer scale, fp32 and fp16 residuals, widths that
    are and are not powers of two, row counts that do not fill the last program."""
    result = _run_interpreted('''
        import json, torch
        import torch.nn.functional as F
        from mmmambavision.ops.residual_norm import residual_norm
        gen = torch.Generator().manual_seed(0)
        out = []
        for rows, width, x_dtype, with_gamma in [(37, 48, torch.float32, True), (37, 48, torch.float16, False),
                                                 (5, 64, torch.float16, True), (70, 24, torch.float32, False)]:
            x = (2 * torch.randn(rows, width, generator=gen) + 0.5).to(x_dtype)
            y = torch.randn(rows, width, generator=gen).half()
            gamma = torch.rand(width, generator=gen) if with_gamma else None
            w, b = torch.rand(width, generator=gen) + 0.5, torch.randn(width, generator=gen)
            total, normed = residual_norm(x, y, gamma, w, b, 1e-5, torch.float16)
            want = x.double() + y.double() * (gamma.double() if with_gamma else 1)
            want_norm = F.layer_norm(total.double(), (width, ), w.double(), b.double(), 1e-5)
            out.append(dict(total_dtype=str(total.dtype), normed_dtype=str(normed.dtype),
                            total=((total.double() - want).abs().max() / want.abs().max()).item(),
                            normed=((normed.double() - want_norm).abs().max() / want_norm.abs().max()).item()))
        print(json.dumps(out))
    ''')
    # the fp32 layer scale promotes the sum as it does in torch
    assert [r['total_dtype'] for r in result] == ['torch.float32', 'torch.float16', 'torch.float32', 'torch.float32']
    assert all(r['normed_dtype'] == 'torch.float16' for r in result)
    for r, x_dtype in zip(result, ['fp32', 'fp16', 'fp32', 'fp32']):
        assert r['total'] < (1e-6 if x_dtype == 'fp32' else 1e-3), r
        assert r['normed'] < 2e-3, r


@pytest.mark.parametrize('layer_scale', [None, 0.5])
def test_backbone_inference_with_the_fused_kernel(layer_scale):
    """fp16 inference of a small backbone (two hybrid stages) with the fused kernel against the same model
    without it: the kernel replaces every residual addition but each stage's last, the outputs agree to fp16."""
    result = _run_interpreted(f'''
        import json, torch
        from mmmambavision import MambaVision
        from mmmambavision.models import layers
        torch.manual_seed(0)
        arch = dict(dim=16, in_dim=8, depths=(1, 1, 3, 2), num_heads=(1, 2, 2, 4), layer_scale={layer_scale!r})
        model = MambaVision(arch, window_size=(8, 8, 4, 2)).eval()
        with torch.no_grad():  # every LayerNorm its own: a kernel given the wrong one must show
            for name, p in model.named_parameters():
                if 'norm' in name:
                    p.copy_((1 if name.endswith('weight') else 0) + 0.5 * torch.randn_like(p))
        x = torch.randn(2, 3, 64, 64)
        calls = []
        fused = layers.residual_norm
        layers.residual_norm = lambda *a: calls.append(a[0].dtype) or fused(*a)
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.float16):
            plain = model(x)
            layers.FUSE_RESIDUAL_NORM_ON = ('cpu', )
            out = model(x)
        print(json.dumps(dict(calls=len(calls), dtypes=sorted(set(map(str, calls))),
                              diff=[((a.float() - b.float()).norm() / b.float().norm()).item()
                                    for a, b in zip(out, plain)])))
    ''')
    assert result['calls'] == 2 * 3 - 1 + 2 * 2 - 1  # stage 3: 3 blocks, stage 4: 2 blocks
    assert all(d < 5e-3 for d in result['diff']), result['diff']


def test_unavailable_off_cuda_and_checked_arguments():
    """Without CUDA (and outside the interpreter) the backbone keeps its unfused path; bad shapes are named."""
    cpu = torch.zeros(2, 8)
    if os.environ.get('TRITON_INTERPRET', '0') in ('', '0'):
        assert not residual_norm_available(cpu)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert layers.fused_residual_norm_dtype(cpu.bfloat16()) is None  # CPU is not in FUSE_RESIDUAL_NORM_ON
    with pytest.raises(ValueError, match='same shape'):
        residual_norm(cpu, torch.zeros(2, 4), None, torch.ones(8), torch.zeros(8), 1e-5, torch.float16)
    with pytest.raises(ValueError, match=r'shape \(8,\)'):
        residual_norm(cpu, cpu, torch.ones(4), torch.ones(8), torch.zeros(8), 1e-5, torch.float16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('layer_scale', [None, 1e-5, 0.5])
def test_backbone_inference_with_the_fused_kernel_on_cuda(layer_scale, monkeypatch):
    """The compiled kernel on CUDA: fp16 inference at the classification windows (196 and 49 tokens per window)
    with it against without it, and one call of it against float64."""
    pytest.importorskip('triton')
    from mmmambavision import MambaVision
    torch.manual_seed(0)
    arch = dict(dim=32, in_dim=16, depths=(1, 1, 4, 3), num_heads=(1, 2, 4, 8), layer_scale=layer_scale)
    model = MambaVision(arch, out_indices=(2, 3)).cuda().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'norm' in name:
                p.copy_((1 if name.endswith('weight') else 0) + 0.5 * torch.randn_like(p))
    x = torch.randn(4, 3, 224, 224, device='cuda')
    calls = []
    monkeypatch.setattr(layers, 'residual_norm', lambda *a: calls.append(1) or residual_norm(*a))
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16):
        out = model(x)
        monkeypatch.setattr(layers, 'FUSE_RESIDUAL_NORM_ON', ())
        plain = model(x)
    assert len(calls) == 2 * 4 - 1 + 2 * 3 - 1
    for a, b in zip(out, plain):
        assert ((a.float() - b.float()).norm() / b.float().norm()).item() < 5e-3
    rows, width = 1000, 320
    xs = torch.randn(rows, width, device='cuda')
    ys = torch.randn(rows, width, device='cuda', dtype=torch.float16)
    gamma, w, b = (torch.rand(width, device='cuda') for _ in range(3))
    total, normed = residual_norm(xs, ys, gamma, w, b, 1e-5, torch.float16)
    want = xs.double() + ys.double() * gamma.double()
    assert ((total.double() - want).abs().max() / want.abs().max()).item() < 1e-6
    want_norm = torch.nn.functional.layer_norm(total.double(), (width, ), w.double(), b.double(), 1e-5)
    assert ((normed.double() - want_norm).abs().max() / want_norm.abs().max()).item() < 2e-3
