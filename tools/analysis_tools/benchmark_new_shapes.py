"""What a new input size costs the Cascade Mask R-CNN training step; one table.

Multi-scale training (the 3x configs' pipeline) meets a new padded batch size now and then, and the first step at a
size does one-off work on top of the step: cuDNN builds the execution plans of every convolution at that size
(forward, data and weight gradients), cuBLAS picks its GEMM algorithms, an attention kernel its plan. Each row - a
detector of benchmark_det.py - runs in a process of its own (those caches are per process, and the rows share the
detector's neck and heads: a row after another would find their plans built), warms up at --base-size, then takes one
step at each of --sizes sizes it has not met and the same step again: the difference is what a new size costs. The
sizes are those the 3x pipeline gives an image of --image-size, short side scaled to 480, 512, ... 800 of 800
(keep-ratio), padded to 32 as the configs' data preprocessor does.

    python tools/analysis_tools/benchmark_new_shapes.py              # CUDA: T, T with CUDA graphs, Swin-T
    python tools/analysis_tools/benchmark_new_shapes.py --profile    # and the operators whose host time grows
    python tools/analysis_tools/benchmark_new_shapes.py --det-models mambavision_t@8,8,8,4 swin_t --sizes 2 \
        --image-size 160 224 --base-size 64 96

--profile: two more new sizes (short side 448 and 416 of 800) under torch.profiler, new and again; the operators
with the most extra host time at a new size. Over a whole schedule the number of distinct padded sizes is bounded
(multiples of 32 up to the longest side), so this is a warm-up cost that a 200-iteration run weighs far more than
a 36-epoch one (docs/benchmarks.md).
"""
import argparse
import datetime
import json
import os.path as osp
import shlex
import statistics
import subprocess
import sys
import time
from typing import List, Optional, Sequence, Tuple

import torch

import benchmark_det
from timing import non_negative_int, positive_int, synced_times

REPO = benchmark_det.REPO
RESULT_TAG = 'NEW_SHAPES_ROW '  # a row's process prints its result as one JSON line after this
PAD = 32  # the configs' data preprocessor pads the batch to a multiple of this
SHORT_SIDES = tuple(range(480, 801, 32))  # the 3x multi-scale short sides (long side <= 1333)
PROFILE_SHORT_SIDES = (448, 416)  # --profile's extra sizes, below the timed ones
REFERENCE = 'swin_t'
DEFAULTS = dict(  # per device type
    cuda=dict(models=['mambavision_t', 'mambavision_t_graphs', 'swin_t'], image=(800, 1024), base=(800, 1344),
              sizes=len(SHORT_SIDES), warmup=5),
    cpu=dict(models=['mambavision_t@8,8,8,4', 'swin_t'], image=(160, 224), base=(64, 96), sizes=2, warmup=1),
)
TOP_OPERATORS = 12


