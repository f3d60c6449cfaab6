"""Checks the Triton scan kernels' logic on CPU with the Triton interpreter (run by test_selective_scan.py).

Usage: ``TRITON_INTERPRET=1 python tests/scan_triton_interpret_check.py`` — the variable must be set before
Triton is imported, hence a separate process. Exits non-zero if any check fails (each prints a line).

Besides contiguous inputs in every kernel variant, it checks inputs that are views into wider tensors as the mixer
passes them (read in place, gradients reaching the parents), and the inference path (no autograd Function, no
checkpoints, same values).
"""
import os
import sys
from contextlib import contextmanager

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


class KernelSpy:
    """Stands in for a kernel (a module global, looked up at each launch): records the launches, then runs them."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.calls = []
        self.grids = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((args, kwargs))
            self.grids.append(tuple(grid))
            return self.kernel[grid](*args, **kwargs)
        return launch


KERNEL_NAMES = tuple(f'_{family}_{part}_kernel' for family in scan_triton.KERNELS
                     for part in ('fwd', 'bwd')) + ('_state_carry_kernel',)


@contextmanager
def spying():
    spies = {name: KernelSpy(getattr(scan_triton, name)) for name in KERNEL_NAMES}
    try:
        for name, spy in spies.items():
            setattr(scan_triton, name, spy)
        yield spies
    finally:
        for name, spy in spies.items():
            setattr(scan_triton, name, spy.kernel)


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


def check_strided(name, leaves, scan_inputs, tolerance, tuning, in_place, **kwargs):
    """Values and gradients w.r.t. the parent tensors vs float64; with ``in_place``, that the forward and backward
    kernels got the views themselves (no copies), else that they got contiguous copies."""
    scan_triton._TUNING.clear()
    scan_triton._TUNING.update(tuning)
    family = tuning.get('kernel') or scan_triton._default_config(2, 4, 4, 49, 8)['kernel']
    leaves = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
    names = list(leaves)
    with spying() as spies:
        views = scan_inputs(leaves)
        y, last = selective_scan(**views, return_last_state=True, backend='triton', **kwargs)
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        grads = torch.autograd.grad((y.double() * grad_out).sum(), [leaves[k] for k in names])
    y_ref, last_ref = selective_scan_reference(**scan_inputs(leaves), return_last_state=True, **kwargs)
    grads_ref = torch.autograd.grad((y_ref * grad_out).sum(), [leaves[k] for k in names])
    errors = {'y': relative_error(y, y_ref), 'last_state': relative_error(last, last_ref)}
    errors.update({f'd{k}': relative_error(g, r) for k, g, r in zip(names, grads, grads_ref)})
    finite = torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    ok = (finite and y.dtype == views['u'].dtype and all(e <= tolerance for e in errors.values())
          and all(g.dtype == leaves[k].dtype and g.shape == leaves[k].shape for k, g in zip(names, grads)))
    fwd, bwd = spies[f'_{family}_fwd_kernel'].calls, spies[f'_{family}_bwd_kernel'].calls
    carry = spies['_state_carry_kernel'].calls  # the chunk-parallel backward's first pass (BWD_T)
    split = int(bool(tuning.get('BWD_T')))
    launched = (len(fwd) == 1 and len(bwd) == 1 and len(carry) == split
                and sum(len(s.calls) for s in spies.values()) == 2 + split)
    layout_ok = launched
    if launched:
        for position, key in ((0, 'u'), (3, 'B'), (4, 'C')):
            got, view = fwd[0][0][position], views[key]
            for passed in [got, bwd[0][0][position]] + ([carry[0][0][2]] if split and key == 'C' else []):
                same = passed.data_ptr() == view.data_ptr() and passed.stride() == view.stride()
                layout_ok &= same if in_place else passed.is_contiguous() and not same
        layout_ok &= fwd[0][1]['STORE_CKPT'] is True
    ok = ok and layout_ok
    worst = max(errors, key=errors.get)
    print(f"{'ok  ' if ok else 'FAIL'} {name}: worst {worst} {errors[worst]:.2e} (tol {tolerance:.0e})"
          f"{'' if layout_ok else ' -- launches or layouts not as expected'}", flush=True)
    return ok


class NoFunction:
    """Stands in for TritonSelectiveScan where no gradient can flow: the inference path must not use it."""

    @staticmethod
    def apply(*args):
        raise AssertionError('the autograd Function was used without gradients')


def check_no_grad(name, leaves, scan_inputs, tuning, **kwargs):
    """Without gradients (grad mode off, inference mode, or no input requiring grad): the same y and h_L as the
    gradient path, bit for bit, from a forward launch that stores no checkpoints, without the autograd Function."""
    scan_triton._TUNING.clear()
    scan_triton._TUNING.update(tuning)
    family = tuning.get('kernel') or scan_triton._default_config(2, 4, 4, 49, 8)['kernel']
    grad_leaves = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
    y_ref, last_ref = selective_scan(**scan_inputs(grad_leaves), return_last_state=True, backend='triton',
                                     **kwargs)
    ok = y_ref.requires_grad
    function = scan_triton.TritonSelectiveScan
    scan_triton.TritonSelectiveScan = NoFunction
    try:
        for mode, inputs, context in (('no_grad', grad_leaves, torch.no_grad),
                                      ('inference_mode', grad_leaves, torch.inference_mode),
                                      ('no input requires grad', leaves, torch.enable_grad)):
            with spying() as spies, context():
                y, last = selective_scan(**scan_inputs(inputs), return_last_state=True, backend='triton', **kwargs)
            calls = spies[f'_{family}_fwd_kernel'].calls
            launched = len(calls) == 1 and sum(len(s.calls) for s in spies.values()) == 1
            # no checkpoint buffer: the kernel's ckpt pointer is the last-state buffer, never written through
            no_ckpt = launched and calls[0][1]['STORE_CKPT'] is False and calls[0][0][8] is calls[0][0][9]
            same = torch.equal(y, y_ref.detach()) and torch.equal(last, last_ref)
            if not (launched and no_ckpt and same and not y.requires_grad):
                print(f'     {mode}: launched {launched}, no checkpoints {no_ckpt}, same values {same}, '
                      f'requires_grad {y.requires_grad}')
                ok = False
    finally:
        scan_triton.TritonSelectiveScan = function
    print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)
    return ok


def refused(key, values, **tuning):
    """Every value of ``key`` (with ``tuning``) makes the launch config raise a ValueError that names the key."""
    ok = True
    for bad in values:
        scan_triton._TUNING.clear()
        scan_triton._TUNING.update(tuning, **{key: bad})
        try:
            scan_triton._cached_launch(2, 8, 8, 50, 8)
            ok = False
        except ValueError as error:
            ok &= key in str(error)
    scan_triton._TUNING.clear()
    return ok


def check_split_launches():
    """BWD_T: the forward stores a checkpoint every BWD_T steps, the backward runs a carry pass and then one
    program per chunk (3-D grids); without it, no carry pass and one program per channel block."""
    inputs = make_inputs(2, 4, 40, 8, None, torch.float32)
    ok = True
    for bwd_t, chunks in ((8, 5), (0, 3)):
        scan_triton._TUNING.clear()
        scan_triton._TUNING.update(kernel='state', BLOCK_T=16, BWD_T=bwd_t, BLOCK_D=2)
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        with spying() as spies:
            y = selective_scan(**leaves, backend='triton', delta_softplus=True)
            y.sum().backward()
        fwd, bwd, carry = (spies[f'_state_{k}_kernel'] for k in ('fwd', 'bwd', 'carry'))
        ckpt = fwd.calls[0][0][8]
        want_grid = (2, 2, chunks) if bwd_t else (2, 2)
        good = (ckpt.shape == (2, 4, chunks, 8) and fwd.calls[0][1]['CKPT_T'] == (bwd_t or 16)
                and fwd.grids == [(2, 2)] and bwd.grids == [want_grid]
                and carry.grids == ([want_grid] if bwd_t else []) and bwd.calls[0][1]['SPLIT'] is bool(bwd_t))
        if not good:
            print(f'     BWD_T={bwd_t}: checkpoints {tuple(ckpt.shape)}, grids fwd {fwd.grids} bwd {bwd.grids} '
                  f'carry {carry.grids}')
        ok &= good
    ok &= refused('BWD_T', (3, 32), kernel='state', BLOCK_T=16)  # a power of 2 up to BLOCK_T
    print(f"{'ok  ' if ok else 'FAIL'} chunk-parallel backward (BWD_T): checkpoints, carry pass, grids", flush=True)
    return ok


def check_launch_cache():
    """The launch config is computed once per shape and ``_TUNING`` content; a changed ``_TUNING`` takes effect."""
    scan_triton._TUNING.clear()
    first = scan_triton._cached_launch(2, 8, 8, 50, 8)
    ok = scan_triton._cached_launch(2, 8, 8, 50, 8) is first and first[0]['kernel'] == 'state'
    ok &= first[3] == -(-50 // first[0]['chunk']) and first[2] == (2, 8 // first[0]['BLOCK_D'])
    scan_triton._TUNING.update(kernel='seq', SEGS=4, STEPS=3)
    seq = scan_triton._cached_launch(2, 8, 8, 50, 8)
    ok &= seq[0]['kernel'] == 'seq' and seq[0]['chunk'] == 12 and seq[3] == 5
    scan_triton._TUNING['STEPS'] = 2
    ok &= scan_triton._cached_launch(2, 8, 8, 50, 8)[0]['chunk'] == 8
    scan_triton._TUNING.clear()
    ok &= scan_triton._cached_launch(2, 8, 8, 50, 8) is first
    ok &= refused('UNROLL', (0, 9), kernel='state')  # states unrolled per iteration: 1 to d_state
    print(f"{'ok  ' if ok else 'FAIL'} launch config cache follows _TUNING", flush=True)
    return ok


def main():
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    scan = dict(kernel='scan')
    seq1 = dict(kernel='seq', SEGS=1, STEPS=4)
    seqs = dict(kernel='seq', SEGS=4, STEPS=3)  # chunks of 12 steps: L=40 ends inside a segment
    state = dict(kernel='state', BLOCK_T=16)
    # (UNROLL changes the compiled code only; the 'state' checks below run it at 1 and at d_state, the defaults
    # with one and with several channels per program)
    state_split = dict(state, BWD_T=8)  # the chunk-parallel backward, 8-step chunks (L=40: five, L=29: four)
    results = []
    for length in (1, 7, 49):  # the per-shape default config
        results.append(check(f'fp32 L={length} default', make_inputs(2, 4, length, 8, None, f32), TOLERANCE[f32], {},
                             delta_softplus=True))
    for name, kernel in (('scan', dict(scan, BLOCK_T=16)), ('seq S1', seq1), ('seq S4', seqs), ('state', state),
                         ('state split', state_split)):
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
        z = torch.randn(1, 3, 20, generator=torch.Generator().manual_seed(2))  # every input seeded: reproducible
        results.append(check(f'{name} fp32 d_state 3 (padded), no D/bias/softplus, z gate',
                             {**make_inputs(1, 3, 20, 3, None, f32), 'D': None, 'delta_bias': None, 'z': z},
                             TOLERANCE[f32], dict(kernel, BLOCK_D=1)))
        stress = make_inputs(1, 4, 64, 8, None, f32, delta_scale=10.0, a_max=30.0)
        stress['delta_bias'] = torch.tensor([-2.0, 5.0, 12.0, 20.0])
        results.append(check(f'{name} fp32 stress (large Δ, |A| up to 30)', stress, 1e-4, dict(kernel, BLOCK_D=1),
                             delta_softplus=True))
        for dtype in (f16, bf16):
            results.append(check(f'{name} {dtype} L=40', make_inputs(2, 4, 40, 8, None, dtype), TOLERANCE[dtype],
                                 dict(kernel, BLOCK_D=2), delta_softplus=True))
    results.append(check('seq S1 fp16 grouped store (dB/dC written in fp16)', make_inputs(1, 4, 23, 8, 2, f16),
                         TOLERANCE[f16], dict(seq1, BLOCK_D=2), delta_softplus=True))
    results.append(check_launch_cache())
    results.append(check_split_launches())
    # views into wider tensors, read in place (batch strides; B/C batch and group strides); token-major layouts
    # are copied; gradients must reach the parent tensors
    for name, kernel in (('scan', dict(scan, BLOCK_T=16)), ('seq S1', seq1), ('seq S4', seqs), ('state', state),
                         ('state split', state_split)):
        views = strided_inputs(2, 4, 40, 8, None, f32, 'views')
        results.append(check_strided(f'{name} fp32 views (u = xz[:, :d], B/C = x_dbl slices) atomic', *views,
                                     TOLERANCE[f32], dict(kernel, BLOCK_D=2, bc='atomic'), True,
                                     delta_softplus=True))
        grouped = strided_inputs(2, 4, 29, 4, 2, f32, 'views')
        results.append(check_strided(f'{name} fp32 grouped views store', *grouped, TOLERANCE[f32],
                                     dict(kernel, BLOCK_D=2), True, delta_softplus=True))
        transposed = strided_inputs(2, 4, 29, 4, None, f32, 'transposed')
        results.append(check_strided(f'{name} fp32 token-major (copied) partial', *transposed, TOLERANCE[f32],
                                     dict(kernel, BLOCK_D=1, bc='partial'), False, delta_softplus=True))
        half = strided_inputs(1, 4, 23, 8, None, f16, 'views')
        results.append(check_strided(f'{name} fp16 views store (dB/dC written in fp16)', *half, TOLERANCE[f16],
                                     dict(kernel, BLOCK_D=4), True, delta_softplus=True))
        results.append(check_no_grad(f'{name} without gradients: no Function, no checkpoints, same y and h_L',
                                     *strided_inputs(2, 4, 40, 8, None, f32, 'views'),
                                     dict(kernel, BLOCK_D=2), delta_softplus=True))
    results.append(check_no_grad('default config without gradients, L=49',
                                 *strided_inputs(2, 4, 49, 8, None, f32, 'views'), {}, delta_softplus=True))
    scan_triton._TUNING.clear()
    return 0 if all(results) else 1


if __name__ == '__main__':
    sys.exit(main())
