"""NVIDIA's MambaVision (pip package ``mambavision``) beside ours in one process: one table per part.

Parts (``--parts``, default all): ``cls`` classification inference (eval, fp16 autocast, channels_last, batch 128,
224 px, img/s); ``backbone`` the det-scale backbone alone (train, fp16 autocast, forward + backward, 2 x 800x1344,
windows 8 8 112 56); ``det`` one Cascade Mask R-CNN training step (configs/det, AMP); ``seg`` one UperNet training
step (configs/seg, AMP, 2 x 512x512, windows 8 8 64 32); ``det-test`` / ``seg-test`` one test step of those models on
one image (eval, fp32 as mmengine's test loop runs it; 800x1088 and 512x683, the most common sizes of COCO and
ADE20K val; their windows follow --window / --seg-window), with a row of ours replayed from CUDA graphs
(``cuda_graph=True``). Every row of a part is built first and kept on the device;
the rows are then timed in turns (``--rounds``: each round times ``--runs`` steps of every row after one untimed
step, the order reversed every other round) and each row's figure is the median over all its timed steps, so
warm-up and clock drift bias no row. Peak memory is measured per row in a separate pass before the rounds. The
ratio column ``ours / official`` is the speed of a row over NVIDIA's row of the same size (NVIDIA's time / the
row's time): above 1, the row is faster. Before the tables, ours and NVIDIA's backbone with the same weights
are compared in fp32 on the same input (max relative difference of the four stage outputs).

NVIDIA's rows need their package, mamba-ssm's compiled scan and CUDA; where any is missing they are skipped with
a note ('NVIDIA model: skipped (<reason>)') and our rows still run. Without CUDA every part makes a tiny run
(T only, small images and windows, one step): it shows that the rows run, not their speed.

    python tools/analysis_tools/benchmark_official.py                          # all four parts, CUDA defaults
    python tools/analysis_tools/benchmark_official.py --parts cls --fuse-conv-bn --cuda-graph
    python tools/analysis_tools/benchmark_official.py --parts backbone --archs t s b --ours-kwargs '{"with_cp": true}'
    python tools/analysis_tools/benchmark_official.py --parts backbone det --window 8 8 56 28 --out official.csv
    python tools/analysis_tools/benchmark_official.py --parts cls backbone --size 128 192 --runs 1   # CPU: ours only
"""
import argparse
import contextlib
import datetime
import gc
import json
import os
import os.path as osp
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import official
from mmmambavision.models.utils import compile_records_graphs
from mmmambavision.ops import ENV_VAR, selected_backend, triton_available
from mmmambavision.utils import window_side
from timing import graph_times, non_negative_int, positive_int, synced_times

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PARTS = ('cls', 'backbone', 'det', 'seg', 'det-test', 'seg-test')
SEG_CONFIGS = {'tiny': 'configs/seg/upernet_mambavision_t_160k_ade20k.py',
               'small': 'configs/seg/upernet_mambavision_s_160k_ade20k.py',
               'base': 'configs/seg/upernet_mambavision_b_160k_ade20k.py'}
DET_NAMES = {'tiny': 'mambavision_t', 'small': 'mambavision_s', 'base': 'mambavision_b'}
LETTERS = {'tiny': 'T', 'small': 'S', 'base': 'B', 'tiny2': 'T2', 'large': 'L', 'large2': 'L2'}
# mmseg's UperNet Swin-T (configs/swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py), no
# ImageNet weights
SEG_SWIN_T = dict(type='SwinTransformer', pretrain_img_size=224, embed_dims=96, patch_size=4, window_size=7,
                  mlp_ratio=4, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], strides=(4, 2, 2, 2),
                  out_indices=(0, 1, 2, 3), qkv_bias=True, qk_scale=None, patch_norm=True, drop_rate=0.,
                  attn_drop_rate=0., drop_path_rate=0.3, use_abs_pos_embed=False, act_cfg=dict(type='GELU'),
                  norm_cfg=dict(type='LN', requires_grad=True), init_cfg=None)
TIMM_REFERENCES = (('swin_tiny_patch4_window7_224', 'Swin-T (timm)'), ('convnext_tiny', 'ConvNeXt-T (timm)'))
CLS_WINDOW = (8, 8, 14, 7)
# per device type and part: archs, batch, size (H, W), windows, warm-up steps, timed steps per round, rounds
DEFAULTS = {
    'cuda': dict(
        cls=dict(archs=['t', 's', 'b'], batch=128, size=(224, 224), window=CLS_WINDOW, warmup=10, runs=10),
        backbone=dict(archs=['t'], batch=2, size=(800, 1344), window=(8, 8, 112, 56), warmup=5, runs=10),
        det=dict(archs=['t'], batch=2, size=(800, 1344), window=(8, 8, 112, 56), warmup=5, runs=10),
        seg=dict(archs=['t'], batch=2, size=(512, 512), window=(8, 8, 64, 32), warmup=5, runs=10),
        # the test steps: one image, the most common size of COCO val (640x480 -> 800x1067, padded to 32) and of
        # ADE20K val (4:3, short side 512)
        **{'det-test': dict(archs=['t'], batch=1, size=(800, 1088), window=(8, 8, 112, 56), warmup=5, runs=10),
           'seg-test': dict(archs=['t'], batch=1, size=(512, 683), window=(8, 8, 64, 32), warmup=5, runs=10)},
        rounds=3),
    # The published windows pad stage 3 to 112x112 tokens whatever the image size: minutes per step on one CPU
    # core. The CPU defaults keep their idea (one padded window per image) at a small size.
    'cpu': dict(
        cls=dict(archs=['t'], batch=2, size=(64, 64), window=CLS_WINDOW, warmup=0, runs=1),
        backbone=dict(archs=['t'], batch=1, size=(128, 192), window=(8, 8, 16, 8), warmup=0, runs=1),
        det=dict(archs=['t'], batch=1, size=(128, 192), window=(8, 8, 16, 8), warmup=0, runs=1),
        # batch 2: UperNet's pooling module normalises 1x1 maps over the batch in training
        seg=dict(archs=['t'], batch=2, size=(128, 128), window=(8, 8, 16, 8), warmup=0, runs=1),
        **{'det-test': dict(archs=['t'], batch=1, size=(128, 192), window=(8, 8, 16, 8), warmup=0, runs=1),
           'seg-test': dict(archs=['t'], batch=1, size=(128, 160), window=(8, 8, 16, 8), warmup=0, runs=1)},
        rounds=1),
}
MIN_SIZE = 32
OFFICIAL_SCAN = 'mamba-ssm selective_scan_fn'
#: a row whose warm-up (compiling, capturing, autotuning) takes this many seconds or more gets a note under its table
WARMUP_NOTE_S = 5.
#: label suffix of NVIDIA's rows under ``torch.compile`` (--compile-official)
COMPILED = ', torch.compile'


