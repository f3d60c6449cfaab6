"""Benchmark the selective-scan backends: one table of backend × shape × dtype.

Columns: forward ms, forward+backward ms, peak MiB (CUDA: peak allocated above the inputs; CPU: growth of the
process's resident high-water mark, measured in a fresh process with glibc's mmap threshold at 128 KiB
so that freed buffers leave the resident set), max relative error of y and of the worst input gradient vs float64.
float64 truth: values from the sequential loop (``selective_scan_reference``), gradients from the torch backend
run in float64 (the tests tie it to the loop at 1e-10).

On CPU the table also has ``ref-loop``: our own straightforward equivalent of mamba-ssm's ``selective_scan_ref``
algorithm (fp32; exp(Δ·A) and Δ·B·u for the whole sequence up front, then a Python loop over L with autograd;
mamba-ssm itself is not installed on the CPU machines), measured in the same run.

Usage::

    python tools/benchmark_scan.py --device cpu
    python tools/benchmark_scan.py --device cuda
    python tools/benchmark_scan.py --device cuda --cuda-graph --host-time   # also GPU time alone, host time alone
    python tools/benchmark_scan.py --device cuda --tune     # also sweep the Triton kernel settings
    python tools/benchmark_scan.py --device cuda --tune-only --tune-verbose   # the sweep alone, every config

The sweep (``--tune``/``--tune-only``) tries settings of the Triton kernels through
``mmmambavision.ops.triton.kernel_settings`` (BLOCK_D, BLOCK_T, num_warps, UNROLL, the chunk-parallel backward's
BWD_T and bwd_warps, dB/dC strategy 'atomic'/'partial') at each shape in the first dtype, then the best two of
those in the other dtypes, and prints the best settings per shape and dtype next to the current default and the
cuda kernel (when selective_scan_cuda imports), with the defaults they suggest
(``mmmambavision/ops/triton/config.py``). Compilation dominates its time (seconds a config); ``--tune-budget``
caps it.
"""
import argparse
import math
import os
import subprocess
import sys
import statistics
import time

import torch
import torch.nn.functional as F

from mmmambavision.ops import selective_scan, selective_scan_reference
from timing import graph_times, host_time, synced_times
from mmmambavision.ops.selective_scan import cuda_kernel_available, triton_available

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
DEFAULT_SHAPES = {
    # MambaVision-T: stage 3/4 classification windows (128 images), detection windows at 800×1344 (bs 2)
    'cuda': ['128x160x196', '128x320x49', '2x160x12544', '2x320x3136'],
    'cpu': ['1x160x3136', '8x160x196', '8x320x49'],
}
REF_LOOP_SHAPES = ['1x160x3136']


def reference_style_loop(u, delta, A, B, C, D, delta_bias, delta_softplus):
    """Straightforward equivalent of mamba-ssm's selective_scan_ref algorithm (written here, fp32)."""
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(torch.einsum('bdl,dn->bdln', delta, A))
    drive = torch.einsum('bdl,bnl,bdl->bdln', delta, B.float(), u)
    state = A.new_zeros((u.shape[0], u.shape[1], A.shape[1]))
    ys = []
    for t in range(u.shape[2]):
        state = decay[:, :, t] * state + drive[:, :, t]
        ys.append(torch.einsum('bdn,bn->bd', state, C[:, :, t].float()))
    y = torch.stack(ys, dim=2)
    y = y + u * D[:, None]
    return y.to(dtype_in)


def make_inputs(shape, dstate, dtype, device, seed=0):
    batch, dim, length = shape
    gen = torch.Generator().manual_seed(seed)
    x = dict(u=torch.randn(batch, dim, length, generator=gen),
             delta=torch.randn(batch, dim, length, generator=gen) * 0.5,
             A=-torch.exp(torch.rand(dim, dstate, generator=gen) * 2.7),  # -(1..15), like -exp(A_log)
             B=torch.randn(batch, dstate, length, generator=gen),
             C=torch.randn(batch, dstate, length, generator=gen),
             D=torch.ones(dim), delta_bias=torch.rand(dim, generator=gen) * 4 - 6)
    for k in ('u', 'delta', 'B', 'C'):
        x[k] = x[k].to(dtype)
    return {k: v.to(device) for k, v in x.items()}