def padded(size: int) -> int:
    return -(-size // PAD) * PAD


def multi_scale_sizes(image: Sequence[int], short_sides: Sequence[int] = SHORT_SIDES) -> List[Tuple[int, int]]:
    """The distinct padded (H, W) of an image of ``image`` (H, W) resized keeping its ratio so that its short side
    is each of ``short_sides`` of 800 (the pipeline's sizes are for COCO-sized images: 800 stands for the short side
    of ``image``) and its long side at most 1333 / 800 of that, in order."""
    height, width = image
    short, long = min(image), max(image)
    sizes = []
    for side in short_sides:
        scale = min(side / 800, 1333 / 800 * short / long)
        size = (padded(int(height * scale + 0.5)), padded(int(width * scale + 0.5)))
        if size not in sizes:
            sizes.append(size)
    return sizes


def timed(step, cuda: bool) -> float:
    """Seconds of one ``step()``, synchronised on CUDA."""
    return synced_times(step, 1, 0, torch.device('cuda' if cuda else 'cpu'))[0]


def operator_host_us(step, cuda: bool):
    """(seconds, {operator: (self host microseconds, calls)}) of one ``step()`` under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        seconds = timed(step, cuda)
    return seconds, {e.key: (e.self_cpu_time_total, e.count) for e in prof.key_averages()}


def extra_operators(pairs, top: int = TOP_OPERATORS):
    """The operators whose self host time grows most at a new size: ``pairs`` is [(new, again)] per profiled size,
    each {operator: (microseconds, calls)}; returns [(operator, extra ms per size, new ms, again ms, calls per step
    at the new size)], the largest extra first."""
    names = set()
    for new, again in pairs:
        names |= set(new) | set(again)
    rows = []
    for name in names:
        new_ms = sum(new.get(name, (0, 0))[0] for new, _ in pairs) / len(pairs) / 1e3
        again_ms = sum(again.get(name, (0, 0))[0] for _, again in pairs) / len(pairs) / 1e3
        calls = sum(new.get(name, (0, 0))[1] for new, _ in pairs) / len(pairs)
        rows.append((name, new_ms - again_ms, new_ms, again_ms, calls))
    rows.sort(key=lambda row: (-row[1], row[0]))
    return rows[:top]


def run_row(spec: str, args) -> dict:
    """One row, in this process: build, warm up, a step at each new size and again; the result as a dict."""
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger
    from mmengine.optim import AmpOptimWrapper

    import mmmambavision  # noqa: F401  (registers MambaVision)
    from mmmambavision.ops import selected_backend

    MMLogger.get_instance('mmmambavision_benchmark', log_level='WARNING')
    register_all_modules()
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    cuda = device.type == 'cuda'
    name, window = benchmark_det.parse_det_model(spec)
    start = time.perf_counter()
    label, model, optim_wrapper = benchmark_det.build_detector(name, window, device)
    scaler = getattr(optim_wrapper, 'loss_scaler', None) if isinstance(optim_wrapper, AmpOptimWrapper) else None

    def step_of(height: int, width: int, seed: int):
        data = benchmark_det.make_det_batch(args.batch_size, height, width, seed=seed)
        return lambda: model.train_step(data, optim_wrapper)

    base = step_of(*args.base_size, seed=0)
    first = timed(base, cuda)
    for _ in range(args.warmup):
        base()
    if scaler is not None:
        benchmark_det.settle_loss_scaler(base, scaler)
    built = time.perf_counter() - start
    records, skipped = [], 0
    for index, (height, width) in enumerate(args.sizes_list):
        step = step_of(height, width, seed=1 + index)
        before = scaler.get_scale() if scaler is not None else None
        new = timed(step, cuda)
        again = min(timed(step, cuda) for _ in range(args.again))
        if scaler is not None and scaler.get_scale() < before:
            skipped += 1
        records.append(dict(size=[height, width], new_s=new, again_s=again))
    operators, profiled = [], profile_sizes(args) if args.profile else []
    if profiled:
        pairs = []
        for index, size in enumerate(profiled):
            step = step_of(*size, seed=100 + index)
            pairs.append((operator_host_us(step, cuda)[1], operator_host_us(step, cuda)[1]))
        operators = [dict(operator=n, extra_ms=e, new_ms=a, again_ms=b, calls=c)
                     for n, e, a, b, c in extra_operators(pairs)]
    return dict(spec=spec, name=name, label=label, scan_backend=str(selected_backend(device)), first_step_s=first,
                warm_up_s=built, steps=records, loss_scale_drops=skipped, operators=operators,
                profiled_sizes=[list(size) for size in profiled], **summary(records))


def profile_sizes(args) -> List[Tuple[int, int]]:
    """--profile's sizes: those of PROFILE_SHORT_SIDES that are neither timed nor the warm-up's (new to the row)."""
    taken = set(args.sizes_list) | {tuple(args.base_size)}
    return [size for size in multi_scale_sizes(args.image_size, PROFILE_SHORT_SIDES) if size not in taken]


def summary(records) -> dict:
    """Means and medians over a row's sizes."""
    extra = [r['new_s'] - r['again_s'] for r in records]
    return dict(mean_new_s=statistics.mean(r['new_s'] for r in records),
                mean_again_s=statistics.mean(r['again_s'] for r in records),
                mean_extra_s=statistics.mean(extra), median_extra_s=statistics.median(extra))


def table(rows) -> List[str]:
    """The table's lines: one row per detector, its extra cost per new size against Swin-T's when there is one."""
    reference = next((row for row in rows if row.get('name') == REFERENCE and 'error' not in row), None)
    lines = ['| model | new sizes | step s at a new size (mean) | the same step again (mean) | '
             'extra s per new size (mean / median) | extra vs Swin-T (s, mean) | first step s | scan |',
             '|---|---:|---:|---:|---:|---:|---:|---|']
    for row in rows:
        if 'error' in row:
            lines.append(f'| {row["spec"]} | failed: {row["error"]} | | | | | | |')
            continue
        versus = f'{row["mean_extra_s"] - reference["mean_extra_s"]:+.3f}' if reference else '-'
        lines.append(f'| {row["label"]} | {len(row["steps"])} | {row["mean_new_s"]:.3f} | {row["mean_again_s"]:.3f} | '
                     f'{row["mean_extra_s"]:.3f} / {row["median_extra_s"]:.3f} | {versus} | '
                     f'{row["first_step_s"]:.1f} | {row["scan_backend"]} |')
    for row in rows:
        if row.get('loss_scale_drops'):
            lines.append(f'note: {row["label"]}: the AMP loss scaler skipped the optimiser update at '
                         f'{row["loss_scale_drops"]} of the new sizes (the rest of the step ran)')
    return lines


def operator_table(row) -> List[str]:
    sizes = ', '.join(f'{h}x{w}' for h, w in row['profiled_sizes'])
    lines = [f'\n{row["label"]}: operators by extra host time at a new size (torch.profiler, self time, mean over '
             f'{sizes})',
             '| operator | extra ms | new size ms | again ms | calls per step |', '|---|---:|---:|---:|---:|']
    lines += [f'| {op["operator"]} | {op["extra_ms"]:.1f} | {op["new_ms"]:.1f} | {op["again_ms"]:.1f} | '
              f'{op["calls"]:.0f} |' for op in row['operators']]
    return lines


def row_command(spec: str, args) -> List[str]:
    """This script's command line for one row's process."""
    command = [sys.executable, osp.abspath(__file__), '--row', spec, '--sizes', str(args.sizes),
               '--image-size', *map(str, args.image_size), '--base-size', *map(str, args.base_size),
               '--warmup', str(args.warmup), '--again', str(args.again), '--batch-size', str(args.batch_size)]
    return command + (['--profile'] if args.profile else [])


def run_rows(args) -> List[dict]:
    rows = []
    for spec in args.det_models:
        proc = subprocess.run(row_command(spec, args), cwd=REPO, capture_output=True, text=True)
        line = next((line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)), None)
        if proc.returncode != 0 or line is None:
            last = (proc.stderr.strip().splitlines() or ['no output'])[-1]
            rows.append(dict(spec=spec, error=f'exit code {proc.returncode}: {last[:300]}'))
        else:
            rows.append(json.loads(line[len(RESULT_TAG):]))
        print(f'{spec}: done', flush=True)
    return rows


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, argparse.ArgumentParser]:
    doc = __doc__
    parser = argparse.ArgumentParser(description=doc.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(doc.splitlines()[1:]))
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    defaults = DEFAULTS[device]
    parser.add_argument('--det-models', nargs='+', metavar='NAME[@W1,W2,W3,W4]', default=defaults['models'],
                        help=f'rows, from {", ".join(benchmark_det.DET_MODELS)} (default on this machine: '
                        f'{" ".join(defaults["models"])})')
    parser.add_argument('--sizes', type=positive_int, default=defaults['sizes'],
                        help=f'new sizes per row (default {defaults["sizes"]}; at most the distinct padded sizes '
                        'of --image-size)')
    parser.add_argument('--image-size', type=int, nargs=2, metavar=('HEIGHT', 'WIDTH'), default=defaults['image'],
                        help='the image the multi-scale sizes are made from (default '
                        f'{" ".join(map(str, defaults["image"]))})')
    parser.add_argument('--base-size', type=int, nargs=2, metavar=('HEIGHT', 'WIDTH'), default=defaults['base'],
                        help='the warm-up steps\' size, not one of the new sizes (default '
                        f'{" ".join(map(str, defaults["base"]))})')
    parser.add_argument('--warmup', type=non_negative_int, default=defaults['warmup'],
                        help=f'steps at --base-size first (default {defaults["warmup"]}; then, with AMP, until the '
                        'loss scaler takes two steps in a row)')
    parser.add_argument('--again', type=positive_int, default=2,
                        help='steps at each size after its first; the fastest counts (default 2)')
    parser.add_argument('--batch-size', type=positive_int, default=2, help='images per step (default 2)')
    parser.add_argument('--profile', action='store_true',
                        help='also the operators whose host time grows most at a new size (torch.profiler)')
    parser.add_argument('--out', metavar='FILE.json', help='write the table and every row\'s per-size times')
    parser.add_argument('--row', help=argparse.SUPPRESS)  # one row, in this process (what each row's process runs)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for spec in args.det_models if args.row is None else [args.row]:
        try:
            benchmark_det.parse_det_model(spec)
        except ValueError as error:
            parser.error(f'argument --det-models: {error}')
    for option in ('image_size', 'base_size'):
        if min(getattr(args, option)) < benchmark_det.DET_MIN_SIZE:
            parser.error(f'argument --{option.replace("_", "-")}: expected HEIGHT WIDTH, two ints of at least '
                         f'{benchmark_det.DET_MIN_SIZE}, got {" ".join(map(str, getattr(args, option)))}')
    available = multi_scale_sizes(args.image_size)
    if args.sizes > len(available):
        parser.error(f'argument --sizes: an image of {args.image_size[0]}x{args.image_size[1]} gives '
                     f'{len(available)} distinct padded sizes ({", ".join(f"{h}x{w}" for h, w in available)}); '
                     f'got {args.sizes}')
    args.sizes_list = available[:args.sizes]
    if tuple(args.base_size) in args.sizes_list:
        parser.error(f'argument --base-size: {args.base_size[0]}x{args.base_size[1]} is one of the new sizes; '
                     'the warm-up must be at another size')
    if args.out is not None and not args.out.endswith('.json'):
        parser.error(f'argument --out: the file name must end in .json, got {args.out!r}')
    return args, parser


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args, _ = parse_args(argv)
    if args.row is not None:
        print(RESULT_TAG + json.dumps(run_row(args.row, args)), flush=True)
        return []
    cuda = torch.cuda.is_available()
    header = (f'device: {torch.cuda.get_device_name() if cuda else "cpu"}, torch {torch.__version__}, cuDNN '
              f'{torch.backends.cudnn.version() if cuda else "-"}\n'
              f'Cascade Mask R-CNN 3x training step (benchmark_det.py\'s detectors and synthetic batch), batch '
              f'{args.batch_size}; {"AMP" if cuda else "fp32 (no CUDA)"}; each row in its own process; warm-up '
              f'{args.warmup} steps at {args.base_size[0]}x{args.base_size[1]}; new sizes: '
              + ', '.join(f'{h}x{w}' for h, w in args.sizes_list)
              + f' (the 3x pipeline\'s sizes of a {args.image_size[0]}x{args.image_size[1]} image, padded to {PAD}); '
              f'"again": the fastest of {args.again} more steps at the size')
    print(header, flush=True)
    rows = run_rows(args)
    lines = table(rows)
    for row in rows:
        if row.get('operators'):
            lines += operator_table(row)
    if args.profile and not profile_sizes(args):
        lines.append('note: --profile: no size left to profile (the short sides 448 and 416 of this image give sizes '
                     'already timed or the warm-up\'s)')
    print('\n' + '\n'.join(lines))
    if args.out:
        from mmmambavision.utils import git_commit
        content = dict(device=torch.cuda.get_device_name() if cuda else 'cpu', torch=torch.__version__,
                       cudnn=torch.backends.cudnn.version() if cuda else None, date=datetime.date.today().isoformat(),
                       commit=git_commit(REPO), header=header, table=lines, rows=rows,
                       command='python tools/analysis_tools/benchmark_new_shapes.py ' + shlex.join(args.argv))
        with open(args.out, 'w') as f:
            json.dump(content, f, indent=1)
            f.write('\n')
        print(f'\nwritten to {args.out}')
    return rows


if __name__ == '__main__':
    main()