@dataclass
class Row:
    """One line of a part's table. ``timer(runs)`` -> (seconds of each timed call, skipped optimiser steps);
    ``peak()`` -> GiB or None; ``skip``: why the row did not run."""
    part: str
    label: str
    side: str  # 'official', 'ours', 'reference'
    arch: Optional[str] = None
    scan: str = ''
    window: Optional[Tuple] = None
    items: int = 1  # images per call (img/s in the cls part)
    timer: Optional[Callable] = None
    peak_fn: Optional[Callable] = None
    skip: str = ''
    times: List[float] = field(default_factory=list)
    skipped_steps: int = 0
    peak: Optional[float] = None
    warmup_s: Optional[float] = None  # seconds of the warm-up calls (a compile or CUDA-graph capture shows here)
    graphs: bool = False  # the model replays CUDA graphs: their memory pool is allocated in the warm-up

    @property
    def median_s(self) -> Optional[float]:
        return statistics.median(self.times) if self.times else None


@contextlib.contextmanager
def scan_backend(name: Optional[str]):
    """``MMMV_SCAN_BACKEND=name`` for the duration (None: leave it as it is); the previous value restored after."""
    if name is None:
        yield
        return
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


def triton_row(rows: List[Row], cuda: bool, part: str, label: str, arch: str, window, add: Callable) -> None:
    """Ours with the Triton scan: ``add(label)`` where CUDA and Triton are there, else the row, skipped, saying so."""
    if cuda and triton_available():
        add(label)
    else:
        rows.append(Row(part, label, 'ours', arch, 'triton', window, skip='CUDA and Triton needed'))


def error_line(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters of it) for a row's skip note."""
    lines = str(error).splitlines()
    return f'{type(error).__name__}: {lines[0][:200]}' if lines else type(error).__name__


def kwargs_label(kwargs: dict) -> str:
    return ', '.join(f'{k}={json.dumps(v)}' for k, v in kwargs.items())


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def peak_of(step: Callable, device: torch.device) -> Optional[float]:
    """GiB that one ``step()`` allocates at its peak beyond what was allocated before it (CUDA; None on CPU)."""
    if device.type != 'cuda':
        step()
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2 ** 30


def time_in_turns(rows: List[Row], runs: int, rounds: int) -> None:
    """``rounds`` rounds; each times ``runs`` calls of every runnable row (after one untimed call inside its
    timer), the order reversed every other round."""
    live = [row for row in rows if row.timer is not None and not row.skip]
    for turn in range(rounds):
        for row in (live if turn % 2 == 0 else live[::-1]):
            if row.timer is None:  # failed in an earlier round
                continue
            try:
                times, skipped = row.timer(runs)
            except Exception as error:  # one row failing (e.g. a CUDA graph capture) must not lose the table
                row.skip = f'failed while timed: {error_line(error)}'
                row.timer = None
                continue
            row.times += times
            row.skipped_steps += skipped


def records_graphs(kwargs: Optional[dict]) -> bool:
    """Whether ours built with ``kwargs`` replays CUDA graphs: ``cuda_graph=``, or ``compile=`` in a mode of
    torch.compile that records them."""
    if not kwargs:
        return False
    compile_kwargs = kwargs.get('compile')
    return bool(kwargs.get('cuda_graph')) or (isinstance(compile_kwargs, dict)
                                              and compile_records_graphs(compile_kwargs))


