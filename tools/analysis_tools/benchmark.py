"""Backbone throughput, the paper's protocol: eval, fp16 autocast, batch 128, 224 px, median of timed runs.

MambaVision T/S/B beside timm's Swin-T and ConvNeXt-T (when timm is installed) in the same process; one table.

    python tools/benchmark.py                      # CUDA if present, else a small CPU run
    python tools/benchmark.py --channels-last --batch-size 128 --runs 30
    python tools/benchmark.py --channels-last --cuda-graph --fuse-conv-bn     # every deployment option
    python tools/benchmark.py --channels-last --compile                       # torch.compile, every model

``--det``: one Cascade Mask R-CNN training step instead (the 3x configs of configs/det, 2 images of 800x1344 by
default, mmengine's ``train_step`` with the configs' AdamW and AMP on CUDA), MambaVision T/S/B beside mmdet's
Swin-T in the same detector; median step time and peak memory, one table.

    python tools/benchmark.py --det                                   # CUDA: T, S, B, Swin-T at 800x1344
    python tools/benchmark.py --det --det-window 8 8 56 28            # plus each MambaVision at these windows
    python tools/benchmark.py --det --det-window 8 8 none none        # ... and over whole maps, no padding
    python tools/benchmark.py --det --det-models mambavision_t@8,8,8,4 --det-size 64 96 --warmup 0 --runs 1
    python tools/benchmark.py --det --det-optim --det-models mambavision_t swin_t    # the AdamW step alone
    python tools/benchmark.py --det --det-profile --det-models swin_t mambavision_t  # where the step's time goes
"""
import argparse
import gc
import os.path as osp
import statistics
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from mmmambavision import MambaVision
from timing import synced_times
from mmmambavision.ops import selected_backend


def build(name):
    if name.startswith('mambavision_'):
        return MambaVision(name.split('_', 1)[1], out_indices=(3, ))
    import timm
    return timm.create_model(name, pretrained=False, num_classes=0)


def measure(model, x, runs, warmup, device, graph=False):
    """Images per second of ``model(x)`` in eval under fp16 (CUDA) / bf16 (CPU) autocast, median of ``runs``.

    ``graph``: capture one forward in a CUDA graph and time its replays (no Python or launch overhead).
    """
    dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16
    run = lambda: model(x)  # noqa: E731
    if graph:
        static = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.autocast('cuda', dtype=dtype, cache_enabled=False), torch.cuda.stream(side):
            for _ in range(3):
                model(x)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad(), torch.autocast('cuda', dtype=dtype, cache_enabled=False), torch.cuda.graph(static):
            model(x)
        run = static.replay
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=True):
        times = synced_times(run, runs, warmup, device)
    return x.shape[0] / statistics.median(times)


def fuse_conv_bn(model):
    """Fold eval-mode BatchNorm into the preceding convolution (mmcv's ``fuse_conv_bn``): inference only."""
    try:
        from mmcv.cnn import fuse_conv_bn as fuse
    except ImportError as err:
        raise SystemExit(f'--fuse-conv-bn needs mmcv (pip install mmcv): {err}')
    return fuse(model)


# ----------------------------------------------------------------------------------------------------------------
# --det: Cascade Mask R-CNN training step
# ----------------------------------------------------------------------------------------------------------------
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# --det-models name: (label, config file)
DET_MODELS = {
    'mambavision_t': ('MambaVision-T', 'configs/det/cascade_mambavision_t_3x.py'),
    'mambavision_s': ('MambaVision-S', 'configs/det/cascade_mambavision_s_3x.py'),
    'mambavision_b': ('MambaVision-B', 'configs/det/cascade_mambavision_b_3x.py'),
    'swin_t': ('Swin-T', 'configs/det/cascade_mambavision_t_3x.py'),  # its backbone replaced by SWIN_T
}
# mmdet's Swin-T as in configs/swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py, without the ImageNet weights.
SWIN_T = dict(type='SwinTransformer', embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
              mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0., drop_path_rate=0.2,
              patch_norm=True, out_indices=(0, 1, 2, 3), with_cp=False, convert_weights=True, init_cfg=None)
SWIN_T_WIDTHS = [96, 192, 384, 768]
DET_DEFAULTS = dict(  # per device type: models, image size (H, W), warm-up steps, timed steps, rounds
    cuda=dict(models=['mambavision_t', 'mambavision_s', 'mambavision_b', 'swin_t'], size=(800, 1344), warmup=5,
              runs=10, rounds=3),
    # The published windows (8, 8, 112, 56) pad stage 3 to 112x112 tokens whatever the image size: ~3 min a step
    # on one CPU core. The CPU default keeps their idea (one padded window per image) at its own size.
    cpu=dict(models=['mambavision_t@8,8,24,12', 'swin_t'], size=(256, 384), warmup=0, runs=1, rounds=1),
)
DET_SETTLE_LIMIT = 60  # most extra warm-up steps spent waiting for the AMP loss scaler to stop skipping
DET_BOXES = (3, 12)  # ground-truth instances per image, drawn uniformly
DET_MIN_SIZE = 64


