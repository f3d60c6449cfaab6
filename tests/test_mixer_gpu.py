"""The MambaVision mixer on CUDA (each scan backend, fp32 and fp16 autocast, inference and training) against the
float64 reference mixer on CPU. Skipped without CUDA; a backend that does not import here is skipped.

The mixer hands the scan strided views (x a slice of the conv output, B and C slices of the x_proj output) and
computes its projections as batched matmuls over transposed operands, on sequences padded with zero tokens to a
multiple of 8: this checks that every backend reads them right and that gradients reach the weights.
"""
import pytest
import torch

from float64_reference import _mixer as reference_mixer
from mmmambavision.models.mixer import MambaVisionMixer
from mmmambavision.ops.selective_scan import cuda_kernel_available, triton_available

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

GPU_BACKENDS = [  # the compiled backends, each skipped where it does not import
    pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available() or not cuda_kernel_available(),
                                                  reason='selective_scan_cuda is not built')),
    pytest.param('triton', marks=pytest.mark.skipif(not torch.cuda.is_available() or not triton_available(),
                                                    reason='triton is not installed')),
]
BACKENDS = GPU_BACKENDS + ['torch']


def _mixer_and_input(dim=320, seqs=6, length=196, seed=0):
    torch.manual_seed(seed)
    mixer = MambaVisionMixer(dim)
    with torch.no_grad():
        for p in mixer.parameters():  # weights of trained magnitude, not the tiny init
            p.add_(0.05 * torch.randn_like(p))
    return mixer, torch.randn(seqs, length, dim)


def _relative(got, want):
    return ((got.double().cpu() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('half', [False, True])
@pytest.mark.parametrize('length', [196, 49, 64])  # padded to 200 and 56 on CUDA (aligned rows); 64 as it is
def test_mixer_on_cuda_matches_float64(backend, half, length, monkeypatch):
    monkeypatch.setenv('MMMV_SCAN_BACKEND', backend)
    mixer, x = _mixer_and_input(length=length)
    sd = {k: v.double() for k, v in mixer.state_dict().items()}
    want = reference_mixer(x.double(), sd, '')
    mixer = mixer.cuda()
    with torch.autocast('cuda', dtype=torch.float16, enabled=half):
        with torch.no_grad():
            got = mixer(x.cuda())
        x_grad = x.detach().cuda().requires_grad_()
        trained = mixer(x_grad)
    tol = 2e-2 if half else 1e-3
    assert got.dtype == (torch.float16 if half else torch.float32)
    assert _relative(got, want) < tol
    assert _relative(trained, want) < tol
    # gradients of a weighted sum against float64 autograd through the reference
    weight = torch.randn(want.shape, dtype=torch.float64)
    x64 = x.detach().double().requires_grad_()
    sd64 = {k: v.clone().requires_grad_() for k, v in sd.items()}
    (reference_mixer(x64, sd64, '') * weight).sum().backward()
    (trained.float() * weight.float().cuda()).sum().backward()
    gtol = 5e-2 if half else 2e-3
    assert _relative(x_grad.grad, x64.grad) < gtol
    for name, param in mixer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert _relative(param.grad, sd64[name].grad) < gtol, name