def warm_and_peak(row: Row, warmup: Callable, device: torch.device) -> None:
    """The row's warm-up, then its peak-memory pass; a failure marks the row skipped with the error. A row that
    replays CUDA graphs allocates their memory pool while it records them, in the warm-up, and a replay allocates
    nothing: its peak is the higher of the warm-up's and the step's."""
    cuda = device.type == 'cuda'
    pool = cuda and row.graphs  # the warm-up's peak counts too
    try:
        if pool:
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        warmup()
        if cuda:
            torch.cuda.synchronize()
        row.warmup_s = time.perf_counter() - start
        # read before the step's pass, which resets the peak statistics
        warm_peak = (torch.cuda.max_memory_allocated() - before) / 2 ** 30 if pool else None
        row.peak = row.peak_fn() if row.peak_fn is not None else None
        if warm_peak is not None:
            row.peak = warm_peak if row.peak is None else max(row.peak, warm_peak)
    except torch.cuda.OutOfMemoryError:
        row.skip, row.timer = 'out of memory', None
    except Exception as error:
        row.skip, row.timer = f'failed: {error_line(error)}', None
    if device.type == 'cuda':
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------------------------- cls
def cls_rows(args, ctx) -> List[Row]:
    """Classification inference: NVIDIA's classifier, NVIDIA's backbone to the last stage (the same work as ours),
    ours (MambaVision with out_indices=(3,), as benchmark.py), each --ours-kwargs variant, timm's references."""
    from benchmark import fuse_conv_bn
    device = ctx['device']
    batch, (height, width) = ctx['batch']('cls'), ctx['size']('cls')
    cuda = device.type == 'cuda'
    dtype = torch.float16 if cuda else torch.bfloat16
    x = torch.randn(batch, 3, height, width, device=device).to(memory_format=torch.channels_last)
    modes = [False, True] if args.cuda_graph else [False]
    rows = []

    def add(label, side, arch, scan, build, env=None, compiled=False):
        for graph in (modes if not compiled else [False]):
            row = Row('cls', label + (', CUDA graph' if graph else ''), side, arch, scan, CLS_WINDOW, items=batch)
            try:
                with scan_backend(env):
                    model = build()
                model = model.to(device).eval()
                if args.fuse_conv_bn:
                    model = fuse_conv_bn(model)
                model = model.to(memory_format=torch.channels_last)
                if compiled:  # compiles in the warm-up
                    model = torch.compile(model)
            except Exception as error:
                row.skip = f'not built: {error_line(error)}'
                rows.append(row)
                continue

            def forward(model=model):
                return model(x)

            def timer(runs, forward=forward, graph=graph, env=env):
                with torch.no_grad(), scan_backend(env):
                    if graph:  # autocast's cache of cast weights would not survive the capture
                        with torch.autocast('cuda', dtype=dtype, cache_enabled=False):
                            return graph_times(forward, runs, 1, replays=1), 0
                    with torch.autocast(device.type, dtype=dtype):
                        return synced_times(forward, runs, 1, device), 0

            row.timer = timer
            warm_and_peak(row, lambda timer=timer: timer(max(ctx['warmup']('cls'), 1)), device)
            rows.append(row)

    for arch in ctx['archs']('cls'):
        name = LETTERS[arch]
        if ctx['official_ok']:
            add(f'NVIDIA MambaVision-{name} classifier (+ BN, pool, head)', 'reference', arch, OFFICIAL_SCAN,
                lambda arch=arch: official.build_official(arch, CLS_WINDOW))
            for compiled in ([False, True] if args.compile_official else [False]):
                add(f'NVIDIA MambaVision-{name} to stage 4 + LayerNorm' + (COMPILED if compiled else ''),
                    'reference' if compiled else 'official', arch, OFFICIAL_SCAN,
                    lambda arch=arch: official.OfficialBackbone(arch, CLS_WINDOW, out_indices=(3, )),
                    compiled=compiled)
        else:
            rows.append(Row('cls', f'NVIDIA MambaVision-{name}', 'official', arch, skip=ctx['official_why']))
        add(f'MambaVision-{name} to stage 4 + LayerNorm', 'ours', arch, ctx['scan'],
            lambda arch=arch: ctx['MambaVision'](arch, out_indices=(3, )))
        triton_row(rows, cuda, 'cls', f'MambaVision-{name} to stage 4 + LayerNorm, Triton scan', arch, CLS_WINDOW,
                   lambda label, arch=arch: add(label, 'ours', arch, 'triton',
                                                lambda: ctx['MambaVision'](arch, out_indices=(3, )), env='triton'))
        for kwargs in args.ours_kwargs:
            add(f'MambaVision-{name} ({kwargs_label(kwargs)})', 'ours', arch, ctx['scan'],
                lambda arch=arch, kwargs=kwargs: ctx['MambaVision'](arch, out_indices=(3, ), **kwargs))
    try:
        import timm
    except ImportError as error:
        ctx['notes']['cls'].append(f'timm references: skipped ({error})')
    else:
        for model_name, label in TIMM_REFERENCES:
            # timm's Swin is built for one input size
            extra = dict(img_size=(height, width)) if model_name.startswith('swin') else {}
            add(label, 'reference', None, '', lambda n=model_name, extra=extra: timm.create_model(
                n, pretrained=False, num_classes=0, **extra))
    ctx['notes']['cls'].append(
        f'eval, {"fp16" if cuda else "bf16"} autocast, batch {batch}, {height}x{width}, channels_last, windows '
        f'{",".join(map(str, CLS_WINDOW))}' + ('; BatchNorm folded into the convolutions (MambaVision rows)'
                                               if args.fuse_conv_bn else '')
        + '. Ours has no classification head here (as in benchmark.py): the ratio compares the same work, the '
        'stem and four stages and a LayerNorm over the last map, against NVIDIA\'s levels run the same way; '
        'NVIDIA\'s full classifier row adds its BatchNorm, pooling and head')
    return rows


