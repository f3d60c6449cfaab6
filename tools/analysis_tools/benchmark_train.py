"""Training throughput through the real entry point: tools/dist_train.sh per config and GPU count; one table.

Each run is ``bash tools/dist_train.sh CONFIG GPUS --work-dir ... --cfg-options ...`` (torchrun, ``--launcher
pytorch``), as a user starts a training, on a generated COCO-layout set at COCO scale, for ``--iters`` iterations;
the runs go one after another. The tool then reads mmengine's per-iteration log (``vis_data/scalars.json``: ``time``,
``data_time``, ``memory``, ``new_shape``) and prints per (config, GPUs): iterations, the first iteration's time,
warm-up, steady-state s/iter, the mean s/iter of the last half, the iterations that met a new input shape and
their mean s/iter, the s/iter of the others, images/s, data_time share, peak memory and the ratio to a reference
config (mmdet's Swin-T by default) at the same GPU count.

    python tools/analysis_tools/benchmark_train.py                      # T and Swin-T 3x, 1 and 2 GPUs, 200 iterations
    python tools/analysis_tools/benchmark_train.py --configs configs/det/cascade_mambavision_t_3x.py \\
        configs/det/cascade_swin_t_3x.py --gpus 1 2 --iters 200 --data-root /tmp/coco_scale --num-images 64 \\
        --out result.json
    python tools/analysis_tools/benchmark_train.py --dry-run            # print the commands only

What the runs change in the configs (``--cfg-options``, before the user's own): an iteration-based loop of
``--iters`` iterations (``IterBasedTrainLoop``) over mmengine's ``InfiniteSampler`` (a 3x schedule's epochs are
7330 iterations long on 16 GPUs: epoch ends do not show in its throughput, nor here), no validation, no
checkpoints, one log line per iteration with unsmoothed times (``log_processor.window_size=1``), the backbone
without pretrained weights (speed does not depend on them), a fixed seed (the same random image sizes for every
config at one GPU count), and ``InputShapeHook`` (``default_hooks.input_shape``: the backbone input's shape per
iteration and whether rank 0 met it before). Everything else is the config's: the multi-scale pipeline, AMP,
SyncBN, 2 images per GPU, the data loader's workers.

Warm-up: with t_1..t_n the logged iteration times and M the median of the last half of them (at least --window),
the warm-up ends at the first iteration k such that for every i >= k the median of t_max(k, i-w+1)..t_i (the
trailing --window iterations, not reaching back before k) lies within --tolerance of M. Warm-up: k-1 iterations,
t_1 + ... + t_(k-1) seconds. Steady state: the median of t_k..t_n. A run slow for its first 20 iterations and
steady after has a warm-up of 20; a slow iteration later (less than half of a window) does not move it.

Without CUDA (CI), ``--launcher none`` runs ``python tools/train.py`` in one process instead (dist_train.sh's
``--launcher pytorch`` needs GPUs; tools/train.py refuses it on CPU): a small config and a few iterations check
the set-up, not the speed.
"""
import argparse
import datetime
import json
import math
import os
import os.path as osp
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_CONFIGS = ['configs/det/cascade_mambavision_t_3x.py', 'configs/det/cascade_swin_t_3x.py']
DEFAULT_GPUS = [1, 2]
DEFAULT_ITERS = 200
DEFAULT_NUM_IMAGES = 64
DEFAULT_IMAGE_SIZE = (800, 1024)  # height, width: about COCO's images after the pipeline's resize
DEFAULT_WINDOW = 10
DEFAULT_TOLERANCE = 0.1
DEFAULT_TIMEOUT = 300  # seconds per run
# About COCO's 7.3 instances per image (7.6 on average with these settings), objects 6-30% of the short side.
RENDER_KWARGS = dict(max_objects=14, size_range=(0.06, 0.3))
LAUNCHERS = ('pytorch', 'none')
TAIL_LINES = 40


# --------------------------------------------------------------------------------------------------- the run options
def run_options(iters: int, data_root: str, seed: int = 0) -> List[str]:
    """The ``--cfg-options`` every run gets (before the user's): see the module's docstring."""
    return [
        'train_cfg._delete_=True', 'train_cfg.type=IterBasedTrainLoop', f'train_cfg.max_iters={iters}',
        'train_dataloader.sampler.type=InfiniteSampler',
        f'train_dataloader.dataset.data_root={data_root.rstrip("/")}/',
        'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None',
        'default_hooks.checkpoint=None', 'default_hooks.logger.interval=1',
        'log_processor.window_size=1', 'log_processor.by_epoch=False',
        'model.backbone.init_cfg=None', f'randomness.seed={seed}',
        'default_hooks.input_shape.type=InputShapeHook',
    ]


def parse_cfg_options(options: Sequence[str]) -> dict:
    """``key=value`` strings as mmengine's ``DictAction`` reads them."""
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *options]).cfg_options if options else {}


