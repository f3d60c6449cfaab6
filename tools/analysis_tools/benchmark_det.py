"""Cascade Mask R-CNN training step: MambaVision T/S/B beside mmdet's Swin-T in the same detector; one table.

One ``train_step`` of the 3x configs of configs/det (mmengine's, with the configs' AdamW and AMP on CUDA) on a
synthetic batch (2 images of 800x1344 by default), no pretrained weights: the median step time, the backbone's
forward+backward and the optimiser step alone, and the peak memory of each row. The rows are timed in turns
(--det-rounds, 3 by default on CUDA): one process warms up as it goes, so rows timed one after the other are biased
by their order.

    python tools/analysis_tools/benchmark_det.py                            # CUDA: T, S, B, Swin-T at 800x1344
    python tools/analysis_tools/benchmark_det.py --det-window 8 8 56 28     # plus each MambaVision at these windows
    python tools/analysis_tools/benchmark_det.py --det-window 8 8 none none  # ... and over whole maps, no padding
    python tools/analysis_tools/benchmark_det.py --det-rounds 1             # one row after the other
    python tools/analysis_tools/benchmark_det.py --det-models mambavision_t@8,8,8,4 --det-size 64 96 --warmup 0 --runs 1
    python tools/analysis_tools/benchmark_det.py --det-optim --det-models mambavision_t swin_t  # the AdamW step alone

Where the step's time goes (torch.profiler, GPU busy / idle, host synchronisations): profile_det.py, which takes
the same arguments (but --det-optim) and prints this table first.
"""
import argparse
import copy
import gc
import os.path as osp
import statistics
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mmmambavision.ops import selected_backend
from timing import non_negative_int, positive_int, synced_times

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# --det-models name: (label, config file)
DET_MODELS = {
    'mambavision_t': ('MambaVision-T', 'configs/det/cascade_mambavision_t_3x.py'),
    'mambavision_s': ('MambaVision-S', 'configs/det/cascade_mambavision_s_3x.py'),
    'mambavision_b': ('MambaVision-B', 'configs/det/cascade_mambavision_b_3x.py'),
    'mambavision_t_graphs': ('MambaVision-T, CUDA graphs', 'configs/det/cascade_mambavision_t_3x_cudagraphs.py'),
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

    cfg = Config.fromfile(osp.join(REPO, DET_MODELS[name][1]))
    if name == 'swin_t':
        cfg.model.backbone = SWIN_T
        cfg.model.neck.in_channels = SWIN_T_WIDTHS
    else:
        cfg.model.backbone.init_cfg = None
        if window is not None:
            cfg.model.backbone.window_size = tuple(window)
    model, optim_wrapper = build_for_training(cfg, MODELS, device)
    result = (det_label(name, window, cfg), model, optim_wrapper)
    return result + (cfg, ) if with_cfg else result


def build_for_training(cfg, registry, device: torch.device):
    """(model, optim_wrapper) of ``cfg`` for timing training steps in one process: ``cfg.model`` built from
    ``registry`` with its own initialisation, SyncBN as BN, on ``device`` in train mode; the config's optimiser
    (AMP on CUDA, the same optimiser in fp32 otherwise)."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper

    from mmmambavision.engine import fall_back_to_fp32

    fall_back_to_fp32(cfg, device.type)  # AmpOptimWrapper needs CUDA; same optimiser in fp32 otherwise
    model = registry.build(cfg.model)
    model.init_weights()
    # One process: SyncBN would compute plain BN anyway; make it explicit.
    model = revert_sync_batchnorm(model).to(device).train()
    return model, build_optim_wrapper(model, cfg.optim_wrapper)


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


def replays_graphs(model) -> bool:
    """Whether the detector's backbone trains from CUDA graphs (blocks compiled in a torch.compile mode that records
    them, e.g. ``compile=dict(mode='reduce-overhead')``): their memory pool is allocated while they are recorded, in
    the first steps, and a replay allocates nothing."""
    from mmmambavision.models.utils import compile_records_graphs
    return any(compile_records_graphs(getattr(module, 'compile_options', None))
               for module in model.backbone.modules())


def measure_det(model, optim_wrapper, data: dict, runs: int, warmup: int, device: torch.device, others: int = 0):
    """Median ms of ``model.train_step`` (preprocessing, forward, loss, backward, optimiser step), synchronised,
    the peak allocated GiB (CUDA; less ``others`` bytes held by other live detectors; for a backbone that replays
    CUDA graphs the warm-up counts too, where their pool is allocated), how many timed steps the loss scaler
    skipped, and how many extra warm-up steps it took for the loss scaler to settle (``settle_loss_scaler``)."""
    cuda = device.type == 'cuda'
    pool = cuda and replays_graphs(model)
    if pool:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    scaler = getattr(optim_wrapper, 'loss_scaler', None)
    settle = 0
    if scaler is not None and warmup:
        settle = settle_loss_scaler(lambda: model.train_step(data, optim_wrapper), scaler)
    if cuda:
        torch.cuda.synchronize()
        if not pool:
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


def run_det(args, parser, after_row: Optional[Callable] = None) -> None:
    """The table (or, with --det-optim, the optimiser steps' table) of the parsed arguments. ``after_row(label,
    model, optim_wrapper, data, runs, device)`` is called right after each row's first timed steps, the detector
    still warm (profile_det.py profiles it there)."""
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
          + '; synchronised; peak = torch.cuda.max_memory_allocated of each row\'s own steps (with its warm-up where '
          'the backbone replays CUDA graphs: their pool is allocated there)')
    data = make_det_batch(batch, height, width)
    rows, notes, live = [], [], []  # live: (row index, model, optim_wrapper) kept for the turns
    initial = torch.cuda.memory_allocated() if cuda else 0
    for name, window in specs:
        label = f'{DET_MODELS[name][0]} ({"window " + ",".join(map(str, window)) if window else "config windows"})'
        try:
            others = torch.cuda.memory_allocated() - initial if cuda else 0  # the live rows before this one
            label, model, optim_wrapper = build_detector(name, window, device)
            params = sum(p.numel() for p in model.backbone.parameters()) / 1e6
            ms, peak, skipped, settle = measure_det(model, optim_wrapper, data, runs, warmup, device, others)
            if after_row is not None:
                after_row(label, model, optim_wrapper, data, runs, device)
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


def det_table(rows, notes) -> List[str]:
    """The table's lines. rows: (name, label, backbone params M, step ms or None for OOM, peak GiB, steps
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