def parse_det_model(spec: str) -> Tuple[str, Optional[Tuple[int, ...]]]:
    """``NAME`` or ``NAME@W1,W2,W3,W4`` (MambaVision only) -> (name, window or None); ValueError if malformed."""
    name, _, window = spec.partition('@')
    if name not in DET_MODELS:
        raise ValueError(f'unknown model {name!r}; allowed: {", ".join(DET_MODELS)} (MambaVision ones optionally '
                         'with @W1,W2,W3,W4 windows, e.g. mambavision_t@8,8,56,28)')
    if not window:
        return name, None
    if not name.startswith('mambavision_'):
        raise ValueError(f'{spec!r}: only the MambaVision models take @windows')
    try:
        sizes = tuple(window_side(v) for v in window.split(','))
    except ValueError:
        sizes = ()
    if len(sizes) != 4 or None in sizes[:2]:
        raise ValueError(f'{spec!r}: the windows must be four positive ints (stages 3-4 may be "none": the whole '
                         f'map, no padding), e.g. {name}@8,8,56,28 or {name}@8,8,none,none')
    return name, sizes


def window_side(text: str) -> Optional[int]:
    """A window side: a positive int, or 'none' (one window over the whole map, no padding)."""
    if text.strip().lower() == 'none':
        return None
    value = int(text)
    if value < 1:
        raise ValueError(f'window side must be >= 1, got {value}')
    return value


def det_label(name: str, window: Optional[Sequence[int]], cfg) -> str:
    if name == 'swin_t':
        return 'Swin-T (window 7)'
    return f'{DET_MODELS[name][0]} (window {",".join(map(str, cfg.model.backbone.window_size))})'