def load_config(path: str, options: Sequence[str]):
    from mmengine.config import Config
    cfg = Config.fromfile(path, import_custom_modules=False)
    if options:
        cfg.merge_from_dict(parse_cfg_options(options))
    return cfg


def config_facts(path: str, options: Sequence[str]) -> dict:
    """Images per GPU and the backbone's type, after the run's options."""
    cfg = load_config(path, options)
    backbone = cfg.get('model', {}).get('backbone', {}) or {}
    return dict(batch_per_gpu=int(cfg.train_dataloader.batch_size), backbone=str(backbone.get('type', '')))


# --------------------------------------------------------------------------------------------------------- the data
def ensure_data(root: str, num_images: int, image_size: Tuple[int, int]) -> str:
    """Generate the COCO-layout set once (``num_images`` training images, 1 validation image); reuse it if there."""
    from mmmambavision.testing.coco_demo import generate_coco_demo, is_generated
    if is_generated(root):
        with open(osp.join(root, 'annotations', 'instances_train2017.json')) as f:
            images = json.load(f)['images']
        sizes = {(image['height'], image['width']) for image in images}
        if len(images) != num_images or sizes != {tuple(image_size)}:
            have = ', '.join(f'{h}x{w}' for h, w in sorted(sizes))
            raise SystemExit(f'--data-root {root}: holds a generated set of {len(images)} images of {have}, not '
                             f'--num-images {num_images} of --image-size {image_size[0]}x{image_size[1]}; pass '
                             'another --data-root or delete that folder')
        return f'reused {root} ({num_images} images of {image_size[0]}x{image_size[1]})'
    start = time.perf_counter()
    generate_coco_demo(root, num_train=num_images, num_val=1, image_size=tuple(image_size), seed=0, **RENDER_KWARGS)
    return (f'generated {root} ({num_images} images of {image_size[0]}x{image_size[1]}) in '
            f'{time.perf_counter() - start:.0f} s')


# --------------------------------------------------------------------------------------------------------- the logs
_TEXT_LINE = re.compile(r'Iter\(train\)\s*\[\s*(\d+)/\s*\d+\](.*)$')
_TEXT_FIELD = re.compile(
    r'\b(time|data_time|memory|loss|loss_scale|new_shape|input_h|input_w):\s*([-+0-9.eEinfa]+)')


def _flag(value) -> Optional[bool]:
    """InputShapeHook's ``new_shape`` (1 or 0) as a bool; None where the log has none."""
    return None if value is None else bool(round(float(value)))


def _size(value) -> Optional[int]:
    return None if value is None else int(round(float(value)))


def read_scalars(path: str) -> List[dict]:
    """The training records of mmengine's ``scalars.json`` (one JSON object a line; those with ``time``), in
    iteration order (``iter``, else ``step``), one per iteration."""
    records = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            if 'time' not in record:
                continue
            it = record.get('iter', record.get('step'))
            if it is None:
                continue
            records[int(it)] = dict(iter=int(it), time=float(record['time']),
                                    data_time=float(record.get('data_time', 0.0)),
                                    memory=record.get('memory'), loss=record.get('loss'),
                                    loss_scale=record.get('loss_scale'), new_shape=_flag(record.get('new_shape')),
                                    input_h=_size(record.get('input_h')), input_w=_size(record.get('input_w')))
    return [records[i] for i in sorted(records)]


def read_text_log(path: str) -> List[dict]:
    """The same records from mmengine's text log (``Iter(train) [i/n] ... time: ... data_time: ... memory: ...``),
    for runs without a ``scalars.json``."""
    records = {}
    with open(path, errors='replace') as f:
        for line in f:
            match = _TEXT_LINE.search(line)
            if not match:
                continue
            fields = {}
            for key, value in _TEXT_FIELD.findall(match.group(2)):
                try:
                    fields.setdefault(key, float(value))
                except ValueError:
                    continue
            if 'time' not in fields:
                continue
            it = int(match.group(1))
            memory = fields.get('memory')
            records[it] = dict(iter=it, time=fields['time'], data_time=fields.get('data_time', 0.0),
                               memory=int(memory) if memory is not None else None, loss=fields.get('loss'),
                               loss_scale=fields.get('loss_scale'), new_shape=_flag(fields.get('new_shape')),
                               input_h=_size(fields.get('input_h')), input_w=_size(fields.get('input_w')))
    return [records[i] for i in sorted(records)]


def find_log(run_dir: str, before: Sequence[str]) -> Tuple[Optional[str], Optional[str]]:
    """The newest timestamp folder that the run created under its work dir: (scalars.json, text log), or None."""
    if not osp.isdir(run_dir):
        return None, None
    new = sorted(d for d in os.listdir(run_dir) if d not in before and osp.isdir(osp.join(run_dir, d)))
    for stamp in reversed(new):
        scalars = osp.join(run_dir, stamp, 'vis_data', 'scalars.json')
        text = osp.join(run_dir, stamp, f'{stamp}.log')
        if osp.isfile(scalars) or osp.isfile(text):
            return (scalars if osp.isfile(scalars) else None), (text if osp.isfile(text) else None)
    return None, None