# ------------------------------------------------------------------------------------------------------------ backbone
def backbone_rows(args, ctx) -> List[Row]:
    """The det-scale backbone alone: train mode, autocast, forward + backward of the sum of the outputs' means."""
    device = ctx['device']
    batch, (height, width) = ctx['batch']('backbone'), ctx['size']('backbone')
    window = ctx['window']('backbone')
    cuda = device.type == 'cuda'
    x = torch.randn(batch, 3, height, width, device=device)
    rows = []

    def add(label, side, arch, scan, build, env=None, init=None, compiled=False, graphs=False):
        row = Row('backbone', label, side, arch, scan, window, items=batch, graphs=graphs)
        try:
            with scan_backend(env):
                model = build().to(device)
            model.train()  # not chained: mmdet's SwinTransformer.train returns None
            if init is not None:
                init(model)
            if compiled:  # compiles in the warm-up
                model = torch.compile(model)
        except Exception as error:
            row.skip = f'not built: {error_line(error)}'
            rows.append(row)
            return None

        def step(model=model):
            with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
                outs = model(x)
            sum(out.float().mean() for out in outs).backward()
            model.zero_grad(set_to_none=True)

        def timer(runs, step=step, env=env):
            with scan_backend(env):
                return synced_times(step, runs, 1, device), 0

        def peak(step=step, env=env):
            with scan_backend(env):
                return peak_of(step, device)

        row.timer, row.peak_fn = timer, peak
        warm_and_peak(row, lambda: timer(ctx['warmup']('backbone')) if ctx['warmup']('backbone') else None, device)
        rows.append(row)
        return model

    for arch in ctx['archs']('backbone'):
        name = LETTERS[arch]
        ours = add(f'MambaVision-{name}', 'ours', arch, ctx['scan'], lambda arch=arch: ctx['MambaVision'](
            arch, window_size=window))
        if ours is not None:
            ours.init_weights()
        for compiled in ([False, True] if args.compile_official else [False]):
            label = f'NVIDIA MambaVision-{name}' + (COMPILED if compiled else '')
            official_row(rows, ctx, 'backbone', arch, window, lambda arch=arch, label=label, compiled=compiled: add(
                label, 'reference' if compiled else 'official', arch, OFFICIAL_SCAN,
                lambda: official.OfficialBackbone(arch, window),
                init=(lambda model: official.copy_weights(ours, model)) if ours is not None else None,
                compiled=compiled), front=not compiled, label=label)
        triton_row(rows, cuda, 'backbone', f'MambaVision-{name}, Triton scan', arch, window,
                   lambda label, arch=arch: add(label, 'ours', arch, 'triton',
                                                lambda: ctx['MambaVision'](arch, window_size=window), env='triton'))
        for kwargs in args.ours_kwargs:
            add(f'MambaVision-{name} ({kwargs_label(kwargs)})', 'ours', arch, ctx['scan'],
                lambda arch=arch, kwargs=kwargs: ctx['MambaVision'](arch, window_size=window, **kwargs),
                graphs=records_graphs(kwargs))
    from benchmark_det import SWIN_T
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    add('Swin-T (mmdet, window 7)', 'reference', None, '', lambda: MMDET_MODELS.build(dict(SWIN_T)))
    ctx['notes']['backbone'].append(
        f'train mode, {"fp16 autocast" if cuda else "fp32"}, batch {batch} x {height}x{width}, forward + backward of '
        f'the sum of the four outputs\' means (every row alike); NVIDIA\'s rows start from the weights of ours')
    return rows


def official_row(rows, ctx, part, arch, window, build_row, front=False, label=None):
    """NVIDIA's row of ``arch`` through ``build_row()``, or a skipped row saying why (package missing, or windows
    NVIDIA's levels do not have). ``front``: put it before the rows of the same arch already listed. ``label``: of
    the skipped row (default ``NVIDIA MambaVision-<size>``)."""
    position = len(rows) - 1 if front else len(rows)
    label = label or f'NVIDIA MambaVision-{LETTERS[arch]}'
    why = ctx['official_why'] if not ctx['official_ok'] else ''
    if not why and window is not None and None in window:
        why = 'NVIDIA\'s levels have no whole-map windows (none)'
    if why:
        rows.insert(position, Row(part, label, 'official', arch, window=window, skip=why))
        return
    count = len(rows)
    build_row()
    if front and len(rows) > count:
        rows.insert(position, rows.pop())


