"""Compile the Triton scan kernels for an NVIDIA GPU on any machine (no GPU needed) and print their resource use.

Triton ships the sm_90 toolchain (ptxas, cuobjdump), so a kernel's registers per thread, spills and instruction
mix can be read on a CPU machine: a first look at a config before spending GPU time on it. Timings still need the
GPU (``tools/analysis_tools/benchmark_scan.py``). ``--tuning`` takes the settings of
``mmmambavision.ops.triton.kernel_settings``.

Usage::

    python tools/analysis_tools/scan_kernel_stats.py                    # the default config, MambaVision's shapes
    python tools/analysis_tools/scan_kernel_stats.py --shapes 128x160x196 --tuning UNROLL=8
    python tools/analysis_tools/scan_kernel_stats.py --dtype fp32 --tuning BLOCK_D=4 BLOCK_T=64

Columns: registers per thread, spill (stack) bytes, shared memory bytes, SASS instructions, and among them warp
shuffles (SHFL), barriers (BAR), shared-memory stores/loads (STS/LDS), special-function ops (MUFU: exp2, log, rcp),
global loads (LDG) and atomics (RED/ATOM). Inputs as the mixer passes them: 16-byte aligned pointers, strides
multiples of 16, the length as it is (L = 196 and 49 are not multiples of 16).
"""
import argparse
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mmmambavision.ops.triton import kernel_settings, kernel_launch_args, launch_config, BC_MODES, kernels

ACTIVATIONS = ('u_ptr', 'delta_ptr', 'B_ptr', 'C_ptr', 'y_ptr', 'dy_ptr', 'du_ptr', 'ddelta_ptr')
ALIGNED_INTS = ('stride_u', 'stride_delta', 'stride_dy', 'stride_Bb', 'stride_Bg', 'stride_Cb', 'stride_Cg', 'dim',
                'channels_per_group')
DTYPES = {'fp16': 'fp16', 'bf16': 'bf16', 'fp32': 'fp32'}
DEFAULT_SHAPES = ['128x160x196', '128x320x49', '2x160x12544', '2x320x3136']
TOOLS = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin')


def compile_kernel(kernel, constants, num_warps, dtype='fp16', length_multiple_of_16=False, arch=90):
    """``kernel`` compiled for sm_``arch``: activations in ``dtype``, parameters and buffers fp32."""
    names = kernel.arg_names
    signature = {}
    for name in names:
        if name in constants:
            signature[name] = 'constexpr'
        elif name.endswith('_ptr'):
            signature[name] = f'*{dtype}' if name in ACTIVATIONS else '*fp32'
        else:
            signature[name] = 'i32'
    aligned = {(i,): [['tt.divisibility', 16]] for i, name in enumerate(names)
               if name.endswith('_ptr') or name in ALIGNED_INTS or (name == 'length' and length_multiple_of_16)}
    source = ASTSource(fn=kernel, signature=signature, attrs=aligned,
                       constexprs={(names.index(k),): v for k, v in constants.items()})
    return triton.compile(source, target=GPUTarget('cuda', arch, 32), options=dict(num_warps=num_warps))


def scan_layouts(ttgir):
    """(tile shape, sizePerThread) of the operands of every ``tt.scan`` in TritonGPU IR."""
    encodings = {name: [int(v) for v in per_thread.split(',')] for name, per_thread in
                 re.findall(r'^#(\w+) = #ttg\.blocked<\{sizePerThread = \[([\d, ]+)\]', ttgir, re.M)}
    lines = ttgir.splitlines()
    found = []
    for i, line in enumerate(lines):
        if 'tt.scan.return' in line:
            match = re.search(r'\}\) : \(tensor<([\dx]+)xf32, #(\w+)>', lines[i + 1])
            if not match or match.group(2) not in encodings:
                raise ValueError(f'unexpected scan operand (not a blocked layout?): {lines[i + 1].strip()}')
            found.append((match.group(1), encodings[match.group(2)]))
    return found