def read_run(scalars: Optional[str], text: Optional[str]) -> List[dict]:
    records = read_scalars(scalars) if scalars else []
    if not records and text:
        records = read_text_log(text)
    return records


# --------------------------------------------------------------------------------------------------- the statistics
def last_half(times: Sequence[float], window: int = DEFAULT_WINDOW) -> int:
    """Where the last half of the iterations starts (at least ``window`` of them, or all)."""
    n = len(times)
    return n - min(n, max(window, n // 2))


def reference_median(times: Sequence[float], window: int = DEFAULT_WINDOW) -> float:
    """M: the median of the last half of the iterations."""
    return statistics.median(times[last_half(times, window):])


def warmup_iterations(times: Sequence[float], window: int = DEFAULT_WINDOW,
                      tolerance: float = DEFAULT_TOLERANCE) -> Optional[int]:
    """The number of warm-up iterations, k - 1 in the module's definition (0: settled from the first iteration);
    None when no iteration qualifies (not even the last one is within the tolerance)."""
    if window < 1 or not tolerance > 0:
        raise ValueError(f'window must be >= 1 and tolerance > 0, got {window}, {tolerance}')
    n = len(times)
    if n == 0:
        return None
    level = reference_median(times, window)
    bound = tolerance * level

    def within(lo: int, hi: int) -> bool:  # the median of times[lo..hi] (inclusive) near the level
        return abs(statistics.median(times[lo:hi + 1]) - level) <= bound

    # Full windows do not depend on k: suffix_ok[j] says whether every full window ending at i >= j is within.
    suffix_ok = [True] * (n + 1)
    for i in range(n - 1, -1, -1):
        full = i - window + 1 >= 0
        suffix_ok[i] = suffix_ok[i + 1] and (within(i - window + 1, i) if full else True)
    for k in range(n):
        first_full = k + window - 1  # from here on, windows ending at i are not cut by k
        if first_full < n and not suffix_ok[first_full]:
            continue
        if all(within(k, i) for i in range(k, min(first_full, n))):
            return k
    return None


def shape_figures(times: Sequence[float], flags: Sequence[Optional[bool]], window: int = DEFAULT_WINDOW) -> dict:
    """From InputShapeHook's per-iteration flags: how many iterations after the first met a new input shape, their
    mean s/iter, and the median s/iter of the other iterations of the last half (all None without flags)."""
    if len(times) < 2 or any(flag is None for flag in flags):
        return dict(new_shape_iters=None, mean_s_new_shape=None, s_per_iter_seen_shapes=None)
    new = [t for t, flag in zip(times[1:], flags[1:]) if flag]
    half = last_half(times, window)
    seen = [t for t, flag in zip(times[half:], flags[half:]) if not flag]
    return dict(new_shape_iters=len(new), mean_s_new_shape=round(statistics.mean(new), 5) if new else None,
                s_per_iter_seen_shapes=round(statistics.median(seen), 5) if seen else None)


def summarise(records: Sequence[dict], batch_per_gpu: int, gpus: int, window: int = DEFAULT_WINDOW,
              tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """One row's figures from its per-iteration records."""
    times = [r['time'] for r in records]
    data = [r['data_time'] for r in records]
    warmup = warmup_iterations(times, window, tolerance)
    settled = warmup is not None
    half = last_half(times, window)
    start = warmup if settled else half
    steady = times[start:]
    s_per_iter = statistics.median(steady)
    memory = [r['memory'] for r in records if r.get('memory') is not None]
    losses = [r.get('loss') for r in records if r.get('loss') is not None]
    scales = [r.get('loss_scale') for r in records if r.get('loss_scale') is not None]
    return dict(
        iterations=len(times),
        first_iter=records[0]['iter'] if records else None,
        first_iter_s=round(times[0], 3) if times else None,
        settled=settled,
        warmup_iters=warmup if settled else None,
        warmup_s=round(sum(times[:warmup]), 3) if settled else None,
        steady_iters=len(steady),
        s_per_iter=round(s_per_iter, 5),
        mean_s_per_iter_last_half=round(statistics.mean(times[half:]), 5) if times else None,
        **shape_figures(times, [r.get('new_shape') for r in records], window),
        images_per_step=batch_per_gpu * gpus,
        images_per_s=round(batch_per_gpu * gpus / s_per_iter, 3) if s_per_iter > 0 else None,
        data_time_share=round(sum(data[start:]) / sum(steady), 4) if sum(steady) > 0 else None,
        peak_memory_mb=max(memory) if memory else None,
        total_iter_s=round(sum(times), 3),
        nonfinite_losses=sum(1 for loss in losses if not math.isfinite(loss)),
        loss_scale_drops=sum(1 for a, b in zip(scales, scales[1:]) if b < a),
    )


def add_ratios(rows: List[dict], reference: str) -> None:
    """``vs_reference``: the row's images/s over the reference config's at the same GPU count (``vs_reference_seen``:
    the same from the s/iter of the iterations on shapes met before); ``scaling``: images/s over (GPUs x the same
    config's images/s on 1 GPU)."""
    by_key = {(row['config'], row['gpus']): row for row in rows if row.get('images_per_s')}
    for row in rows:
        ref = by_key.get((reference, row['gpus']))
        one = by_key.get((row['config'], 1))
        ips = row.get('images_per_s')
        row['vs_reference'] = round(ips / ref['images_per_s'], 3) if ips and ref else None
        row['scaling'] = round(ips / (row['gpus'] * one['images_per_s']), 3) if ips and one else None
        seen, ref_seen = row.get('s_per_iter_seen_shapes'), (ref or {}).get('s_per_iter_seen_shapes')
        row['vs_reference_seen'] = round(ref_seen / seen, 3) if seen and ref_seen else None


def _fmt(value, spec: str, empty: str = '-') -> str:
    return empty if value is None else format(value, spec)


def table(rows: List[dict], reference_label: str) -> List[str]:
    columns = ['config', 'GPUs', 'images/step', 'iterations', 'first iteration s', 'warm-up s (iterations)', 's/iter',
               'mean s/iter, last half', 'new shapes (mean s)', f's/iter, shapes seen (vs {reference_label})',
               'images/s', 'data_time share', 'peak memory MB', f'vs {reference_label}', 'scaling vs 1 GPU', 'wall s']
    failure_at = columns.index('warm-up s (iterations)')  # a failed run's message goes in that cell
    lines = ['| ' + ' | '.join(columns) + ' |', '|---|' + '---:|' * (len(columns) - 1)]
    for row in rows:
        if row.get('error'):
            cells = [row['label'], row['gpus']] + [''] * (len(columns) - 2)
            cells[failure_at] = f'failed: {row["error"]}'
            lines.append('| ' + ' | '.join(map(str, cells)) + ' |')
            continue
        warm = (f'{row["warmup_s"]:.1f} ({row["warmup_iters"]})' if row['settled']
                else f'not settled (>{row["iterations"] - row["steady_iters"]})')
        share = row['data_time_share']
        new = '-' if row.get('new_shape_iters') is None else (
            f'{row["new_shape_iters"]}' + (f' ({row["mean_s_new_shape"]:.3f})' if row.get('mean_s_new_shape') else ''))
        seen = _fmt(row.get('s_per_iter_seen_shapes'), '.3f') + (
            f' ({row["vs_reference_seen"]:.2f}x)' if row.get('vs_reference_seen') else '')
        cells = [row['label'], row['gpus'], row['images_per_step'], row['iterations'],
                 _fmt(row.get('first_iter_s'), '.1f'), warm, f'{row["s_per_iter"]:.3f}',
                 _fmt(row.get('mean_s_per_iter_last_half'), '.3f'), new, seen, _fmt(row['images_per_s'], '.2f'),
                 '-' if share is None else f'{100 * share:.1f}%',
                 _fmt(row['peak_memory_mb'], 'd'), _fmt(row.get('vs_reference'), '.2f') + 'x' * bool(
                     row.get('vs_reference')), _fmt(row.get('scaling'), '.2f'), f'{row["wall_s"]:.0f}']
        lines.append('| ' + ' | '.join(map(str, cells)) + ' |')
    return lines


def notes(rows: List[dict], window: int, tolerance: float) -> List[str]:
    out = [f'warm-up: until the trailing median of {window} iterations stays within {100 * tolerance:g}% of the '
           'median of the last half; first iteration s: its logged time (a compile, cuDNN\'s first plans, the '
           'allocator\'s first blocks); s/iter: median after the warm-up; mean s/iter, last half: what new input '
           'shapes cost on top; new shapes: iterations after the first whose backbone input had a shape rank 0 had '
           'not met before (InputShapeHook), their mean s; s/iter, shapes seen: the median of the other iterations of '
           'the last half, what a long schedule tends to; images/s: images/step / s/iter; '
           'data_time share: data_time / time after the warm-up; peak memory: rank 0, mmengine\'s `memory` '
           '(torch.cuda.max_memory_allocated); wall s: the whole run, start-up and exit included']
    for row in rows:
        if row.get('error'):
            continue
        if row['nonfinite_losses']:
            out.append(f'{row["label"]} on {row["gpus"]} GPU(s): {row["nonfinite_losses"]} iterations logged a '
                       'non-finite loss: the timing of a diverged run is not that of training')
        if row['loss_scale_drops']:
            out.append(f'{row["label"]} on {row["gpus"]} GPU(s): the AMP loss scale fell {row["loss_scale_drops"]} '
                       'times (each a skipped optimiser step)')
    return out


# ---------------------------------------------------------------------------------------------------------- the runs
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def visible_devices(gpus: int, current: Optional[str]) -> str:
    """The first ``gpus`` devices of CUDA_VISIBLE_DEVICES (or of 0, 1, ... when it is not set)."""
    if current:
        devices = [d.strip() for d in current.split(',') if d.strip()]
        return ','.join(devices[:gpus])
    return ','.join(str(i) for i in range(gpus))


def run_command(launcher: str, config: str, gpus: int, run_dir: str, options: Sequence[str]) -> List[str]:
    if launcher == 'pytorch':
        head = ['bash', 'tools/dist_train.sh', rel(config), str(gpus)]
    else:
        head = [os.environ.get('PYTHON', sys.executable), 'tools/train.py', rel(config)]
    return head + ['--work-dir', rel(run_dir), '--cfg-options', *options]


def tail(path: str, lines: int = TAIL_LINES) -> str:
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return ''


class RunFailed(RuntimeError):
    pass


def launch(command: List[str], env: Dict[str, str], log_path: str, timeout: float) -> float:
    """Run one training, its output streamed to ``log_path``; returns the wall time. Raises RunFailed."""
    start = time.perf_counter()
    with open(log_path, 'w') as log:
        log.write('$ ' + shlex.join(command) + '\n')
        log.flush()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            rc = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            raise RunFailed(f'timed out after {timeout:.0f} s (--timeout)')
        except BaseException:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            raise
    if rc != 0:
        raise RunFailed(f'exit status {rc}')
    return time.perf_counter() - start


def git_commit() -> str:
    from mmmambavision.utils import git_commit as commit_of
    return commit_of(REPO)


def device_name() -> str:
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is always installed here
        pass
    return 'cpu'


def rel(path: str) -> str:
    """A path under the repository relative to it (the runs start there), others as they are."""
    return osp.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def label_of(config: str) -> str:
    return osp.splitext(osp.basename(config))[0]


# ------------------------------------------------------------------------------------ replaying a run's input shapes
def replay_shapes(config: str, options: Sequence[str], iters: int) -> List[Tuple[int, ...]]:
    """The backbone input shapes (batch, channels, height, width) of the first ``iters`` iterations of a one-process
    run of ``config`` with ``options``, from its own training data loader on the CPU, no model run: mmengine's
    ``Runner`` built from the config (seeded as the run was), its ``IterBasedTrainLoop``'s data iterator, and the
    shape the data preprocessor gives a batch (the largest image, padded up to ``pad_size_divisor`` and at least
    ``size`` where the preprocessor has them). Data loading is seeded by the config's ``randomness.seed``, so the
    shapes are those rank 0 of a one-GPU run met."""
    import shutil
    import tempfile
    from mmengine.runner import Runner
    cfg = load_config(config, options)
    work_dir = tempfile.mkdtemp(prefix='benchmark_train_replay_')
    cfg.work_dir, cfg.launcher = work_dir, 'none'
    # nothing to draw; and a config's visualizer name (mmdet's 'visualizer') would reuse an earlier replay's instance
    cfg.visualizer = dict(type='Visualizer', name=osp.basename(work_dir), vis_backends=[])
    preprocessor = cfg.model.get('data_preprocessor') or {}
    divisor = int(preprocessor.get('pad_size_divisor', 1) or 1)
    least = tuple(preprocessor.get('size') or (0, 0))
    shapes = []
    try:
        runner = Runner.from_cfg(cfg)
        iterator = runner.build_train_loop(runner._train_loop).dataloader_iterator
        for _ in range(iters):
            inputs = next(iterator)['inputs']
            height = max(max(x.shape[-2] for x in inputs), least[0])
            width = max(max(x.shape[-1] for x in inputs), least[1])
            shapes.append((len(inputs), int(inputs[0].shape[0]), -(-height // divisor) * divisor,
                           -(-width // divisor) * divisor))
        del iterator
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return shapes


def new_shape_flags(shapes: Sequence[Tuple[int, ...]]) -> List[bool]:
    """True where a shape comes for the first time (InputShapeHook's ``new_shape``)."""
    seen, flags = set(), []
    for shape in shapes:
        flags.append(shape not in seen)
        seen.add(shape)
    return flags


def replay(args) -> List[dict]:
    """``--replay-shapes``: the new-shape figures of a result file's one-GPU rows from a replay of their loaders."""
    with open(args.replay_shapes) as f:
        content = json.load(f)
    data = content['data']
    root = osp.abspath(args.data_root or data['root'])
    print(ensure_data(root, data['num_images'], tuple(data['image_size'])), flush=True)
    options = list(content['run_options']) + [f'train_dataloader.dataset.data_root={root.rstrip("/")}/']
    rows = [row for row in content['records'] if not row.get('error')]
    for row in rows:
        if row['gpus'] != 1:
            row['replay'] = 'not replayed: only one-GPU runs (on N GPUs rank 0 gets a shard of every batch)'
            continue
        per = row['per_iteration']
        path = row['config'] if osp.isfile(row['config']) else osp.join(REPO, row['config'])
        shapes = replay_shapes(path, options, len(per['time']))
        flags = new_shape_flags(shapes)
        mine = list(zip(flags, [s[2] for s in shapes], [s[3] for s in shapes]))
        logged = list(zip(per.get('new_shape') or [], per.get('input_h') or [], per.get('input_w') or []))
        if logged and all(None not in entry for entry in logged):
            differ = [i + 1 for i, (a, b) in enumerate(zip(logged, mine)) if a != b]
            row['replay'] = ('agrees with the shapes and flags the run logged (InputShapeHook)' if not differ else
                             f'DIFFERS from the shapes the run logged, at iterations {differ[:10]}')
        else:
            row['replay'] = 'new-shape flags from the replay'
        per.update(new_shape=flags, input_h=[s[2] for s in shapes], input_w=[s[3] for s in shapes])
        row.update(shape_figures(per['time'], flags, args.window))
        print(f'{row["label"]}: {row["replay"]}', flush=True)
    add_ratios(rows, next((r['config'] for r in rows if r['label'] == content['reference']), None))
    lines = table(rows, content['reference']) + [f'note: {note}' for note in notes(rows, args.window, args.tolerance)]
    lines += [f'note: {row["label"]} on {row["gpus"]} GPU(s): {row["replay"]}' for row in rows if row.get('replay')]
    print(f'\n{args.replay_shapes} ({content["device"]}, {content["date"]}, commit {content["commit"]}), input '
          'shapes replayed on the CPU\n' + '\n'.join(lines))
    if args.out:
        content.update(table=lines, replayed_shapes=dict(
            command='python tools/analysis_tools/benchmark_train.py ' + shlex.join(args.argv), commit=git_commit(),
            date=datetime.date.today().isoformat()))
        with open(args.out, 'w') as f:
            json.dump(content, f, indent=1)
            f.write('\n')
        print(f'\nwritten to {args.out}')
    return rows


# ---------------------------------------------------------------------------------------------------------- the CLI
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive int, got {text!r}')
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float('nan')
    if not value > 0:
        raise argparse.ArgumentTypeError(f'expected a positive number, got {text!r}')
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.splitlines()[1:]))
    parser.add_argument('--configs', nargs='+', default=DEFAULT_CONFIGS, metavar='CONFIG',
                        help='configs to train (default: the MambaVision-T and Swin-T Cascade Mask R-CNN 3x configs)')
    parser.add_argument('--gpus', nargs='+', type=positive_int, metavar='N',
                        help='GPU counts, each run on the first N GPUs (default: 1 2; with --launcher none: 1)')
    parser.add_argument('--iters', type=positive_int, default=DEFAULT_ITERS,
                        help=f'iterations per run (default: {DEFAULT_ITERS})')
    parser.add_argument('--reference', default=None,
                        help='the config the ratio column compares with: an index into --configs (0 = the first) '
                        'or one of their paths (default: the first with a Swin backbone, else the first)')
    parser.add_argument('--data-root', default=None,
                        help='where the generated COCO-layout set is (made once, then reused; default: '
                        '<work-dir>/data_<N>_<H>x<W>)')
    parser.add_argument('--num-images', type=positive_int, default=DEFAULT_NUM_IMAGES,
                        help=f'generated training images (default: {DEFAULT_NUM_IMAGES}; the runs cycle through them)')
    parser.add_argument('--image-size', type=positive_int, nargs=2, default=list(DEFAULT_IMAGE_SIZE),
                        metavar=('H', 'W'), help='size of the generated images (default: 800 1024)')
    parser.add_argument('--work-dir', default='work_dirs/benchmark_train',
                        help='runs go to <work-dir>/<config name>_<N>gpu (default: work_dirs/benchmark_train)')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='pytorch',
                        help='pytorch: bash tools/dist_train.sh (torchrun; needs GPUs); none: python tools/train.py '
                        'in one process (CPU, or 1 GPU without DDP)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='passed to every run after the tool\'s own options (so they can override them)')
    parser.add_argument('--window', type=positive_int, default=DEFAULT_WINDOW,
                        help=f'iterations of the rolling median of the warm-up rule (default: {DEFAULT_WINDOW})')
    parser.add_argument('--tolerance', type=positive_float, default=DEFAULT_TOLERANCE,
                        help=f'relative band of the warm-up rule (default: {DEFAULT_TOLERANCE})')
    parser.add_argument('--timeout', type=positive_float, default=DEFAULT_TIMEOUT,
                        help=f'seconds a run may take before it is stopped (default: {DEFAULT_TIMEOUT})')
    parser.add_argument('--out', metavar='FILE.json', help='write the table, the runs and their per-iteration times')
    parser.add_argument('--dry-run', action='store_true', help='print the commands and exit')
    parser.add_argument('--replay-shapes', metavar='RESULT.json',
                        help='no training: replay the data loader of each one-GPU run in a result file of this tool '
                        '(on the CPU, seeded as the run was, its generated data made again under --data-root or '
                        'the file\'s data root) to tell which iterations met a new input shape; prints the table '
                        'with the new-shape columns (and checks the flags against those the run logged, if any); '
                        '--out writes the file back with them')
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.out is not None and not args.out.endswith('.json'):
        parser.error(f'argument --out: the file name must end in .json, got {args.out!r}')
    if args.replay_shapes is not None:
        if not osp.isfile(args.replay_shapes):
            parser.error(f'argument --replay-shapes: no such file {args.replay_shapes!r}')
        return args, parser

    configs = []
    for config in args.configs:
        path = config if osp.isabs(config) else osp.abspath(config)
        if not osp.isfile(path) and not osp.isabs(config) and osp.isfile(osp.join(REPO, config)):
            path = osp.join(REPO, config)
        if not osp.isfile(path):
            parser.error(f'argument --configs: no such file {config!r}')
        if path in [c[1] for c in configs]:
            parser.error(f'argument --configs: {config!r} is given twice')
        configs.append((config, path))
    args.config_names = [c[0] for c in configs]
    args.config_paths = [c[1] for c in configs]
    if args.gpus is None:
        args.gpus = list(DEFAULT_GPUS) if args.launcher == 'pytorch' else [1]
    if len(set(args.gpus)) != len(args.gpus):
        parser.error(f'argument --gpus: each count once, got {" ".join(map(str, args.gpus))}')
    if args.launcher == 'none' and args.gpus != [1]:
        parser.error(f'argument --gpus: --launcher none runs one process, so the only allowed value is 1; got '
                     f'{" ".join(map(str, args.gpus))} (use --launcher pytorch for several GPUs)')
    if args.reference is not None:
        args.reference_index = resolve_reference(args.reference, args.config_names, args.config_paths, parser)
    else:
        args.reference_index = None
    if min(args.image_size) < 32:
        parser.error(f'argument --image-size: expected H W, two ints of at least 32, got '
                     f'{" ".join(map(str, args.image_size))}')
    for option in args.cfg_options:
        if '=' not in option:
            parser.error(f'argument --cfg-options: expected KEY=VALUE, got {option!r}')
    return args, parser


def resolve_reference(text: str, names: Sequence[str], paths: Sequence[str], parser) -> int:
    if re.fullmatch(r'-?\d+', text):
        index = int(text)
        if 0 <= index < len(names):
            return index
    else:
        path = osp.abspath(text)
        for i, (name, full) in enumerate(zip(names, paths)):
            if text == name or path == full or osp.abspath(osp.join(REPO, text)) == full:
                return i
    parser.error(f'argument --reference: expected an index 0..{len(names) - 1} or one of the --configs '
                 f'({", ".join(names)}), got {text!r}')


def check_devices(args, parser) -> None:
    """Before anything runs: --launcher pytorch needs as many CUDA devices as the largest --gpus."""
    if args.launcher != 'pytorch':
        return
    import torch
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        parser.error('argument --launcher: pytorch (tools/dist_train.sh, torchrun) starts one process per GPU and '
                     'needs CUDA GPUs; none is visible. On a CPU machine use --launcher none (python '
                     'tools/train.py, one process)')
    if max(args.gpus) > count:
        parser.error(f'argument --gpus: {max(args.gpus)} GPUs asked for, {count} visible')


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args, parser = parse_args(argv)
    if args.replay_shapes is not None:
        return replay(args)
    work_dir = osp.abspath(args.work_dir)
    height, width = args.image_size
    data_root = osp.abspath(args.data_root or osp.join(work_dir, f'data_{args.num_images}_{height}x{width}'))
    options = run_options(args.iters, rel(data_root)) + list(args.cfg_options)
    facts = [config_facts(path, options) for path in args.config_paths]
    reference = args.reference_index
    if reference is None:
        reference = next((i for i, f in enumerate(facts) if 'swin' in f['backbone'].lower()), 0)
    labels = [label_of(name) for name in args.config_names]
    plan = [(i, gpus) for gpus in args.gpus for i in range(len(args.config_paths))]

    env_base = dict(os.environ, PYTHONUNBUFFERED='1')
    env_base.setdefault('PYTHON', sys.executable)
    commands = []
    for i, gpus in plan:
        run_dir = osp.join(work_dir, f'{labels[i]}_{gpus}gpu')
        commands.append((i, gpus, run_dir, run_command(args.launcher, args.config_paths[i], gpus, run_dir, options)))
    if args.dry_run:
        print(f'# data: {args.num_images} generated images of {height}x{width} in {rel(data_root)} (made once, '
              f'reused); reference for the ratios: {labels[reference]}; runs one after another, from {REPO}')
        for i, gpus, run_dir, command in commands:
            env = f'CUDA_VISIBLE_DEVICES={visible_devices(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))} '
            env += 'PORT=<free port> ' if args.launcher == 'pytorch' else ''
            print(f'{env}{shlex.join(command)} > {rel(osp.join(run_dir, "train_output.log"))} 2>&1')
        return []
    check_devices(args, parser)
    print(ensure_data(data_root, args.num_images, (height, width)), flush=True)
    os.makedirs(work_dir, exist_ok=True)

    rows, failure = [], None
    for n, (i, gpus, run_dir, command) in enumerate(commands, 1):
        os.makedirs(run_dir, exist_ok=True)
        before = os.listdir(run_dir)
        log_path = osp.join(run_dir, 'train_output.log')
        env = dict(env_base, CUDA_VISIBLE_DEVICES=visible_devices(gpus, os.environ.get('CUDA_VISIBLE_DEVICES')))
        if args.launcher == 'pytorch':
            env['PORT'] = str(free_port())
        print(f'[{n}/{len(commands)}] {labels[i]}, {gpus} GPU(s): output in {log_path}', flush=True)
        row = dict(config=args.config_names[i], label=labels[i], gpus=gpus, batch_per_gpu=facts[i]['batch_per_gpu'],
                   command=shlex.join(command), cuda_visible_devices=env['CUDA_VISIBLE_DEVICES'],
                   port=env.get('PORT'), work_dir=run_dir, log=log_path)
        try:
            row['wall_s'] = round(launch(command, env, log_path, args.timeout), 1)
            scalars, text = find_log(run_dir, before)
            records = read_run(scalars, text)
            if not records:
                raise RunFailed(f'no training iterations in its logs ({scalars or text or "no mmengine log"})')
        except RunFailed as error:
            row['error'] = str(error)
            rows.append(row)
            failure = (f'run {n}/{len(commands)} failed ({error}): {labels[i]} on {gpus} GPU(s)\n'
                       f'command: {shlex.join(command)}\nlast lines of {log_path}:\n{tail(log_path)}')
            break
        row.update(summarise(records, facts[i]['batch_per_gpu'], gpus, args.window, args.tolerance))
        row['outside_iterations_s'] = round(row['wall_s'] - row['total_iter_s'], 1)
        row['scalars'] = scalars
        row['per_iteration'] = dict(iter=[r['iter'] for r in records], time=[r['time'] for r in records],
                                    data_time=[r['data_time'] for r in records],
                                    memory=[r['memory'] for r in records],
                                    new_shape=[r.get('new_shape') for r in records],
                                    input_h=[r.get('input_h') for r in records],
                                    input_w=[r.get('input_w') for r in records])
        if row['iterations'] != args.iters:
            row['note'] = f'{row["iterations"]} iterations logged, {args.iters} asked for'
        rows.append(row)
        print(f'    {row["s_per_iter"]:.3f} s/iter, {row["images_per_s"]:.2f} images/s, wall {row["wall_s"]:.0f} s',
              flush=True)

    add_ratios([r for r in rows if not r.get('error')], args.config_names[reference])
    device = device_name()
    lines = table(rows, labels[reference]) + [f'note: {note}' for note in notes(rows, args.window, args.tolerance)]
    print(f'\ndevice: {device}, launcher: {args.launcher}, {args.iters} iterations per run, data: {args.num_images} '
          f'generated images of {height}x{width}\n' + '\n'.join(lines))
    if args.out:
        write_out(args, rows, lines, device, data_root, labels[reference], options)
        print(f'\nwritten to {args.out}')
    if failure:
        raise SystemExit(failure)
    return rows


def write_out(args, rows, lines, device, data_root, reference_label, options) -> None:
    import torch
    date = datetime.date.today().isoformat()
    short = re.sub(r'[^a-z0-9]+', '', device.lower().replace('nvidia', '')) or 'cpu'
    content = dict(
        run=f'train-{short}-{date}', date=date, device=device, torch=torch.__version__, commit=git_commit(),
        command='python tools/analysis_tools/benchmark_train.py' + (' ' + shlex.join(args.argv) if args.argv else ''),
        launcher=args.launcher, configs=args.config_names, gpus=args.gpus, iters=args.iters,
        reference=reference_label,
        data=dict(root=data_root, num_images=args.num_images, image_size=list(args.image_size),
                  generator='mmmambavision.testing.coco_demo.generate_coco_demo', render=RENDER_KWARGS),
        run_options=list(options),
        warmup_rule=dict(window=args.window, tolerance=args.tolerance, definition=(
            'M = median of the last half of the iteration times (at least window of them); the warm-up ends at '
            'the first iteration k such that for every i >= k the median of t[max(k, i-window+1)..i] is within '
            'tolerance x M of M; warmup_iters = k - 1, warmup_s = t_1 + ... + t_(k-1), s_per_iter = median of '
            't_k..t_n')),
        table=lines, records=rows)
    with open(args.out, 'w') as f:
        json.dump(content, f, indent=1)
        f.write('\n')


if __name__ == '__main__':
    main()