# ----------------------------------------------------------------------------------------------------------- det / seg
def build_task_model(task: str, kind: str, arch: str, window, device: torch.device, kwargs: Optional[dict] = None,
                     size: Optional[Tuple[int, int]] = None):
    """(model, optim_wrapper) of the det / seg config of ``arch`` with its backbone as ``kind``: 'ours',
    'official' (OfficialMambaVision, the same windows and drop path rate) or 'swin' (mmdet's / mmseg's
    SwinTransformer, the neck / heads' widths changed to Swin-T's). Random weights (init_cfg None), SyncBN as BN,
    the config's optimiser (AMP on CUDA, fp32 otherwise). ``size``: seg only, the data preprocessor's padded size
    (the config's crop size otherwise)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from benchmark_det import SWIN_T_WIDTHS, build_for_training
    if task == 'det':
        from benchmark_det import DET_MODELS, SWIN_T
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        cfg = Config.fromfile(osp.join(REPO, DET_MODELS[DET_NAMES[arch]][1]))
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
        cfg = Config.fromfile(osp.join(REPO, SEG_CONFIGS[arch]))
    register_all_modules(init_default_scope=False)
    init_default_scope('mmdet' if task == 'det' else 'mmseg')
    backbone = cfg.model.backbone
    if kind == 'swin':
        if task == 'det':
            cfg.model.backbone = dict(SWIN_T)
            cfg.model.neck.in_channels = SWIN_T_WIDTHS
        else:
            cfg.model.backbone = dict(SEG_SWIN_T)
            cfg.model.decode_head.in_channels = SWIN_T_WIDTHS
            cfg.model.auxiliary_head.in_channels = SWIN_T_WIDTHS[2]
    else:
        backbone.init_cfg = None
        backbone.window_size = tuple(window)
        if kind == 'official':
            official.register_official()
            cfg.model.backbone = dict(type=official.REGISTRY_NAME, arch=backbone.arch, window_size=tuple(window),
                                      out_indices=tuple(backbone.out_indices),
                                      drop_path_rate=backbone.get('drop_path_rate'))
        else:
            backbone.update(kwargs or {})
    if task == 'seg' and size is not None:
        cfg.model.data_preprocessor.size = tuple(size)
    return build_for_training(cfg, MODELS, device)


def part_inputs(ctx, part: str, task: str):
    """(device, cuda, batch, (height, width), windows, warm-up steps, synthetic batch) of a det / seg part."""
    from benchmark_det import make_det_batch
    device = ctx['device']
    batch, (height, width) = ctx['batch'](part), ctx['size'](part)
    data = make_det_batch(batch, height, width) if task == 'det' else make_seg_batch(batch, height, width)
    return device, device.type == 'cuda', batch, (height, width), ctx['window'](part), ctx['warmup'](part), data


def task_model_name(task: str) -> str:
    return ('Cascade Mask R-CNN + FPN (configs/det 3x)' if task == 'det' else
            'UperNet + auxiliary FCN head (configs/seg 160k, 150 classes)')


def task_model_or_skip(rows: List[Row], row: Row, build: Callable, like, env: Optional[str]):
    """``build()`` -> (model, optim_wrapper) for ``row`` under scan backend ``env``, the weights of ``like`` copied in
    when given; or None after appending ``row`` to ``rows`` skipped with the error."""
    try:
        with scan_backend(env):
            model, optim_wrapper = build()
        if like is not None:
            official.copy_weights(like, model)
    except Exception as error:
        row.skip = f'not built: {error_line(error)}'
        rows.append(row)
        return None
    return model, optim_wrapper


def task_model_rows(rows: List[Row], ctx, part: str, window, add: Callable, cuda: bool, variants: List[dict]):
    """The rows of a det / seg part through its ``add(label, side, arch, scan, kind, kwargs=, like=, env=,
    same=)``: per arch of the part ours, NVIDIA's, ours with the Triton scan and ours built with each of
    ``variants`` (keyword arguments of MambaVision), all starting from the weights of ours; then Swin-T.

    The Triton row times ours' own model (``same``: its weights, and in a training step its optimiser and loss
    scaler): only the scan differs. A detector's step time depends on its weights (how many proposals survive NMS,
    how many RoIs are positive for the mask head), so two models trained apart differ by more than the scan."""
    for arch in ctx['archs'](part):
        name = LETTERS[arch]
        ours = add(f'MambaVision-{name}', 'ours', arch, ctx['scan'], 'ours')
        official_row(rows, ctx, part, arch, window, lambda arch=arch, ours=ours: add(
            f'NVIDIA MambaVision-{name}', 'official', arch, OFFICIAL_SCAN, 'official', like=ours), front=True)
        if ours is None:
            rows.append(Row(part, f'MambaVision-{name}, Triton scan', 'ours', arch, 'triton', window,
                            skip='not built: ours was not built'))
        else:
            triton_row(rows, cuda, part, f'MambaVision-{name}, Triton scan', arch, window,
                       lambda label, arch=arch, ours=ours: add(label, 'ours', arch, 'triton', 'ours', env='triton',
                                                               same=ours))
        for kwargs in variants:
            add(f'MambaVision-{name} ({kwargs_label(kwargs)})', 'ours', arch, ctx['scan'], 'ours', kwargs=kwargs,
                like=ours)
    add('Swin-T (window 7)', 'reference', None, '', 'swin', like=None)


def make_seg_batch(batch: int, height: int, width: int, seed: int = 0, num_classes: int = 150) -> dict:
    """A collated batch as mmseg's training pipeline gives it to SegDataPreProcessor: uint8 CHW images and
    SegDataSamples whose gt_sem_seg (PixelData) is a map of random class blocks (16x16 pixels) with an ignored
    (255) border."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    rng = np.random.default_rng(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8)))
        blocks = rng.integers(0, num_classes, (-(-height // 16), -(-width // 16)))
        label = np.kron(blocks, np.ones((16, 16), dtype=np.int64))[:height, :width]
        label[:4], label[:, :4] = 255, 255
        sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                             pad_shape=(height, width), scale_factor=(1., 1.), flip=False,
                                             flip_direction=None, reduce_zero_label=False))
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(label).long()[None])
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def step_rows(task: str, args, ctx) -> List[Row]:
    """The det / seg training step: ours, NVIDIA's (its detector / segmentor starting from ours' weights), each
    --ours-kwargs variant, Swin-T; per arch of --archs."""
    from benchmark_det import settle_loss_scaler, timed_det_steps
    device, cuda, batch, (height, width), window, warmup, data = part_inputs(ctx, task, task)
    rows = []
    settled = []

    wrappers = {}  # id(model) -> its optim wrapper, for rows that time the same model (``same``)

    def add(label, side, arch, scan, kind, kwargs=None, like=None, env=None, same=None):
        row = Row(task, label, side, arch, scan, window if kind != 'swin' else (7, ), items=batch,
                  graphs=records_graphs(kwargs))
        if same is not None:
            model, optim_wrapper = same, wrappers[id(same)]
        else:
            built = task_model_or_skip(rows, row, lambda: build_task_model(
                task, kind, arch or 'tiny', window, device, kwargs, size=(height, width)), like, env)
            if built is None:
                return None
            model, optim_wrapper = built
            wrappers[id(model)] = optim_wrapper

        def step(model=model, optim_wrapper=optim_wrapper):
            with scan_backend(env):
                model.train_step(data, optim_wrapper)

        def timer(runs, model=model, optim_wrapper=optim_wrapper):
            with scan_backend(env):
                return timed_det_steps(model, optim_wrapper, data, runs, 1, device)

        def warm(optim_wrapper=optim_wrapper):
            if not warmup:
                return
            for _ in range(warmup):
                step()
            scaler = getattr(optim_wrapper, 'loss_scaler', None)
            if scaler is not None:
                settled.append((row, settle_loss_scaler(step, scaler)))

        row.timer, row.peak_fn = timer, (lambda: peak_of(step, device))
        warm_and_peak(row, warm, device)
        rows.append(row)
        return model

    task_model_rows(rows, ctx, task, window, add, cuda, args.ours_kwargs)
    ctx['notes'][task].append(
        f'one train_step of {task_model_name(task)}: batch {batch} x {height}x{width}, synthetic ground truth, '
        + ('AMP (the config\'s AmpOptimWrapper, fp16)' if cuda else 'fp32 (no CUDA)')
        + ', the config\'s AdamW, SyncBN as BN, no pretrained weights; NVIDIA\'s model and the variants of ours '
        'start from the weights of ours; the Triton-scan row trains ours\' own model and optimiser, its rounds in turn '
        'with ours\'' + ('; warm-up steps, then more until the AMP loss scaler stops skipping' if cuda else ''))
    for row, calls in settled:
        if calls > 3:
            ctx['notes'][task].append(f'{row.label}: {calls} extra warm-up steps until the AMP loss scaler took two '
                                      'steps in a row')
    return rows