def resource_usage(compiled):
    """Registers, spill bytes, shared memory and the SASS instruction mix of a compiled kernel (cuobjdump)."""
    with tempfile.TemporaryDirectory() as folder:
        cubin = os.path.join(folder, 'kernel.cubin')
        with open(cubin, 'wb') as f:
            f.write(compiled.asm['cubin'])
        tool = os.path.join(TOOLS, 'cuobjdump')
        usage = subprocess.run([tool, '-res-usage', cubin], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, '-sass', cubin], capture_output=True, text=True, check=True).stdout
    registers = re.search(r'REG:(\d+)', usage)
    stack = re.search(r'STACK:(\d+)', usage)
    ops = re.findall(r'/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)', sass)

    def count(*prefixes):
        return sum(1 for op in ops if op.startswith(prefixes))
    return dict(registers=int(registers.group(1)) if registers else -1, spill=int(stack.group(1)) if stack else -1,
                shared=compiled.metadata.shared, instructions=len(ops), shfl=count('SHFL'), bar=count('BAR'),
                sts=count('STS'), lds=count('LDS'), mufu=count('MUFU'), ldg=count('LDG'), atomics=count('RED', 'ATOM'))


def launch_constants(batch, dim, length, dstate, part, tuning):
    """The kernel, its launch config, constexpr arguments and num_warps that a call at this shape launches with the
    kernel settings ``tuning`` (``kernel_settings`` keys); ``part`` 'fwd', 'bwd' or 'carry'."""
    with kernel_settings(**tuning):
        config = launch_config(batch, dim, dim, length, dstate)
    constants = dict(kernel_launch_args(config, part, length), HAS_BIAS=True, SOFTPLUS=True)
    num_warps = constants.pop('num_warps')
    constants.pop('num_stages', None)
    if part != 'carry':
        constants['HAS_D'] = True
    if part == 'fwd':
        constants['STORE_CKPT'] = True
    elif part == 'bwd':
        constants['BC_MODE'] = BC_MODES[config.bc]
    return getattr(kernels, f'state_{part}_kernel'), config, constants, num_warps


def parse_tuning(items):
    tuning = {}
    for item in items or []:
        key, sep, value = item.partition('=')
        if not sep:
            raise SystemExit(f'--tuning: expected KEY=VALUE, got {item!r}')
        tuning[key] = int(value) if value.lstrip('-').isdigit() else value
    return tuning


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--shapes', nargs='+', default=DEFAULT_SHAPES, help='b×d×L (x-separated)')
    parser.add_argument('--dtype', choices=list(DTYPES), default='fp16')
    parser.add_argument('--dstate', type=int, default=8)
    parser.add_argument('--tuning', nargs='*', metavar='KEY=VALUE',
                        help='kernel settings (mmmambavision.ops.triton.kernel_settings), e.g. UNROLL=1 BLOCK_T=512 '
                             'num_warps=2')
    parser.add_argument('--arch', type=int, default=90, help='compute capability x10 (90: H100/H200)')
    args = parser.parse_args()
    tuning = parse_tuning(args.tuning)
    try:
        with kernel_settings(**tuning):
            pass
    except ValueError as error:
        parser.error(f'argument --tuning: {error}')
    columns = ('registers', 'spill', 'shared', 'instructions', 'shfl', 'bar', 'sts', 'lds', 'mufu', 'ldg', 'atomics')
    print(f"{'shape':<12} {'part':<4} {'config':<52} " + ' '.join(f'{c[:6]:>6}' for c in columns))
    for shape in args.shapes:
        batch, dim, length = (int(v) for v in shape.lower().split('x'))
        for part in ('fwd', 'bwd'):
            kernel, config, constants, num_warps = launch_constants(batch, dim, length, args.dstate, part, tuning)
            compiled = compile_kernel(kernel, constants, num_warps, DTYPES[args.dtype], length % 16 == 0, args.arch)
            usage = resource_usage(compiled)
            shown = dict(config.as_dict(), BLOCK_T=constants.get('BLOCK_T'), num_warps=num_warps)  # as launched
            name = ' '.join(f'{k}={shown[k]}' for k in ('BLOCK_D', 'BLOCK_T', 'UNROLL', 'num_warps'))
            if part == 'bwd' and config.BWD_T:
                name += ' split'
            print(f'{shape:<12} {part:<4} {name:<52} ' + ' '.join(f'{usage[c]:>6}' for c in columns), flush=True)


if __name__ == '__main__':
    main()