def build_detector(name: str, window: Optional[Sequence[int]], device: torch.device, with_cfg: bool = False):
    """(label, model, optim_wrapper) for one row: the config's detector and optimiser, no pretrained weights
    (``with_cfg``: the config too, last)."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper

    from mmmambavision.engine import fall_back_to_fp32

    cfg = Config.fromfile(osp.join(REPO, DET_MODELS[name][1]))
    if name == 'swin_t':
        cfg.model.backbone = SWIN_T
        cfg.model.neck.in_channels = SWIN_T_WIDTHS
    else:
        cfg.model.backbone.init_cfg = None
        if window is not None:
            cfg.model.backbone.window_size = tuple(window)
    fall_back_to_fp32(cfg, device.type)  # AmpOptimWrapper needs CUDA; same optimiser in fp32 otherwise
    model = MODELS.build(cfg.model)
    model.init_weights()
    # One process: SyncBN would compute plain BN anyway; make it explicit.
    model = revert_sync_batchnorm(model).to(device).train()
    result = (det_label(name, window, cfg), model, build_optim_wrapper(model, cfg.optim_wrapper))
    return result + (cfg, ) if with_cfg else result


def random_grads(model) -> None:
    """Small random gradients on every trainable parameter (what an optimiser step needs to do full work)."""
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.randn_like(param) * 1e-3


def measure_det_parts(model, optim_wrapper, data: dict, runs: int, warmup: int, device: torch.device):
    """(backbone ms, optimiser ms): medians of the backbone's forward + backward alone on the preprocessed batch
    (fp16 autocast when the optimiser wrapper is mmengine's AmpOptimWrapper, as in ``train_step``) and of the
    optimiser's ``step()`` alone (random gradients, no loss scaling). Changes the parameters: call it last."""
    from mmengine.optim import AmpOptimWrapper

    inputs = model.data_preprocessor(data, True)['inputs']
    amp = isinstance(optim_wrapper, AmpOptimWrapper)

    def backbone_step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            outs = model.backbone(inputs)
        sum(out.float().mean() for out in outs).backward()
        model.zero_grad(set_to_none=True)

    backbone = synced_times(backbone_step, runs, warmup, device)
    random_grads(model)
    optim = synced_times(optim_wrapper.optimizer.step, runs, min(warmup, 3), device)
    model.zero_grad(set_to_none=True)
    return 1000 * statistics.median(backbone), 1000 * statistics.median(optim)


def measure_optim_steps(model, optim_cfg, runs: int, warmup: int, device: torch.device):
    """(median ms, param groups) of the AdamW step alone (``optimizer.step()``, no loss scaling) with the config's
    constructor, then with mmengine's default one (the config without its ``constructor`` key)."""
    import copy

    from mmengine.optim import build_optim_wrapper
    random_grads(model)
    results = []
    for cfg in (optim_cfg, {k: v for k, v in copy.deepcopy(optim_cfg).items() if k != 'constructor'}):
        optimizer = build_optim_wrapper(model, cfg).optimizer
        times = synced_times(optimizer.step, runs, warmup, device)
        results.append((1000 * statistics.median(times), len(optimizer.param_groups)))
        del optimizer
    return results


def run_det_optim(specs, runs: int, warmup: int, device: torch.device) -> None:
    """--det-optim: the optimiser step of each row's detector, the configs' constructor vs mmengine's default."""
    print(f'device: {torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}, torch {torch.__version__}\n'
          f'AdamW step alone (random gradients, no loss scaling), median of {runs} after {warmup} warm-up\n')
    print('| model | parameter tensors | config: groups | config: ms | default constructor: groups | '
          'default: ms | speed-up |\n|---|---:|---:|---:|---:|---:|---:|')
    for name, window in specs:
        label, model, _, cfg = build_detector(name, window, device, with_cfg=True)
        tensors = sum(1 for p in model.parameters() if p.requires_grad)
        (ms, groups), (default_ms, default_groups) = measure_optim_steps(model, cfg.optim_wrapper, runs, warmup,
                                                                         device)
        print(f'| {label} | {tensors} | {groups} | {ms:.1f} | {default_groups} | {default_ms:.1f} | '
              f'{default_ms / ms:.1f}x |')
        model = None
        gc.collect()


def make_det_batch(batch: int, height: int, width: int, seed: int = 0, num_classes: int = 80) -> dict:
    """A collated batch as mmdet's training pipeline gives it: uint8 images and DetDataSamples whose ground truth
    is a few random boxes (HorizontalBoxes) with a filled-ellipse bitmap mask each."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    rng = np.random.default_rng(seed)
    inputs, samples = [], []
    ys, xs = np.mgrid[:height, :width]
    for index in range(batch):
        inputs.append(torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8)))
        count = int(rng.integers(DET_BOXES[0], DET_BOXES[1] + 1))
        sizes = rng.uniform(0.05, 0.5, (count, 2)) * (width, height)
        centres = rng.uniform(0, 1, (count, 2)) * ((width, height) - sizes) + sizes / 2
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
        masks = np.stack([((xs - cx) / (w / 2)) ** 2 + ((ys - cy) / (h / 2)) ** 2 <= 1
                          for (cx, cy), (w, h) in zip(centres, sizes)]).astype(np.uint8)
        sample = DetDataSample(metainfo=dict(img_id=index, img_path=None, ori_shape=(height, width),
                                             img_shape=(height, width), scale_factor=(1., 1.), flip=False,
                                             flip_direction=None))
        sample.gt_instances = InstanceData(bboxes=HorizontalBoxes(torch.from_numpy(boxes)),
                                           labels=torch.from_numpy(rng.integers(0, num_classes, count)),
                                           masks=BitmapMasks(masks, height, width))
        sample.ignored_instances = InstanceData(bboxes=HorizontalBoxes(torch.zeros(0, 4)),
                                                labels=torch.zeros(0, dtype=torch.long))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def settle_loss_scaler(step, scaler, limit: int = DET_SETTLE_LIMIT) -> int:
    """Extra warm-up: call ``step()`` until the dynamic loss scaler takes (does not skip) two steps in a row, at most
    ``limit`` times; returns how many calls it took. From random initialisation fp16 gradients can overflow for a
    while (the scaler halves its scale and skips the step each time); timing such steps would leave out the
    optimiser step and compare different work."""
    taken = 0
    for calls in range(1, limit + 1):
        before = scaler.get_scale()
        step()
        taken = taken + 1 if scaler.get_scale() >= before else 0
        if taken == 2:
            return calls
    return limit


def timed_det_steps(model, optim_wrapper, data: dict, runs: int, warmup: int, device: torch.device):
    """Seconds of each of ``runs`` synchronised ``model.train_step`` calls after ``warmup`` untimed ones, and how
    many of the timed steps the AMP loss scaler skipped (it lowers its scale when it skips: inf/nan gradients)."""
    scaler = getattr(optim_wrapper, 'loss_scaler', None)
    scales = [scaler.get_scale()] if scaler is not None else []  # the scale before each step, then after the last
    times = synced_times(lambda: model.train_step(data, optim_wrapper), runs, warmup, device,
                         after=(lambda: scales.append(scaler.get_scale())) if scaler is not None else None)
    return times, sum(after < before for before, after in zip(scales[warmup:], scales[warmup + 1:]))


def measure_det(model, optim_wrapper, data: dict, runs: int, warmup: int, device: torch.device, others: int = 0):
    """Median ms of ``model.train_step`` (preprocessing, forward, loss, backward, optimiser step), synchronised,
    the peak allocated GiB (CUDA; less ``others`` bytes held by other live detectors), how many timed steps the loss
    scaler skipped, and how many extra warm-up steps it took for the loss scaler to settle (``settle_loss_scaler``)."""
    cuda = device.type == 'cuda'
    scaler = getattr(optim_wrapper, 'loss_scaler', None)
    settle = 0
    if scaler is not None and warmup:
        settle = settle_loss_scaler(lambda: model.train_step(data, optim_wrapper), scaler)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, skipped = timed_det_steps(model, optim_wrapper, data, runs, warmup, device)
    peak = (torch.cuda.max_memory_allocated() - others) / 2 ** 30 if cuda else None
    return 1000 * statistics.median(times), peak, skipped, settle


def interleave_det(entries, data: dict, runs: int, rounds: int, device: torch.device):
    """The rows' step times measured in turns: ``rounds`` rounds, each timing ``runs`` steps of every detector in
    ``entries`` [(model, optim_wrapper)] (after one untimed step: the switch), the order reversed every other
    round. One process warms up as it goes (caches, allocator, clocks), so rows timed one after the other are
    not timed alike; in turns, every row sees the same process. Returns [(median ms, skipped timed steps)]."""
    times, skipped = [[] for _ in entries], [0] * len(entries)
    order = list(range(len(entries)))
    for turn in range(rounds):
        for index in (order if turn % 2 == 0 else order[::-1]):
            model, optim_wrapper = entries[index]
            step_times, step_skips = timed_det_steps(model, optim_wrapper, data, runs, 1, device)
            times[index] += step_times
            skipped[index] += step_skips
    return [(1000 * statistics.median(t), k) for t, k in zip(times, skipped)]


DET_PHASES = ('preprocess', 'backbone', 'neck', 'rpn_head', 'roi_head', 'backward', 'optimiser')
# what the step's own code blocks in (.item(), nonzero, copies to the host); not cudaDeviceSynchronize, which is
# torch.cuda.synchronize: the harness's between steps (synced_times), not the detector's
SYNC_CALLS = ('cudaStreamSynchronize', 'cudaEventSynchronize', 'cudaMemcpy')
GPU_WORK = ('kernel', 'gpu_memcpy', 'gpu_memset')  # kineto activity types run by the GPU
LAUNCHES = ('cuda_runtime', 'cuda_driver')  # host calls into CUDA (cudaLaunchKernel, cuLaunchKernelEx, ...)


def attribute_det_events(events, steps: int):
    """Per-step totals of a profiled run from its events, (name, kineto activity type, start_ns, duration_ns,
    correlation id).

    Phases are the host ranges named ``det::<phase>``; a GPU kernel/copy counts for the phase during whose host range
    it was launched (the CPU runtime call with the same correlation id; its own start where none is recorded), as
    the backward's kernels are launched from autograd's thread while the main thread waits inside its range.
    Other events (operators, GPU-side annotations) are not counted. Returns {phase: (host ms, GPU ms)}, GPU ms of
    all kernels and copies, host ms blocked in synchronising CUDA calls (those of SYNC_CALLS) and how many there
    were, each per step."""
    launches, ranges, gpu = {}, [], []
    blocked_ns, syncs = 0, 0
    for name, activity, start, duration, correlation in events:
        if activity in GPU_WORK:
            gpu.append((start, duration, correlation))
        elif activity == 'user_annotation' and name.startswith('det::'):
            ranges.append((start, start + duration, name[5:]))
        elif activity in LAUNCHES:
            launches.setdefault(correlation, start)
            if name in SYNC_CALLS:
                blocked_ns += duration
                syncs += 1
    phases = {phase: [0, 0] for phase in DET_PHASES}
    for start, end, phase in ranges:
        phases.setdefault(phase, [0, 0])[0] += end - start
    gpu_ns = 0
    for start, duration, correlation in gpu:
        gpu_ns += duration
        launched = launches.get(correlation, start)
        phase = next((p for s, e, p in ranges if s <= launched < e), None)
        if phase is not None:
            phases[phase][1] += duration
    per_step = 1e6 * steps
    return ({phase: (host / per_step, device / per_step) for phase, (host, device) in phases.items()},
            gpu_ns / per_step, blocked_ns / per_step, syncs / steps)


def _phase_ranges(model, optim_wrapper):
    """Wraps the detector's parts and the optimiser wrapper's backward/step in ``det::<phase>`` profiler ranges;
    returns a function that removes them."""
    from torch.profiler import record_function

    def ranged(method, label):
        def call(*args, **kwargs):
            with record_function(f'det::{label}'):
                return method(*args, **kwargs)
        return call

    # what mmdet's TwoStageDetector.loss calls (the heads through their loss methods, not forward), and the
    # optimiser wrapper's backward and step (update_params); instance attributes over the class's methods
    wrapped = [(model.data_preprocessor, 'forward', 'preprocess'), (model.backbone, 'forward', 'backbone'),
               (model.neck, 'forward', 'neck'), (model.rpn_head, 'loss_and_predict', 'rpn_head'),
               (model.roi_head, 'loss', 'roi_head'), (optim_wrapper, 'backward', 'backward'),
               (optim_wrapper, 'step', 'optimiser')]
    for owner, method, label in wrapped:
        setattr(owner, method, ranged(getattr(owner, method), label))

    def remove():
        for owner, method, _ in wrapped:
            delattr(owner, method)
    return remove


def kineto_activity(event) -> str:
    """kineto's activity type of a profiler event ('kernel', 'gpu_memcpy', 'cuda_runtime', 'user_annotation', ...).
    torch >= 2.12 names it (``_KinetoEvent.activity_type``); older torch (2.11 on the device machine) does not, so
    it is rebuilt from what they expose: on the GPU, annotations (``is_user_annotation``; where that is missing too,
    the det:: ranges and events without a correlation id), copies ('Memcpy ...'), memsets ('Memset ...') and
    kernels; on the host, annotations, CUDA runtime (cuda*) and driver (cu*) calls, and operators."""
    if hasattr(event, 'activity_type'):
        return event.activity_type()
    name, on_gpu = event.name(), event.device_type() == torch.autograd.DeviceType.CUDA
    if hasattr(event, 'is_user_annotation'):
        annotation = event.is_user_annotation()
    else:
        annotation = name.startswith('det::') or (on_gpu and not event.correlation_id())
    if on_gpu:
        return ('gpu_user_annotation' if annotation else 'gpu_memcpy' if name.startswith('Memcpy') else
                'gpu_memset' if name.startswith('Memset') else 'kernel')
    return ('user_annotation' if annotation else 'cuda_runtime' if name.startswith('cuda') else
            'cuda_driver' if name.startswith('cu') else 'cpu_op')


def profile_det(model, optim_wrapper, data: dict, steps: int, device: torch.device):
    """``attribute_det_events`` of ``steps`` train steps under torch.profiler (after the timed ones: warm), and
    the wall ms per step of the profiled steps (synchronised like the timed ones)."""
    from torch.profiler import ProfilerActivity, profile

    remove = _phase_ranges(model, optim_wrapper)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    try:
        with profile(activities=activities) as prof:
            times = synced_times(lambda: model.train_step(data, optim_wrapper), steps, 0, device)
        wall = 1000 * statistics.mean(times)
    finally:
        remove()
    events = [(e.name(), kineto_activity(e), e.start_ns(), e.duration_ns(), e.correlation_id())
              for e in prof.profiler.kineto_results.events()]
    return attribute_det_events(events, steps) + (wall,)


def det_profile_table(profiles) -> List[str]:
    """--det-profile's table: profiles is [(label, (phases, gpu ms, blocked ms, syncs, wall ms))]."""
    head = ' | '.join(f'{phase} host / GPU ms' for phase in DET_PHASES)
    lines = [f'| model | step ms (profiled) | GPU busy ms | GPU idle ms | syncs / step | host blocked in syncs ms | '
             f'{head} |', '|---|' + '---:|' * (5 + len(DET_PHASES))]
    for label, (phases, gpu, blocked, syncs, wall) in profiles:
        cells = ' | '.join(f'{phases[p][0]:.1f} / {phases[p][1]:.1f}' for p in DET_PHASES)
        lines.append(f'| {label} | {wall:.0f} | {gpu:.0f} | {max(wall - gpu, 0):.0f} | {syncs:.0f} | {blocked:.0f} | '
                     f'{cells} |')
    return lines + ['GPU busy: kernels and copies summed over the step; GPU idle = step - busy (where the GPU waits '
                    'for the host). host: time inside the part on the host (the backward\'s includes the GPU work '
                    'it waits for); GPU: kernels launched inside it. preprocess..roi_head: forward + losses.']


def det_specs(args, parser, defaults: dict) -> List[Tuple[str, Optional[Tuple[int, ...]]]]:
    """The rows: --det-models (or the device default), then each MambaVision model at every --det-window."""
    specs = []
    for spec in args.det_models or defaults['models']:
        try:
            specs.append(parse_det_model(spec))
        except ValueError as error:
            parser.error(f'argument --det-models: {error}')
    for raw in args.det_window or []:
        try:
            window = [window_side(w) for w in raw]
        except ValueError:
            window = [None]
        if None in window[:2]:
            parser.error(f'argument --det-window: expected W1 W2 W3 W4, positive ints (W3, W4 may be "none": the '
                         f'whole map, no padding), got {" ".join(raw)}')
        bases = dict.fromkeys(name for name, _ in specs if name.startswith('mambavision_'))
        if not bases:
            parser.error('argument --det-window: no MambaVision model in --det-models to apply it to')
        specs += [(name, tuple(window)) for name in bases]
    return list(dict.fromkeys(specs))


def run_det(args, parser) -> None:
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger

    import mmmambavision  # noqa: F401  (registers MambaVision)

    # Keep the table readable: no per-parameter init_weights report, no INFO lines (the header says the backend).
    MMLogger.get_instance('mmmambavision_benchmark', log_level='WARNING')

    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    cuda = device.type == 'cuda'
    defaults = DET_DEFAULTS[device.type]
    specs = det_specs(args, parser, defaults)
    height, width = args.det_size or defaults['size']
    batch = args.batch_size or 2
    runs = args.runs if args.runs is not None else defaults['runs']
    warmup = args.warmup if args.warmup is not None else defaults['warmup']
    rounds = args.det_rounds if args.det_rounds is not None else defaults['rounds']
    register_all_modules()
    if args.det_optim:
        run_det_optim(specs, runs, warmup, device)
        return
    precision = ('AMP: fp16 autocast + dynamic GradScaler (mmengine AmpOptimWrapper, as the configs)' if cuda else
                 'fp32 (no CUDA: the configs\' AMP is CUDA-only; CPU numbers only check the setup)')
    print(f'device: {torch.cuda.get_device_name() if cuda else "cpu"}, torch {torch.__version__}, '
          f'scan backend: {selected_backend(device)}\n'
          f'Cascade Mask R-CNN + FPN training step (configs/det 3x: 4conv1fc cascade box heads, GIoU, FCN masks), '
          f'batch {batch} x {height}x{width} (HxW), synthetic ground truth ({DET_BOXES[0]}-{DET_BOXES[1]} boxes + '
          f'bitmap masks per image, 80 classes)\n'
          f'{precision}; AdamW (the configs\' lr / weight decay / paramwise settings); SyncBN as BN (one process); '
          f'no pretrained weights\n'
          f'warm-up: {warmup} steps (AMP: then more, until the loss scaler stops skipping, at most '
          f'{DET_SETTLE_LIMIT}); step ms: median of '
          + (f'{runs} timed steps per row in each of {rounds} rounds, the rows in turn (all kept on the device)'
             if rounds > 1 else f'{runs} timed steps, one row after the other')
          + '; synchronised; peak = torch.cuda.max_memory_allocated of each row\'s own steps')
    data = make_det_batch(batch, height, width)
    rows, notes, profiles, live = [], [], [], []  # live: (row index, model, optim_wrapper) kept for the turns
    profile_steps = min(runs, 5)
    initial = torch.cuda.memory_allocated() if cuda else 0
    for name, window in specs:
        label = f'{DET_MODELS[name][0]} ({"window " + ",".join(map(str, window)) if window else "config windows"})'
        try:
            others = torch.cuda.memory_allocated() - initial if cuda else 0  # the live rows before this one
            label, model, optim_wrapper = build_detector(name, window, device)
            params = sum(p.numel() for p in model.backbone.parameters()) / 1e6
            ms, peak, skipped, settle = measure_det(model, optim_wrapper, data, runs, warmup, device, others)
            if args.det_profile:
                profiles.append((label, profile_det(model, optim_wrapper, data, profile_steps, device)))
            backbone_ms, optim_ms = measure_det_parts(model, optim_wrapper, data, runs, warmup, device)
            rows.append((name, label, params, ms, peak, skipped, backbone_ms, optim_ms))
            if rounds > 1:
                live.append((len(rows) - 1, model, optim_wrapper))
            # 2 calls when nothing overflowed, 3 after the usual single skip at the initial scale (2 ** 16): note
            # only rows that kept overflowing
            if settle > 3:
                scale = optim_wrapper.loss_scaler.get_scale()
                notes.append(f'{label}: {settle} extra warm-up steps until the AMP loss scaler took two steps in a row '
                             f'(fp16 gradient overflow from random init; scale now {scale:g})')
        except torch.cuda.OutOfMemoryError:
            rows.append((name, label, None, None, 'OOM', 0, None, None))
            if live:
                notes.append(f'{label}: out of memory with {len(live)} other detector(s) kept on the device for '
                             f'--det-rounds {rounds}; --det-rounds 1 times each row alone')
        model = optim_wrapper = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    if live:  # the step times again, every row in turn (interleave_det); these replace the one-after-the-other ones
        timed = interleave_det([(model, optim_wrapper) for _, model, optim_wrapper in live], data, runs, rounds, device)
        for (index, _, _), (ms, skipped) in zip(live, timed):
            rows[index] = rows[index][:3] + (ms, rows[index][4], skipped) + rows[index][6:]
        live = None
    for row in rows:
        if row[5]:
            notes.append(f'{row[1]}: the loss scaler skipped {row[5]} of {runs * max(rounds, 1)} timed optimiser steps '
                         '(inf/nan fp16 gradients; the rest of the step still ran)')
    print('\n' + '\n'.join(det_table(rows, notes)))
    if profiles:
        print(f'\ntorch.profiler, {profile_steps} steps per model after the timed ones, per step:\n'
              + '\n'.join(det_profile_table(profiles)))
        if cuda and not any(profile[1] for _, profile in profiles):
            print('warning: the profiler recorded no GPU kernels (CUPTI unavailable to torch.profiler?): the GPU '
                  'columns are empty, not zero')


def det_table(rows, notes) -> List[str]:
    """The --det table's lines. rows: (name, label, backbone params M, step ms or None for OOM, peak GiB, steps
    the loss scaler skipped, backbone forward+backward ms, optimiser step ms). A row whose optimiser steps were
    skipped gets no ratio (not the same work), and Swin-T's time only counts when its own steps all ran. "rest"
    is the step less the backbone and the optimiser: preprocessing, neck, heads, losses, loss scaling - the same
    mmdet code in every row."""
    reference = next((row for row in rows if row[0] == 'swin_t' and row[3] and not row[5]), None)
    swin = reference[3] if reference is not None else None
    lines = ['| model | backbone params (M) | step ms (median) | backbone fwd+bwd ms | optimiser step ms | rest ms | '
             'peak GiB | speed vs Swin-T (Swin-T ms / ms) |', '|---|---:|---:|---:|---:|---:|---:|---:|']
    for name, label, params, ms, peak, skipped, backbone_ms, optim_ms in rows:
        if ms is None:
            lines.append(f'| {label} | - | out of memory | - | - | - | - | - |')
            continue
        peak_text = f'{peak:.2f}' if isinstance(peak, float) else '-'
        ratio = f'{swin / ms:.2f}x' if swin else '-'
        if skipped:  # a step without its optimiser update is not the same work: no ratio
            ratio = f'n/c ({skipped} steps skipped)'
        lines.append(f'| {label} | {params:.1f} | {ms:.0f} | {backbone_ms:.0f} | {optim_ms:.0f} | '
                     f'{ms - backbone_ms - optim_ms:.0f} | {peak_text} | {ratio} |')
    lines += [f'note: {note}' for note in notes]
    if reference is not None:  # what the shared detector costs alone: the floor for any backbone's row
        step, backbone_ms = reference[3], reference[6]
        lines.append(f'floor: Swin-T\'s step less its backbone forward+backward is {step - backbone_ms:.0f} ms, '
                     f'{(step - backbone_ms) / step:.2f}x its step: about the lowest ratio any backbone could reach '
                     'in this run (the same neck, heads, losses and optimiser around it)')
    return lines


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.splitlines()[1:]))
    parser.add_argument('--models', nargs='+', default=None,
                        help='classification: MambaVision (mambavision_tiny/small/base) or timm model names '
                        '(default: T, S, B, swin_tiny_patch4_window7_224, convnext_tiny)')
    parser.add_argument('--batch-size', type=int, default=None, help='default: 128 (CUDA) / 2 (CPU); --det: 2')
    parser.add_argument('--img-size', type=int, default=None, help='classification input side (default 224)')
    parser.add_argument('--runs', type=int, default=None,
                        help='timed runs (default: 30 CUDA / 3 CPU; --det: 10 per row and round CUDA / 1 CPU)')
    parser.add_argument('--warmup', type=int, default=None,
                        help='warm-up runs (default: 10 CUDA / 1 CPU; --det: 5 CUDA / 0 CPU)')
    parser.add_argument('--channels-last', action='store_true', help='also measure each model in channels_last')
    parser.add_argument('--cuda-graph', action='store_true',
                        help='also measure each model replayed from a CUDA graph (every model alike; CUDA only)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile(model, dynamic=False) every model first (the warm-up absorbs compiling)')
    parser.add_argument('--no-cudnn-benchmark', dest='cudnn_benchmark', action='store_false',
                        help='classification: leave torch.backends.cudnn.benchmark off (by default it is on for '
                             'every model, as in timm\'s benchmark: cuDNN picks and caches the fastest convolution '
                             'per shape instead of running its heuristics at every call)')
    parser.add_argument('--fuse-conv-bn', action='store_true',
                        help='fold BatchNorm into convolutions first (changes MambaVision only: the others have '
                             'no BatchNorm)')
    det = parser.add_argument_group('detection train step (--det)')
    det.add_argument('--det', action='store_true', help='time a Cascade Mask R-CNN training step instead')
    det.add_argument('--det-models', nargs='+', metavar='NAME[@W1,W2,W3,W4]',
                     help=f'rows, from {", ".join(DET_MODELS)}; a MambaVision name may carry its own windows '
                     '(default: T, S, B at the configs\' windows and Swin-T on CUDA; '
                     f'{" ".join(DET_DEFAULTS["cpu"]["models"])} on CPU)')
    det.add_argument('--det-optim', action='store_true',
                     help='time the optimiser step alone instead (AdamW of each row\'s detector, the configs\' '
                     'MergedGroupsOptimWrapperConstructor against mmengine\'s default one-group-per-parameter)')
    det.add_argument('--det-profile', action='store_true',
                     help='also profile each row\'s step (torch.profiler): GPU busy vs idle time, host '
                     'synchronisations, host and GPU ms of each part of the detector')
    det.add_argument('--det-rounds', type=int, metavar='N',
                     help='time the rows in turns: N rounds of --runs steps of every row, all detectors kept on the '
                     'device (default: 3 on CUDA, 1 on CPU; 1: one row after the other, each freed after its turn). '
                     'A process gets faster as it warms up, so rows timed one after the other are biased by order')
    det.add_argument('--det-size', type=int, nargs=2, metavar=('HEIGHT', 'WIDTH'),
                     help=f'image size (default: 800 1344 on CUDA, 256 384 on CPU; each at least {DET_MIN_SIZE})')
    det.add_argument('--det-window', nargs=4, action='append', metavar='W',
                     help='also time every MambaVision model of the list with these windows (one row each; '
                     'repeatable), e.g. 8 8 56 28 (less padding than the published 8 8 112 56) or 8 8 none none '
                     '(stages 3-4 over the whole map, no padding)')
    args = parser.parse_args(argv)
    for name in ('batch_size', 'runs', 'img_size'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'argument --{name.replace("_", "-")}: must be a positive int, got {value}')
    if args.warmup is not None and args.warmup < 0:
        parser.error(f'argument --warmup: must be an int >= 0, got {args.warmup}')
    if args.det:
        for name in ('models', 'img_size', 'channels_last', 'cuda_graph', 'fuse_conv_bn', 'compile'):
            if getattr(args, name):
                parser.error(f'argument --{name.replace("_", "-")}: classification only, not with --det '
                             '(use --det-models / --det-size)')
        if args.det_optim and args.det_profile:
            parser.error('argument --det-profile: not with --det-optim (it profiles the whole train step)')
        if args.det_optim and args.det_rounds is not None:
            parser.error('argument --det-rounds: not with --det-optim (it times the optimiser step of each row alone)')
        if args.det_rounds is not None and args.det_rounds < 1:
            parser.error(f'argument --det-rounds: must be a positive int, got {args.det_rounds}')
        if args.det_size is not None and min(args.det_size) < DET_MIN_SIZE:
            parser.error(f'argument --det-size: expected HEIGHT WIDTH, two ints of at least {DET_MIN_SIZE}, got '
                         f'{" ".join(map(str, args.det_size))}')
    else:
        if args.cuda_graph and not torch.cuda.is_available():
            parser.error('argument --cuda-graph: needs a CUDA device')
        for name in ('det_models', 'det_size', 'det_window', 'det_optim', 'det_profile', 'det_rounds'):
            if getattr(args, name) not in (None, False):
                parser.error(f'argument --{name.replace("_", "-")}: only with --det')
    return args, parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args, parser = parse_args(argv)
    if args.det:
        run_det(args, parser)
        return
    args.models = args.models or ['mambavision_tiny', 'mambavision_small', 'mambavision_base',
                                  'swin_tiny_patch4_window7_224', 'convnext_tiny']
    args.img_size = args.img_size or 224
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    cuda = device.type == 'cuda'
    batch = args.batch_size or (128 if cuda else 2)
    runs, warmup = args.runs or (30 if cuda else 3), args.warmup or (10 if cuda else 1)
    if cuda:
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    print(f'device: {torch.cuda.get_device_name() if cuda else "cpu"}, torch {torch.__version__}, '
          f'scan backend: {selected_backend(device)}, batch {batch}, {args.img_size}px'
          + (f', cudnn.benchmark {args.cudnn_benchmark}' if cuda else ''))
    rows = []
    settings = [(cl, graph) for cl in ([False, True] if args.channels_last else [False])
                for graph in ([False, True] if args.cuda_graph else [False])]
    for name in args.models:
        try:
            model = build(name).to(device).eval()
        except ImportError as err:
            print(f'skip {name}: {err}')
            continue
        if args.fuse_conv_bn:
            model = fuse_conv_bn(model)
        for cl, graph in settings:
            x = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
            if cl:
                model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
            run_model = torch.compile(model, dynamic=False) if args.compile else model
            rows.append((name, cl, graph, measure(run_model, x, runs, warmup, device, graph=graph)))
        del model
        if cuda:
            torch.cuda.empty_cache()
    ref_names = ('swin_tiny_patch4_window7_224', 'convnext_tiny')
    # each model against the references at the same execution mode (eager or CUDA graph), each at its best layout
    best = {}
    for name, cl, graph, ips in rows:
        best[name, graph] = max(best.get((name, graph), 0), ips)
    print(f'\n| model | channels_last | CUDA graph | img/s | vs Swin-T | vs ConvNeXt-T |\n|---|---|---|---:|---:|---:|')
    for name, cl, graph, ips in rows:
        ratios = [f'{ips / best[ref, graph]:.2f}x' if best.get((ref, graph)) else '-' for ref in ref_names]
        print(f'| {name} | {cl} | {graph} | {ips:.0f} | {ratios[0]} | {ratios[1]} |')
    print('ratios: against the reference at its best layout (channels_last or not), same execution mode'
          + ('; BatchNorm folded into convolutions' if args.fuse_conv_bn else '')
          + ('; every model torch.compile-d (dynamic=False)' if args.compile else ''))

if __name__ == '__main__':
    main()