def test_rows(task: str, args, ctx) -> List[Row]:
    """The det / seg test step (``model.test_step`` on one image, eval, fp32 as mmengine's test loop runs it,
    the config's test_cfg): ours, NVIDIA's, ours with the Triton scan (ours' own model), ours with
    ``cuda_graph=True``, each --ours-kwargs variant (all starting from ours' weights), Swin-T."""
    part = f'{task}-test'
    device, cuda, batch, (height, width), window, warmup, data = part_inputs(ctx, part, task)
    rows = []

    def add(label, side, arch, scan, kind, kwargs=None, like=None, env=None, same=None):
        row = Row(part, label, side, arch, scan, window if kind != 'swin' else (7, ), items=batch,
                  graphs=records_graphs(kwargs))
        if same is not None:
            model = same
        else:
            built = task_model_or_skip(rows, row, lambda: build_task_model(
                task, kind, arch or 'tiny', window, device, kwargs), like, env)
            if built is None:
                return None
            model = built[0].eval()

        def step(model=model):
            with torch.no_grad(), scan_backend(env):
                model.test_step(data)

        row.timer = lambda runs, step=step: (synced_times(step, runs, 1, device), 0)
        row.peak_fn = lambda step=step: peak_of(step, device)
        warm_and_peak(row, lambda: synced_times(step, warmup, 0, device), device)
        rows.append(row)
        return model

    task_model_rows(rows, ctx, part, window, add, cuda, [dict(cuda_graph=True)] * cuda + args.ours_kwargs)
    ctx['notes'][part].append(
        f'one test_step of {task_model_name(task)}: batch {batch} x {height}x{width}, eval, fp32 (mmengine\'s test '
        'loop), the config\'s test_cfg, SyncBN as BN, random weights; NVIDIA\'s model and the variants of ours start '
        'from the weights of ours' + ('; cuda_graph=true: the backbone replayed from a CUDA graph (captured in the '
                                      'warm-up)' if cuda else ''))
    return rows


# ------------------------------------------------------------------------------------------------------------- tables
def value_of(row: Row) -> Optional[float]:
    """img/s in the cls part, ms per step otherwise."""
    if row.median_s is None:
        return None
    return row.items / row.median_s if row.part == 'cls' else 1000 * row.median_s


def speed_ratio(row: Row, rows: List[Row]) -> Optional[float]:
    """NVIDIA's time over the row's (same part, arch and mode; CUDA graph rows against NVIDIA's CUDA graph row)."""
    if row.side != 'ours' or row.median_s is None or row.skipped_steps:
        return None
    graph = row.label.endswith('CUDA graph')
    ref = next((r for r in rows if r.side == 'official' and r.part == row.part and r.arch == row.arch
                and r.median_s is not None
                and r.label.endswith('CUDA graph') == graph and not r.skipped_steps), None)
    return ref.median_s / row.median_s if ref is not None else None


def table(part: str, rows: List[Row], notes: List[str]) -> List[str]:
    unit = 'img/s' if part == 'cls' else 'ms (median)'
    lines = [f'| model | scan | {unit} | peak GiB | ours / official (speed) |', '|---|---|---:|---:|---:|']
    for row in rows:
        if row.skip:
            text = ('NVIDIA model: skipped' if row.side == 'official' else 'skipped')
            lines.append(f'| {row.label} | {row.scan or "-"} | {text} ({row.skip}) | - | - |')
            continue
        value, ratio = value_of(row), speed_ratio(row, rows)
        ratio_text = f'{ratio:.2f}x' if ratio is not None else ('1.00x' if row.side == 'official' else '-')
        if row.skipped_steps:
            ratio_text = f'n/c ({row.skipped_steps} optimiser steps skipped)'
        peak = f'{row.peak:.2f}' if row.peak is not None else '-'
        value_text = f'{value:.0f}' if value >= 100 else f'{value:.3g}'
        lines.append(f'| {row.label} | {row.scan or "-"} | {value_text} | {peak} | {ratio_text} |')
    lines += [f'note: {note}' for note in notes]
    lines += [f'note: warm-up of {row.label}: {row.warmup_s:.1f} s' for row in rows
              if row.warmup_s is not None and row.warmup_s >= WARMUP_NOTE_S]
    if any(row.graphs and row.peak is not None for row in rows):
        lines.append('note: the peak of a row that replays CUDA graphs is the higher of its warm-up\'s (which records '
                     'the graphs into their memory pool) and a replayed step\'s')
    return lines


# --------------------------------------------------------------------------------------------------------------- main
def git_commit() -> str:
    from mmmambavision.utils import git_commit as commit_of
    return commit_of(REPO)


