"""Checks the Triton scan kernels' logic on CPU with the Triton interpreter (run by test_selective_scan.py).

Usage: ``TRITON_INTERPRET=1 python tests/scan_triton_interpret_check.py`` — the variable must be set before
Triton is imported, hence a separate process. Exits non-zero on the first mismatch.
"""
import os
import sys

import torch

assert os.environ.get('TRITON_INTERPRET') == '1', 'run with TRITON_INTERPRET=1'

from mmmambavision.ops import scan_triton  # noqa: E402
from mmmambavision.ops import selective_scan, selective_scan_reference  # noqa: E402

TOLERANCE = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


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


def check(name, inputs, tolerance, tuning, **kwargs):
    scan_triton._TUNING.clear()
    scan_triton._TUNING.update(tuning)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    y, last = selective_scan(**leaves, return_last_state=True, backend='triton', **kwargs)
    y_ref, last_ref = selective_scan_reference(**leaves, return_last_state=True, **kwargs)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    names = list(leaves)
    grads = torch.autograd.grad((y.double() * grad_out).sum(), [leaves[k] for k in names])
    grads_ref = torch.autograd.grad((y_ref * grad_out).sum(), [leaves[k] for k in names])
    errors = {'y': relative_error(y, y_ref), 'last_state': relative_error(last, last_ref)}
    errors.update({f'd{k}': relative_error(g, r) for k, g, r in zip(names, grads, grads_ref)})
    finite = torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    ok = (finite and y.dtype == inputs['u'].dtype and all(e <= tolerance for e in errors.values())
          and all(g.dtype == leaves[k].dtype for k, g in zip(names, grads)))
    worst = max(errors, key=errors.get)
    print(f"{'ok  ' if ok else 'FAIL'} {name}: worst {worst} {errors[worst]:.2e} (tol {tolerance:.0e})", flush=True)
    return ok


def main():
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    scan = dict(kernel='scan')
    seq1 = dict(kernel='seq', SEGS=1, STEPS=4)
    seqs = dict(kernel='seq', SEGS=4, STEPS=3)  # chunks of 12 steps: L=40 ends inside a segment
    results = []
    for length in (1, 7, 49):  # the per-shape default config
        results.append(check(f'fp32 L={length} default', make_inputs(2, 4, length, 8, None, f32), TOLERANCE[f32], {},
                             delta_softplus=True))
    for name, kernel in (('scan', dict(scan, BLOCK_T=16)), ('seq S1', seq1), ('seq S4', seqs)):
        # several chunks; several channels per program with dB/dC atomics, per-program partial sums, or (one
        # program per group) plain stores; groups > 1
        for bc in ('atomic', 'partial'):
            results.append(check(f'{name} fp32 L=40 BLOCK_D=2 {bc}', make_inputs(2, 4, 40, 8, None, f32),
                                 TOLERANCE[f32], dict(kernel, BLOCK_D=2, bc=bc, num_warps=1), delta_softplus=True))
        results.append(check(f'{name} fp32 grouped L=29 BLOCK_D = channels per group (store)',
                             make_inputs(2, 6, 29, 4, 3, f32), TOLERANCE[f32], dict(kernel, BLOCK_D=2),
                             delta_softplus=True))
        results.append(check(f'{name} fp32 grouped L=29 BLOCK_D=1 partial', make_inputs(2, 6, 29, 4, 3, f32),
                             TOLERANCE[f32], dict(kernel, BLOCK_D=1, bc='partial'), delta_softplus=True))
        results.append(check(f'{name} fp32 d_state 3 (padded), no D/bias/softplus, z gate',
                             {**make_inputs(1, 3, 20, 3, None, f32), 'D': None, 'delta_bias': None,
                              'z': torch.randn(1, 3, 20)}, TOLERANCE[f32], dict(kernel, BLOCK_D=1)))
        stress = make_inputs(1, 4, 64, 8, None, f32, delta_scale=10.0, a_max=30.0)
        stress['delta_bias'] = torch.tensor([-2.0, 5.0, 12.0, 20.0])
        results.append(check(f'{name} fp32 stress (large Δ, |A| up to 30)', stress, 1e-4, dict(kernel, BLOCK_D=1),
                             delta_softplus=True))
        for dtype in (f16, bf16):
            results.append(check(f'{name} {dtype} L=40', make_inputs(2, 4, 40, 8, None, dtype), TOLERANCE[dtype],
                                 dict(kernel, BLOCK_D=2), delta_softplus=True))
    results.append(check('seq S1 fp16 grouped store (dB/dC written in fp16)', make_inputs(1, 4, 23, 8, 2, f16),
                         TOLERANCE[f16], dict(seq1, BLOCK_D=2), delta_softplus=True))
    return 0 if all(results) else 1


if __name__ == '__main__':
    sys.exit(main())
