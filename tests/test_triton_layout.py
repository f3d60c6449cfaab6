"""The 'state' Triton kernels' register layout, checked on CPU by compiling them for an H100 (sm_90).

The scans over time are fast only when each thread holds consecutive steps (the scan runs inside the thread, then
across threads once). Triton lays a tile out by the widest aligned memory access it is tied to; rows of length
L % 16 != 0 (196, 49: MambaVision's classification windows) start unaligned, and without the kernels' layout hint
(``_tile_layout_hint``) their tiles got one step per thread in 32-step stripes across warps: the backward ran at
about a third of its speed. Compiling needs no GPU (Triton ships the sm_90 toolchain); skipped without Triton.
"""
import re

import pytest

triton = pytest.importorskip('triton')
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:  # pragma: no cover - a Triton without these public compiler entry points
    pytest.skip('this Triton has no ASTSource/GPUTarget', allow_module_level=True)

from mmmambavision.ops import scan_triton  # noqa: E402

HALF = ('u_ptr', 'delta_ptr', 'B_ptr', 'C_ptr', 'y_ptr', 'dy_ptr', 'du_ptr', 'ddelta_ptr')
STRIDES = ('stride_u', 'stride_delta', 'stride_dy', 'stride_Bb', 'stride_Bg', 'stride_Cb', 'stride_Cg', 'dim',
           'channels_per_group')


def compile_ttgir(kernel, constants, num_warps):
    """TritonGPU IR of ``kernel`` for sm_90: fp16 activations, fp32 parameters; pointers 16-byte aligned, strides
    multiples of 16 (as for contiguous inputs), the length not (L = 196)."""
    names = kernel.arg_names
    signature = {}
    for name in names:
        if name in constants:
            signature[name] = 'constexpr'
        elif name.endswith('_ptr'):
            signature[name] = '*fp16' if name in HALF else '*fp32'
        else:
            signature[name] = 'i32'
    aligned = {(i,): [['tt.divisibility', 16]] for i, name in enumerate(names)
               if name.endswith('_ptr') or name in STRIDES}
    source = ASTSource(fn=kernel, signature=signature, attrs=aligned,
                       constexprs={(names.index(k),): v for k, v in constants.items()})
    return triton.compile(source, target=GPUTarget('cuda', 90, 32), options=dict(num_warps=num_warps)).asm['ttgir']


def scan_layouts(ttgir):
    """(shape, sizePerThread) of every tt.scan's operands."""
    encodings = {name: [int(v) for v in per_thread.split(',')] for name, per_thread in
                 re.findall(r'^#(\w+) = #ttg\.blocked<\{sizePerThread = \[([\d, ]+)\]', ttgir, re.M)}
    lines = ttgir.splitlines()
    found = []
    for i, line in enumerate(lines):
        if 'tt.scan.return' in line:
            match = re.search(r'\}\) : \(tensor<([\dx]+)xf32, #(\w+)>', lines[i + 1])
            assert match, lines[i + 1]
            assert match.group(2) in encodings, f'scan operand layout #{match.group(2)} is not a blocked layout'
            found.append((match.group(1), encodings[match.group(2)]))
    return found


@pytest.mark.parametrize('part', ['fwd', 'bwd'])
def test_state_kernel_scans_hold_consecutive_steps_per_thread_at_unaligned_lengths(part):
    config, kernel_args, _, _ = scan_triton._cached_launch(128, 160, 160, 196, 8)  # the default at L = 196
    assert config['kernel'] == 'state'
    constants = dict(HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, **kernel_args)
    num_warps = constants.pop('num_warps')
    if part == 'fwd':
        constants['STORE_CKPT'] = True
    else:
        constants['BC_MODE'] = scan_triton.BC_MODES['atomic']
    layouts = scan_layouts(compile_ttgir(getattr(scan_triton, f'_state_{part}_kernel'), constants, num_warps))
    assert len(layouts) == (1 if part == 'fwd' else 2) * constants['N_STATES'], layouts
    for shape, per_thread in layouts:
        assert per_thread[-1] >= 4, f'scan over a {shape} tile with sizePerThread {per_thread}: steps striped'