def parse_args(argv: Optional[Sequence[str]] = None, doc: str = __doc__,
               optim: bool = True) -> Tuple[argparse.Namespace, argparse.ArgumentParser]:
    """The arguments; ``doc``: the help's description (first line) and epilog; ``optim``: with --det-optim."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(doc.splitlines()[1:]))
    parser.add_argument('--batch-size', type=positive_int, default=None, help='images per step (default: 2)')
    parser.add_argument('--runs', type=positive_int, default=None,
                        help='timed steps per row and round (default: 10 CUDA / 1 CPU)')
    parser.add_argument('--warmup', type=non_negative_int, default=None, help='warm-up steps (default: 5 CUDA / 0 CPU)')
    parser.add_argument('--det-models', nargs='+', metavar='NAME[@W1,W2,W3,W4]',
                        help=f'rows, from {", ".join(DET_MODELS)}; a MambaVision name may carry its own windows '
                        '(default: T, S, B at the configs\' windows and Swin-T on CUDA; '
                        f'{" ".join(DET_DEFAULTS["cpu"]["models"])} on CPU)')
    if optim:
        parser.add_argument('--det-optim', action='store_true',
                            help='time the optimiser step alone instead (AdamW of each row\'s detector, the configs\' '
                            'MergedGroupsOptimWrapperConstructor against mmengine\'s default one-group-per-parameter)')
    else:
        parser.set_defaults(det_optim=False)
    parser.add_argument('--det-rounds', type=positive_int, metavar='N',
                        help='time the rows in turns: N rounds of --runs steps of every row, all detectors kept on '
                        'the device (default: 3 on CUDA, 1 on CPU; 1: one row after the other, each freed after its '
                        'turn). A process gets faster as it warms up, so rows timed one after the other are biased '
                        'by order')
    parser.add_argument('--det-size', type=int, nargs=2, metavar=('HEIGHT', 'WIDTH'),
                        help=f'image size (default: 800 1344 on CUDA, 256 384 on CPU; each at least {DET_MIN_SIZE})')
    parser.add_argument('--det-window', nargs=4, action='append', metavar='W',
                        help='also time every MambaVision model of the list with these windows (one row each; '
                        'repeatable), e.g. 8 8 56 28 (less padding than the published 8 8 112 56) or 8 8 none none '
                        '(stages 3-4 over the whole map, no padding)')
    args = parser.parse_args(argv)
    if args.det_optim and args.det_rounds is not None:
        parser.error('argument --det-rounds: not with --det-optim (it times the optimiser step of each row alone)')
    if args.det_size is not None and min(args.det_size) < DET_MIN_SIZE:
        parser.error(f'argument --det-size: expected HEIGHT WIDTH, two ints of at least {DET_MIN_SIZE}, got '
                     f'{" ".join(map(str, args.det_size))}')
    return args, parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_det(*parse_args(argv))


if __name__ == '__main__':
    main()