class PeakMemory:
    """Peak memory above the starting point: CUDA allocator stats, or the process's resident high-water mark."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self._rss('VmRSS')
            try:
                with open('/proc/self/clear_refs', 'w') as f:
                    f.write('5')  # reset VmHWM
            except OSError:
                self.start = None
        return self

    def __exit__(self, *exc):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        elif self.start is not None:
            self.mib = (self._rss('VmHWM') - self.start) / 2**20
        else:
            self.mib = float('nan')

    @staticmethod
    def _rss(key):
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) * 1024
        return 0


def timed(fn, device, repeats, warmup, graph=False):
    """Median milliseconds of ``fn()``: eager calls, synchronised, or (``graph``) replays of a CUDA graph."""
    if graph:
        return 1e3 * statistics.median(graph_times(fn, repeats, warmup))
    return 1e3 * statistics.median(synced_times(fn, repeats, warmup, device))


def rel_err(got, want):
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def float64_truth(inputs, grad_out):
    x64 = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
    with torch.no_grad():
        y = selective_scan_reference(**{k: v.detach() for k, v in x64.items()}, delta_softplus=True)
    y_chunked = selective_scan(**x64, delta_softplus=True, backend='torch')
    grads = torch.autograd.grad(y_chunked, list(x64.values()), grad_out.double())
    return y, dict(zip(x64, grads))


def make_forward(backend, leaves):
    if backend == 'ref-loop':
        return lambda: reference_style_loop(**leaves, delta_softplus=True)
    return lambda: selective_scan(**leaves, delta_softplus=True, backend=backend)


def cpu_peak_in_fresh_process(backend, shape, dname, dstate, threads):
    """CPU peak memory of one fwd+bwd, measured in a new process (glibc keeps freed memory resident here)."""
    command = [sys.executable, os.path.abspath(__file__), '--device', 'cpu', '--peak-case', backend,
               'x'.join(map(str, shape)), dname, '--dstate', str(dstate)]
    if threads:
        command += ['--threads', str(threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 17))
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float('nan')


def peak_case(backend, shape, dname, dstate):
    inputs = make_inputs(shape, dstate, DTYPES[dname], torch.device('cpu'))
    leaves = {k: v.requires_grad_(True) for k, v in inputs.items()}
    forward = make_forward(backend, leaves)
    with PeakMemory(torch.device('cpu')) as peak:
        y = forward()
        torch.autograd.grad(y, list(leaves.values()), torch.ones_like(y))
    print(f'{peak.mib:.1f}')


def run_case(backend, inputs, device, repeats, warmup, truth, graph=False, host=False):
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    forward = make_forward(backend, leaves)
    grad_out = torch.ones(inputs['u'].shape, device=device) if truth is None else truth[2]
    grad_out = grad_out.to(inputs['u'].dtype)

    def forward_backward():
        y = forward()
        return y, torch.autograd.grad(y, list(leaves.values()), grad_out)

    with torch.no_grad():
        fwd_ms = timed(forward, device, repeats, warmup)
    slow = backend == 'ref-loop'  # one instrumented run is all the time it deserves
    both_ms = None if slow else timed(forward_backward, device, repeats, warmup)
    graph_ms = (float('nan'), float('nan'))
    if graph and not slow:
        with torch.no_grad():
            graph_fwd = timed(forward, device, repeats, warmup, graph=True)
        graph_ms = (graph_fwd, timed(forward_backward, device, repeats, warmup, graph=True))
    host_us = 1e6 * host_time(forward_backward, 100, warmup, device) if host and not slow else float('nan')
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        y, grads = forward_backward()
        if slow:
            both_ms = (time.perf_counter() - start) * 1e3
    err_y = err_g = float('nan')
    if truth is not None:
        err_y = rel_err(y, truth[0])
        err_g = max(rel_err(g, truth[1][k]) for k, g in zip(leaves, grads))
    return fwd_ms, both_ms, peak.mib, err_y, err_g, graph_ms, host_us


def tune_candidates(shape, dstate, level):
    """Kernel settings to try at a shape (keyword arguments of ``mmmambavision.ops.triton.kernel_settings``).

    Compiling a config takes seconds, so 'quick' keeps to chunks near the whole sequence and the default's
    neighbours: its block sizes with the other loop over the states (UNROLL) and the other dB/dC strategy, the
    chunk-parallel backward (BWD_T) on sequences longer than a backward chunk, then chunk length × channels per
    program × warps around 8 values per thread; 'full' tries every combination."""
    from mmmambavision.ops.triton import default_block_sizes
    batch, dim, length = shape
    block_n = triton_next_pow2(dstate)
    cands = []

    def add(**config):
        config.setdefault('BWD_T', 0)  # the sequential backward, unless a candidate below says otherwise
        if dim % config['BLOCK_D'] or config['BLOCK_D'] * config['BLOCK_T'] * block_n < 16 * config['num_warps']:
            return  # BLOCK_D must divide the channels; more than half the threads idle
        if config not in cands:
            cands.append(config)

    # the default's block sizes, then chunk length × channels per program × warps around 8 values per thread
    block_d, block_t, warps = default_block_sizes(batch, dim, dim, length)
    add(BLOCK_D=block_d, BLOCK_T=block_t, num_warps=warps, bc='atomic', UNROLL=1)
    add(BLOCK_D=block_d, BLOCK_T=block_t, num_warps=warps, bc='atomic', UNROLL=dstate)
    add(BLOCK_D=block_d, BLOCK_T=block_t, num_warps=warps, bc='partial')
    # the chunk-parallel backward (BWD_T) for sequences longer than one backward chunk, on the default forward
    for bwd_t in (128, 256, 512, 1024):
        if bwd_t < length and bwd_t <= block_t:
            for per_thread in (8, 4):
                bwd_warps = bwd_t // (32 * per_thread)
                if 1 <= bwd_warps <= 8:
                    add(BLOCK_D=block_d, BLOCK_T=block_t, num_warps=warps, bc='atomic', BWD_T=bwd_t,
                        bwd_warps=bwd_warps)
    longest = triton_next_pow2(length)
    for block_t in (64, 128, 256, 512, 1024, 2048):
        if block_t > max(64, longest) or (level != 'full' and block_t < min(256, longest)):
            continue
        for block_d in (1, 2, 4, 8, 16):
            if block_d > 1 and batch * dim // block_d < (256 if level == 'full' else 512):
                continue  # too few programs to fill a GPU
            for per_thread in (4, 8, 16):
                warps = block_d * block_t // (32 * per_thread)
                if 1 <= warps <= 8:
                    add(BLOCK_D=block_d, BLOCK_T=block_t, num_warps=warps, bc='atomic')
                    if level == 'full' or batch * dim < 4096:  # few sequences (detection windows): more variants
                        add(BLOCK_D=block_d, BLOCK_T=block_t, num_warps=warps, bc='partial')
                        add(BLOCK_D=block_d, BLOCK_T=block_t, num_warps=warps, bc='atomic',
                            UNROLL=dstate if block_d == 1 else 1)  # the other loop than the default
    return cands


def bench_backend(inputs, backend, graph=False):
    """(fwd ms, fwd+bwd ms) of a backend at the active kernel settings: medians of triton.testing.do_bench (CUDA
    events around eager calls), or with ``graph`` of CUDA graph replays (GPU time alone)."""
    from triton.testing import do_bench
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    grad_out = torch.ones_like(inputs['u'])
    forward = make_forward(backend, leaves)

    def both():
        torch.autograd.grad(forward(), list(leaves.values()), grad_out)

    def median_ms(fn, rep):
        if graph:
            return 1e3 * statistics.median(graph_times(fn, runs=10, warmup=3))
        return do_bench(fn, warmup=5, rep=rep, return_mode='median')

    with torch.no_grad():
        fwd = median_ms(forward, 15)
    return fwd, median_ms(both, 25)


def bench_triton_config(inputs, config, graph=False):
    """(fwd ms, fwd+bwd ms) of the Triton backend with the kernel settings ``config`` (None: the defaults), see
    ``bench_backend``."""
    from mmmambavision.ops.triton import kernel_settings
    with kernel_settings(**(config or {})):
        return bench_backend(inputs, 'triton', graph)


def config_name(config):
    if config is None:
        return 'default'
    short = {'BLOCK_D': 'D', 'BLOCK_T': 'T', 'num_warps': 'w', 'bc': '', 'UNROLL': 'unroll', 'BWD_T': 'bwdT',
             'bwd_warps': 'bwdw', 'num_stages': 'stages'}
    return ' '.join(f'{short.get(k, k)}{v}' for k, v in config.items())


def tune_triton(shapes, dtypes, dstate, device, level='quick', top=2, verbose=False, budget=None,
                graph=False):
    """Sweep the Triton kernel settings: all candidates in the first dtype, the best few of those in the others."""
    from mmmambavision.ops.triton import launch_config
    start = time.perf_counter()
    how = 'CUDA graph replays' if graph else 'do_bench'
    print(f'\nTriton sweep ({level}): fwd / fwd+bwd ms, median of {how}; cuda = selective_scan_cuda')
    summary = []
    for shape in shapes:
        batch, dim, length = shape
        default = launch_config(batch, dim, dim, length, dstate).as_dict()
        default = {k: v for k, v in default.items()
                   if k not in ('BLOCK_N', 'ckpt', 'N_STATES') and v is not None and (v or k != 'BWD_T')}
        cands = tune_candidates(shape, dstate, level)
        ranked = None
        for dname in dtypes:
            inputs = make_inputs(shape, dstate, DTYPES[dname], device)
            cuda = (float('nan'), float('nan'))
            if cuda_kernel_available():
                cuda = bench_backend(inputs, 'cuda', graph)
            base = bench_triton_config(inputs, None, graph)
            trial = cands if ranked is None else [c for _, c in ranked[:top]]
            results = []
            shape_start = time.perf_counter()
            for config in trial:
                if budget and results and time.perf_counter() - shape_start > budget / len(shapes) / 2:
                    print(f'  time budget: skipping the remaining {len(trial) - len(results)} configs')
                    break
                try:
                    results.append((bench_triton_config(inputs, config, graph), config))
                except Exception as error:  # out of resources, compile errors
                    print(f'  {config_name(config)}: {type(error).__name__}: {str(error)[:120]}')
            results.sort(key=lambda r: r[0][1])
            if verbose:
                for ms, c in results:
                    print(f'    {ms[0]:7.3f} {ms[1]:7.3f}  {config_name(c)}')
                print(f'    ({len(results)} configs, {time.perf_counter() - shape_start:.0f} s)')
            if ranked is None:
                ranked = [(ms, c) for ms, c in results]
            (best_fwd, best_both), best = results[0]
            summary.append((shape, dname, cuda, base, (best_fwd, best_both), best))
            runners = '; '.join(f'{config_name(c)} {ms[1]:.3f}' for ms, c in results[1:4])
            print(f'{shape_name(shape):>12} {dname}: cuda {cuda[0]:.3f}/{cuda[1]:.3f}  default '
                  f'[{config_name(default)}] {base[0]:.3f}/{base[1]:.3f}  best [{config_name(best)}] '
                  f'{best_fwd:.3f}/{best_both:.3f}  (next: {runners})  [{time.perf_counter() - start:.0f} s]',
                  flush=True)
    print(f"\n{'shape':>12} {'dtype':<5} {'cuda fwd':>8} {'cuda f+b':>8} {'dflt fwd':>8} {'dflt f+b':>8} "
          f"{'best fwd':>8} {'best f+b':>8} {'cuda/best':>9}  best config")
    for shape, dname, cuda, base, best_ms, best in summary:
        print(f'{shape_name(shape):>12} {dname:<5} {cuda[0]:8.3f} {cuda[1]:8.3f} {base[0]:8.3f} {base[1]:8.3f} '
              f'{best_ms[0]:8.3f} {best_ms[1]:8.3f} {cuda[1] / best_ms[1]:9.2f}  {config_name(best)}')
    print('\nsuggested defaults (mmmambavision/ops/triton/config.py; best fwd+bwd per shape, first dtype):')
    for shape, dname, cuda, base, best_ms, best in summary:
        if dname == dtypes[0]:
            print(f'  batch*dim={shape[0] * shape[1]:>6} L={shape[2]:>6}: {best}')
    print(f'sweep took {time.perf_counter() - start:.0f} s')


def triton_next_pow2(n):
    return 1 << (n - 1).bit_length()


def shape_name(shape):
    return '×'.join(str(s) for s in shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--shapes', nargs='+', help='BxDxL, e.g. 128x160x196 (defaults depend on the device)')
    parser.add_argument('--dtypes', nargs='+', choices=list(DTYPES), help='default: all on cuda, fp32 on cpu')
    parser.add_argument('--backends', nargs='+', help='default: every backend available on the device')
    parser.add_argument('--dstate', type=int, default=8, help='d_state (MambaVision: 8)')
    parser.add_argument('--repeats', type=int, default=None)
    parser.add_argument('--no-error', action='store_true', help='skip the float64 comparison')
    parser.add_argument('--no-ref-loop', action='store_true', help='CPU: skip the selective_scan_ref-style loop')
    parser.add_argument('--threads', type=int, help='CPU: torch intra-op threads (default: torch\'s choice)')
    parser.add_argument('--peak-case', nargs=3, metavar=('BACKEND', 'SHAPE', 'DTYPE'), help=argparse.SUPPRESS)
    parser.add_argument('--cuda-graph', action='store_true',
                        help='CUDA: also time each case replayed from a CUDA graph (no host overhead), and time the '
                             'sweep that way')
    parser.add_argument('--host-time', action='store_true',
                        help='also the host time per forward+backward call: the mean over 100 calls issued without '
                             'synchronising (CUDA: what the host spends per call while the GPU keeps up)')
    parser.add_argument('--tune', action='store_true', help='CUDA: sweep the Triton kernel settings afterwards')
    parser.add_argument('--tune-only', action='store_true', help='CUDA: only the sweep, no backend table')
    parser.add_argument('--tune-level', choices=['quick', 'full'], default='quick',
                        help='quick: a sweep of about a minute and a half on an H100; full: every variant')
    parser.add_argument('--tune-budget', type=float, default=None,
                        help='seconds for the sweep (all shapes); stops trying configs past it')
    parser.add_argument('--tune-kernels', nargs='+', choices=['state'],
                        help="the kernel families the sweep tries: 'state', the only one (kept for old command "
                             "lines)")
    parser.add_argument('--tune-verbose', action='store_true', help='print every config\'s times')
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_case:
        backend, shape, dname = args.peak_case
        peak_case(backend, tuple(int(v) for v in shape.split('x')), dname, args.dstate)
        return
    device = torch.device(args.device)
    graph = args.cuda_graph
    if graph and device.type != 'cuda':
        parser.error('argument --cuda-graph: needs --device cuda')
    shapes = [tuple(int(v) for v in s.lower().split('x')) for s in (args.shapes or DEFAULT_SHAPES[args.device])]
    dtypes = args.dtypes or (list(DTYPES) if args.device == 'cuda' else ['fp32'])
    repeats = args.repeats or (20 if args.device == 'cuda' else 3)
    warmup = 3 if args.device == 'cuda' else 1
    if args.backends:
        backends = args.backends
    elif args.device == 'cuda':
        backends = [b for b, ok in (('cuda', cuda_kernel_available()), ('triton', triton_available())) if ok]
        backends.append('torch')
    else:
        backends = ['torch'] + ([] if args.no_ref_loop else ['ref-loop'])

    if args.tune_only:
        tune_triton(shapes, dtypes, args.dstate, device, args.tune_level, verbose=args.tune_verbose,
                    budget=args.tune_budget, graph=graph)
        return
    where = torch.cuda.get_device_name() if device.type == 'cuda' else f'cpu, {torch.get_num_threads()} threads'
    print(f'device: {where}'
          f'; torch {torch.__version__}; d_state {args.dstate}; softplus + delta_bias + D, no z; '
          f'median of {repeats}')
    header = (f"{'backend':<9} {'shape (b×d×L)':<14} {'dtype':<5} {'fwd ms':>9} {'fwd+bwd ms':>11} "
              f"{'peak MiB':>9} {'err y':>8} {'err grad':>8} {'speed-up':>9}")
    if graph:
        header += f" {'graph fwd':>9} {'graph f+b':>9} {'speed-up':>9}"
    if args.host_time:
        header += f" {'host f+b us':>11}"
    print(header)
    print('-' * len(header))
    for shape in shapes:
        for dname in dtypes:
            inputs = make_inputs(shape, args.dstate, DTYPES[dname], device)
            truth = None
            if not args.no_error:
                grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
                y64, grads64 = float64_truth(inputs, grad_out)
                truth = (y64, grads64, grad_out)
            rows = {}
            for backend in backends:
                if backend == 'ref-loop' and shape_name(shape) not in map(shape_name, [
                        tuple(int(v) for v in s.split('x')) for s in REF_LOOP_SHAPES]):
                    continue
                fallback = backend == 'torch' and device.type == 'cuda'  # slow there: one timed run, no extras
                reps = 1 if backend == 'ref-loop' or fallback else repeats
                rows[backend] = run_case(backend, inputs, device, reps, 0 if reps == 1 else warmup, truth,
                                         graph=graph and not fallback, host=args.host_time and not fallback)
            baseline = rows.get('cuda') or rows.get('ref-loop')
            for backend, (fwd, both, mib, err_y, err_g, (graph_fwd, graph_both), host_us) in rows.items():
                if device.type == 'cpu':
                    mib = cpu_peak_in_fresh_process(backend, shape, dname, args.dstate, args.threads)
                speed = f'{baseline[1] / both:8.2f}×' if baseline else ''
                line = (f'{backend:<9} {shape_name(shape):<14} {dname:<5} {fwd:9.3f} {both:11.3f} {mib:9.1f} '
                        f'{err_y:8.1e} {err_g:8.1e} {speed:>9}')
                if graph:
                    graph_speed = '' if not baseline or math.isnan(graph_both) else \
                        f'{baseline[5][1] / graph_both:8.2f}×'
                    line += f' {graph_fwd:9.3f} {graph_both:9.3f} {graph_speed:>9}'
                if args.host_time:
                    line += f' {host_us:11.1f}'
                print(line, flush=True)
    print('speed-up: fwd+bwd time of the baseline (cuda on GPU, ref-loop on CPU) / this row\'s')
    if graph:
        print('graph fwd, graph f+b: ms per call replayed from a CUDA graph (GPU time without host overhead), '
              'median of the repeats, each the mean of 10 replays; its speed-up likewise')
    if args.host_time:
        print('host f+b us: host microseconds per forward+backward call, mean of 100 calls issued without '
              'synchronising (CUDA: the host\'s share of an eager call while the GPU keeps up)')
    if args.tune and device.type == 'cuda':
        tune_triton(shapes, dtypes, args.dstate, device, args.tune_level, verbose=args.tune_verbose,
                    budget=args.tune_budget, graph=graph)


if __name__ == '__main__':
    main()