def write_out(path: str, rows: List[Row], meta: dict, checks: List[dict]) -> None:
    records = []
    for row in rows:
        value, ratio = value_of(row), speed_ratio(row, rows)
        check = next((c for c in checks if c['arch'] == row.arch and c['part'] == row.part), None)
        records.append(dict(
            meta, part=row.part, model=row.label, side=row.side, arch=row.arch or '',
            scan_backend=row.scan, window_size=','.join('none' if w is None else str(w) for w in row.window or ()),
            batch=row.items, size=meta['sizes'][row.part], unit='img/s' if row.part == 'cls' else 'ms',
            value=round(value, 1) if value is not None else '',
            peak_gib=round(row.peak, 3) if row.peak is not None else '',
            speed_vs_official=round(ratio, 3) if ratio is not None else '',
            timed_steps=len(row.times), skipped_optimiser_steps=row.skipped_steps,
            warmup_s=round(row.warmup_s, 2) if row.warmup_s is not None else '',
            max_rel_diff_vs_official=(f'{check["max"]:.1e}' if check and check['max'] is not None
                                      and row.side != 'reference' else ''),
            note=row.skip))
    for record in records:
        record.pop('sizes')
    if path.endswith('.json'):
        with open(path, 'w') as f:
            json.dump(records, f, indent=1)
            f.write('\n')
    else:
        import csv
        with open(path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ['run'])
            writer.writeheader()
            writer.writerows(records)


def archs_type(text: str) -> str:
    try:
        return official.resolve_arch(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def kwargs_type(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f'expected a JSON object of MambaVision keyword arguments, e.g. '
                                         f'\'{{"compile": true}}\'; got {text!r} ({error})')
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object of MambaVision keyword arguments, e.g. '
                                         f'\'{{"compile": true}}\'; got {text!r}')
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.splitlines()[1:]))
    parser.add_argument('--parts', nargs='+', choices=PARTS, default=list(PARTS),
                        help='which tables (default: all)')
    parser.add_argument('--archs', nargs='+', type=archs_type, metavar='ARCH',
                        help='sizes for the backbone, det and seg parts: tiny small base (or t s b) ... '
                        '(default: t)')
    parser.add_argument('--cls-archs', nargs='+', type=archs_type, metavar='ARCH',
                        help='sizes for the cls part (default: t s b on CUDA, t on CPU)')
    parser.add_argument('--size', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help='image size of the backbone and det parts (default: 800 1344 on CUDA, 128 192 on CPU)')
    parser.add_argument('--seg-size', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help='image size of the seg part (default: 512 512 on CUDA, 128 128 on CPU)')
    parser.add_argument('--img-size', type=positive_int, help='side of the cls part (default: 224 CUDA / 64 CPU)')
    parser.add_argument('--batch-size', type=positive_int,
                        help='images per step of the backbone, det and seg parts (default: 2; on CPU 1 for '
                        'backbone and det)')
    parser.add_argument('--cls-batch-size', type=positive_int, help='cls batch (default: 128 CUDA / 2 CPU)')
    parser.add_argument('--window', type=window_side, nargs=4, metavar='W',
                        help='windows of the backbone and det parts (default: 8 8 112 56 on CUDA, the published '
                        'detection windows; 8 8 16 8 on CPU); "none" for stage 3 / 4 is ours only')
    parser.add_argument('--seg-window', type=window_side, nargs=4, metavar='W',
                        help='windows of the seg part (default: 8 8 64 32 on CUDA, 8 8 16 8 on CPU)')
    parser.add_argument('--ours-kwargs', type=kwargs_type, action='append', default=[], metavar='JSON',
                        help='add a row of ours built with MambaVision(arch, window_size=..., **JSON) in every part '
                        '(repeatable), e.g. \'{"with_cp": true}\'')
    parser.add_argument('--rounds', type=positive_int, help='rounds of turns (default: 3 on CUDA, 1 on CPU)')
    parser.add_argument('--runs', type=positive_int,
                        help='timed calls per row and round (default: 10 on CUDA, 1 on CPU)')
    parser.add_argument('--warmup', type=non_negative_int,
                        help='warm-up calls per row (default: cls 10, others 5 on CUDA; 0 on CPU)')
    parser.add_argument('--fuse-conv-bn', action='store_true',
                        help='cls: fold BatchNorm into the convolutions of NVIDIA\'s and our models')
    parser.add_argument('--cuda-graph', action='store_true', help='cls: also every row replayed from a CUDA graph')
    parser.add_argument('--compile-official', action='store_true',
                        help='cls and backbone: also a row of NVIDIA\'s model under torch.compile (default options, '
                        'compiled in the warm-up; eager only), beside its eager row, which the ratios stay against')
    parser.add_argument('--no-equality-check', dest='equality_check', action='store_false',
                        help='skip the fp32 comparison of ours and NVIDIA\'s outputs at the start')
    parser.add_argument('--out', metavar='FILE.json|FILE.csv', help='also write the rows to this file')
    args = parser.parse_args(argv)
    if args.cuda_graph and not torch.cuda.is_available():
        parser.error('argument --cuda-graph: needs a CUDA device')
    if args.out is not None and not args.out.endswith(('.json', '.csv')):
        parser.error(f'argument --out: the file name must end in .json or .csv, got {args.out!r}')
    for name in ('window', 'seg_window'):
        window = getattr(args, name)
        if window is not None and None in window[:2]:
            parser.error(f'argument --{name.replace("_", "-")}: W1 and W2 must be positive ints (only stages 3 and '
                         f'4 may be "none"), got {" ".join(map(str, window))}')
    for name in ('size', 'seg_size'):
        size = getattr(args, name)
        if size is not None and min(size) < MIN_SIZE:
            parser.error(f'argument --{name.replace("_", "-")}: expected H W, two ints of at least {MIN_SIZE}, got '
                         f'{" ".join(map(str, size))}')
    if args.img_size is not None and args.img_size < MIN_SIZE:
        parser.error(f'argument --img-size: expected an int of at least {MIN_SIZE}, got {args.img_size}')
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args, parser


def main(argv: Optional[Sequence[str]] = None) -> List[Row]:
    args, _ = parse_args(argv)
    from mmengine.logging import MMLogger

    from mmmambavision import MambaVision
    MMLogger.get_instance('mmmambavision_benchmark', log_level='WARNING')
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    cuda = device.type == 'cuda'
    conf = DEFAULTS[device.type]
    ok, why = official.official_available()
    ctx = dict(device=device, conf=conf, official_ok=ok, official_why=why, MambaVision=MambaVision,
               scan=selected_backend(device), notes={part: [] for part in PARTS})
    ctx.update(part_settings(args, conf))
    rounds = args.rounds or conf['rounds']
    date = datetime.date.today().isoformat()
    gpu = torch.cuda.get_device_name() if cuda else 'cpu'
    print(f'device: {gpu}, torch {torch.__version__}, scan backend of ours: {ctx["scan"]}'
          f'{f" ({ENV_VAR}={os.environ[ENV_VAR]})" if os.environ.get(ENV_VAR) else ""}, NVIDIA\'s: '
          + (f'{OFFICIAL_SCAN} (mambavision package)' if ok else f'skipped ({why})')
          + f'\nrows in turns: {rounds} round(s) of --runs timed calls per row (' + ', '.join(
              f'{p} {ctx["runs"](p)}' for p in args.parts) + ') after one untimed call, the order reversed every '
          'other round; figures are medians over all timed calls')
    if not ok:
        print(f'NVIDIA model: skipped ({why})')
    checks = equality_checks(args, ctx) if args.equality_check else []
    all_rows = []
    builders = {'cls': cls_rows, 'backbone': backbone_rows, 'det': lambda a, c: step_rows('det', a, c),
                'seg': lambda a, c: step_rows('seg', a, c), 'det-test': lambda a, c: test_rows('det', a, c),
                'seg-test': lambda a, c: test_rows('seg', a, c)}
    for part in [p for p in PARTS if p in args.parts]:
        # cuDNN's autotuner for the fixed-shape parts; the training steps as the configs run them (mmengine's
        # default env_cfg, no autotuner: the RoI and mask heads see new shapes at every step, each one tuned anew)
        torch.backends.cudnn.benchmark = cuda and part in ('cls', 'backbone')
        rows = builders[part](args, ctx)
        time_in_turns(rows, ctx['runs'](part), rounds)
        check = [c for c in checks if c['part'] == part]
        notes = ctx['notes'][part] + [
            f'equality, {c["name"]}: {c["text"]}' for c in check]
        print(f'\n{part}\n' + '\n'.join(table(part, rows, notes)))
        all_rows += rows
        for row in rows:  # free the part's models before the next part
            row.timer = row.peak_fn = None
        rows = None
        free(device)
    if args.out:
        command = 'python tools/analysis_tools/benchmark_official.py' + (
            ' ' + shlex.join(args.argv) if args.argv else '')
        if os.environ.get(ENV_VAR):
            command = f'{ENV_VAR}={os.environ[ENV_VAR]} {command}'
        sizes = {p: 'x'.join(map(str, ctx['size'](p))) for p in PARTS}
        meta = dict(run=f'official-{date}', date=date, gpu=gpu, torch=torch.__version__, commit=git_commit(),
                    command=command, sizes=sizes)
        write_out(args.out, all_rows, meta, checks)
        print(f'\nrows written to {args.out}')
    return all_rows


def part_settings(args, conf: dict) -> Dict[str, Callable]:
    """Per part: archs, batch, size (H, W), windows, warm-up and timed calls per round, from the arguments or the
    device's defaults."""
    def archs(part):
        return [official.resolve_arch(a) for a in ((args.cls_archs if part == 'cls' else args.archs)
                                                   or conf[part]['archs'])]

    def batch(part):
        given = {'cls': args.cls_batch_size, 'det-test': None, 'seg-test': None}
        return given.get(part, args.batch_size) or conf[part]['batch']

    def size(part):
        given = {'cls': (args.img_size, args.img_size) if args.img_size else None, 'seg': args.seg_size,
                 'det-test': None, 'seg-test': None}
        return tuple(given.get(part, args.size) or conf[part]['size'])

    def window(part):
        given = {'cls': None, 'seg': args.seg_window, 'seg-test': args.seg_window}
        return tuple(given.get(part, args.window) or conf[part]['window'])

    def warmup(part):
        return args.warmup if args.warmup is not None else conf[part]['warmup']

    def runs(part):
        return args.runs or conf[part]['runs']

    return dict(archs=archs, batch=batch, size=size, window=window, warmup=warmup, runs=runs)


def equality_checks(args, ctx) -> List[Dict]:
    """Ours vs NVIDIA's backbone with the same weights on the same input (fp32, eval), per part and arch, at the
    part's windows and (batch 1) size; printed now and again under each table."""
    checks = []
    device = ctx['device']
    done = {}
    for part in [p for p in PARTS if p in args.parts]:
        window = CLS_WINDOW if part == 'cls' else ctx['window'](part)
        shape = ctx['size'](part)
        for arch in ctx['archs'](part):
            name = f'MambaVision-{LETTERS[arch]}, windows {",".join("none" if w is None else str(w) for w in window)}'\
                   f', 1 x {shape[0]}x{shape[1]}'
            key = (arch, window, shape)
            if key not in done:
                if not ctx['official_ok']:
                    done[key] = dict(max=None, text=f'NVIDIA model: skipped ({ctx["official_why"]})')
                elif None in window:
                    done[key] = dict(max=None, text='NVIDIA model: skipped (no whole-map windows)')
                else:
                    try:
                        result = official.equality_check(arch, window, shape, device)
                        done[key] = dict(max=result['max'], text='max relative difference of the stage outputs '
                                         + ', '.join(f'{d:.1e}' for d in result['diffs'])
                                         + f' (fp32, eval, no TF32; ours: {ctx["scan"]} scan)')
                    except Exception as error:
                        done[key] = dict(max=None, text=f'failed: {type(error).__name__}: {error}')
                    free(device)
                print(f'equality, {name}: {done[key]["text"]}')
            checks.append(dict(part=part, arch=arch, name=name, **done[key]))
    return checks


if __name__ == '__main__':
    main()
