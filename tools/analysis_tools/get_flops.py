"""FLOPs and parameters of a MambaVision backbone, or of a detection / segmentation config, selective scan included.

    python tools/analysis_tools/get_flops.py --arch tiny --shape 224
    python tools/analysis_tools/get_flops.py configs/det/cascade_mambavision_t_3x.py --shape 1280 800
    python tools/analysis_tools/get_flops.py configs/seg/upernet_mambavision_t_160k_ade20k.py --shape 512 2048

What is counted, and how:

* Standard layers (convolutions, linear layers, matmuls, norms, ...) by mmengine's jit-trace counter
  (``mmengine.analysis.FlopAnalyzer``), whose convention is fvcore's: **one multiply-add is one FLOP** (the numbers
  papers call "FLOPs" for vision backbones, including MambaVision's 4.4 G for T at 224 px).
* ``F.scaled_dot_product_attention`` (MambaVision's window attention), which mmengine has no handle for, by a
  handle of this tool in the same convention: ``B*heads*Lq*Lk*(E + Ev)`` (q.k^T and attn.v).
* The selective scan, which runs inside an autograd Function that the trace cannot look into, analytically per
  ``MambaVisionMixer`` call (a forward hook reads the actual sequence shape (B, L, dim)): mamba-ssm's / VMamba's
  convention ``9*B*D*L*N`` for the recurrence plus ``B*D*L`` for the ``D*u`` skip, with D = dim/2 the scanned
  channels and N = d_state (8).

Elementwise operations (activations, residual adds, softplus, ...) are not counted, as in mmengine and fvcore.
A config is measured as mmdet 3's / mmseg's ``get_flops`` tools do: one image of the given size through the data
preprocessor (padded to its size divisor), the model in eval mode, ``mode='tensor'`` (detectors: backbone, neck,
RPN, then every cascade stage's box *and mask* head on all the RPN's test proposals, up to 1000; segmentors:
backbone and decode head, no auxiliary head). SyncBN is counted as BN. No weights are loaded (the backbone's
``init_cfg`` is dropped and nothing is initialised); the weights are random and seeded. For two-stage detectors
the tool also prints the total in the convention of mmdet 2's ``forward_dummy``, which the detection FLOPs of the
Swin paper and most later papers use: box heads on 1000 RoIs, mask heads on 100 (head FLOPs are linear in the
number of RoIs, so it is the same count with the heads rescaled). Check: mmdet's Swin-T in the Cascade Mask
R-CNN of configs/det counts 745.6 G at 1280x800 in that convention, the Swin paper's 745 G.

``--shape`` is HEIGHT WIDTH (one value: square), the order of mmdet's and mmseg's tools: ``--shape 1280 800`` is
1280 px high and 800 wide. Defaults: 224 (``--arch``), 1280 800 (detection), 512 2048 (segmentation, the size
of the ADE20K FLOPs in the Swin / ConvNeXt / MambaVision papers). With the published detection windows
(8, 8, 112, 56) both orders give the same padded stage-3 / stage-4 maps.
"""
import argparse
import os.path as osp
from collections import Counter
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmmambavision.utils import window_side

DEFAULT_SHAPES = {'arch': (224, 224), 'det': (1280, 800), 'seg': (512, 2048)}
# mmdet 2's forward_dummy: box heads on 1000 RoIs, mask heads on the first 100.
DUMMY_BOX_ROIS, DUMMY_MASK_ROIS = 1000, 100
ARCHS = ('tiny', 'tiny2', 'small', 'base', 'large', 'large2', 't', 't2', 's', 'b', 'l', 'l2')
# mamba-ssm's / VMamba's count of one selective-scan recurrence step per (batch, channel, token, state) element.
SCAN_FLOPS_PER_ELEMENT = 9


def scan_flops(batch: int, channels: int, length: int, d_state: int, with_d: bool = True) -> int:
    """Selective-scan FLOPs in mamba's convention: ``9*B*D*L*N`` (+ ``B*D*L`` for the ``D*u`` skip)."""
    flops = SCAN_FLOPS_PER_ELEMENT * batch * channels * length * d_state
    return flops + (batch * channels * length if with_d else 0)


class ScanCounter:
    """Forward hooks on every ``MambaVisionMixer``: the scan FLOPs of each call, from the actual input shape."""

    def __init__(self, model: nn.Module):
        from mmmambavision.models.mixer import MambaVisionMixer
        self.calls: List[Tuple[str, int, int, int, int]] = []  # (module, B, D, L, N)
        self._handles = []
        for name, module in model.named_modules():
            if isinstance(module, MambaVisionMixer):
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):

        def hook(module, inputs, output):
            batch, length, dim = (int(size) for size in inputs[0].shape)  # the scan runs on (B, dim // 2, L)
            self.calls.append((name, batch, dim // 2, length, int(module.d_state)))

        return hook

    @property
    def flops(self) -> int:
        return sum(scan_flops(b, d, l, n) for _, b, d, l, n in self.calls)

    def flops_under(self, prefix: str) -> int:
        return sum(scan_flops(b, d, l, n) for name, b, d, l, n in self.calls
                   if not prefix or name == prefix or name.startswith(prefix + '.'))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def sdpa_flop_jit(inputs, outputs) -> int:
    """``aten::scaled_dot_product_attention``: q.k^T and attn.v, one multiply-add = one FLOP."""
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(value) for value in inputs[:3])
    *batch, lq, e = q
    lk, ev = k[-2], v[-1]
    n = 1
    for size in batch:
        n *= size
    return n * lq * lk * (e + ev)


def conv_mode_flop_jit(inputs, outputs) -> int:
    """``aten::_convolution_mode`` (a convolution with ``padding='same'``, the mixer's depthwise conv1d), which
    mmengine has no handle for: output elements x input channels per group x kernel size, as its conv handle."""
    from mmengine.analysis.jit_handles import get_shape
    out_shape, w_shape = get_shape(outputs[0]), get_shape(inputs[1])
    flops = out_shape[0]
    for size in list(out_shape[2:]) + list(w_shape):  # w: (C_out, C_in / groups, *kernel)
        flops *= size
    return flops


class TensorForward(nn.Module):
    """``model(inputs, data_samples, mode='tensor')`` as a one-argument module, for the tracer."""

    def __init__(self, model: nn.Module, data_samples):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor):
        return self.model(inputs, self.data_samples, mode='tensor')


def parse_shape(values: Optional[Sequence[int]], default: Tuple[int, int],
                parser: argparse.ArgumentParser) -> Tuple[int, int]:
    if values is None:
        return default
    if len(values) not in (1, 2) or any(v < 32 for v in values):
        parser.error(f'argument --shape: expected HEIGHT [WIDTH], one or two ints of at least 32 (one value: a '
                     f'square), got {" ".join(map(str, values))}')
    return (values[0], values[-1])


def build_backbone(args, parser: argparse.ArgumentParser, device: torch.device) -> Tuple[nn.Module, str]:
    """The bare backbone (classification trunk by default: ``out_indices=(3,)``, windows (8, 8, 14, 7))."""
    from mmmambavision import MambaVision
    kwargs = dict(out_indices=tuple(args.out_indices or (3, )))
    if args.window_size is not None:
        kwargs['window_size'] = tuple(args.window_size)
    try:
        model = MambaVision(args.arch, **kwargs)
    except ValueError as error:
        message = str(error)
        argument = ('--arch' if message.startswith('arch') else '--window-size' if 'window_size' in message
                    else '--out-indices')
        parser.error(f'argument {argument}: {message}')
    model.to(device).eval()
    title = (f'MambaVision-{args.arch} backbone (out_indices={model.out_indices}, window_size={model.window_size}, '
             'no classifier head)')
    return model, title


def load_config(path: str, cfg_options: Optional[dict], parser: argparse.ArgumentParser):
    """The config as tools/train.py reads it (options applied, mmdet / mmseg scope checked); errors via parser."""
    from mmmambavision.engine.entrypoints import load_config as load_tool_config
    if not osp.isfile(path):
        parser.error(f'argument config: file not found: {path}')
    try:
        cfg = load_tool_config(path, cfg_options or None, launcher='none', work_dir=None)
    except ValueError as error:
        parser.error(f'argument config: {error}')
    return cfg, cfg.default_scope


def build_from_config(cfg, scope: str, shape: Tuple[int, int], device: torch.device):
    """The model in eval mode wrapped for a ``mode='tensor'`` trace on one preprocessed image of ``shape``."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.structures import DetDataSample as Sample
    else:
        from mmseg.registry import MODELS
        from mmseg.structures import SegDataSample as Sample
    cfg.model.backbone.init_cfg = None  # no weight files (nothing is initialised from a checkpoint anyway)
    cfg.model.pop('pretrained', None)
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).to(device)
    if getattr(model, 'auxiliary_head', None) is not None:  # training-only, as in mmseg's tool
        model.auxiliary_head = None
    model.eval()
    height, width = shape
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                scale_factor=(1., 1.), flip=False, img_id=0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[Sample(metainfo=meta)]), False)
    title = f'{type(model).__name__} with a {type(model.backbone).__name__} backbone'
    return TensorForward(model, data['data_samples']), model, title, data['inputs']


def part_names(model: nn.Module) -> List[str]:
    """Rows of the table: a backbone's stem / stages / output norms, or a model's top-level parts with the RoI
    head split into its box and mask heads."""
    names = []
    for name, child in model.named_children():
        if name == 'levels':
            names += [f'levels.{i}' for i in range(len(child))]
        elif name == 'roi_head':
            names += [f'roi_head.{sub}' for sub, _ in child.named_children()]
        else:
            names.append(name)
    return names


def count(wrapper: nn.Module, model: nn.Module, inputs: torch.Tensor) -> dict:
    """Trace ``wrapper(inputs)`` once: mmengine's count by part and by operator, plus the scan of every mixer call.

    ``model`` is the module whose parts are reported (``wrapper`` itself, or the model it wraps).
    """
    from mmengine.analysis import FlopAnalyzer
    scans = ScanCounter(model)
    proposals: List[int] = []
    rpn = getattr(model, 'rpn_head', None)
    if rpn is not None:  # record how many proposals the RoI heads run on
        predict = rpn.predict

        def recording_predict(*args, **kwargs):
            results = predict(*args, **kwargs)
            proposals.extend(len(result) for result in results)
            return results

        rpn.predict = recording_predict
    try:
        analyzer = FlopAnalyzer(wrapper, (inputs, ))
        analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit,
                               'aten::_convolution_mode', conv_mode_flop_jit)
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')
        with torch.no_grad():
            mmengine_total = analyzer.total()
        by_module, by_operator, unsupported = analyzer.by_module(), analyzer.by_operator(), analyzer.unsupported_ops()
    finally:
        scans.remove()
        if rpn is not None:
            del rpn.predict
    prefix = 'model.' if wrapper is not model else ''
    parts = []
    for name in part_names(model):
        flops, scan = by_module.get(prefix + name, 0), scans.flops_under(name)
        if flops or scan:
            parts.append((name, flops, scan))
    return dict(total=mmengine_total + scans.flops, mmengine=mmengine_total, scan=scans.flops, scan_calls=scans.calls,
                parts=parts, attention=by_operator.get('scaled_dot_product_attention', 0), by_operator=by_operator,
                unsupported=unsupported, proposals=sum(proposals))


def dummy_total(result: dict) -> Optional[int]:
    """The total in mmdet 2's ``forward_dummy`` convention (box heads on 1000 RoIs, masks on 100), if it applies."""
    rois = result['proposals']
    if not rois:
        return None
    total = 0
    for name, flops, scan in result['parts']:
        if name.startswith('roi_head.bbox_head'):
            flops = flops * DUMMY_BOX_ROIS / rois
        elif name.startswith('roi_head.mask_head'):
            flops = flops * DUMMY_MASK_ROIS / rois
        total += flops + scan
    return round(total)


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def report(title: str, shape: Tuple[int, int], batch_shape: Sequence[int], result: dict, model: nn.Module) -> None:
    giga, total = 1e9, result['total']
    padded = tuple(batch_shape) != tuple(shape)
    print(f'\n{title}\ninput 1x3x{shape[0]}x{shape[1]} (HxW)'
          + (f', padded to {batch_shape[0]}x{batch_shape[1]} by the data preprocessor' if padded else ''))
    print('FLOPs: one multiply-add = 1 FLOP (mmengine / fvcore); the selective scan is added analytically, '
          f'{SCAN_FLOPS_PER_ELEMENT}*B*D*L*N + B*D*L per MambaVisionMixer call (mamba-ssm / VMamba convention).')
    rois = result['proposals']
    print('\n| part | params (M) | GFLOPs (mmengine count) | GFLOPs (selective scan) | GFLOPs | share |')
    print('|---|---:|---:|---:|---:|---:|')
    for name, flops, scan in result['parts']:
        label = name + (f' ({rois} RoIs)' if name.startswith('roi_head.') and rois else '')
        print(f'| {label} | {num_params(model.get_submodule(name)) / 1e6:.2f} | {flops / giga:.3f} | '
              f'{scan / giga:.4f} | {(flops + scan) / giga:.3f} | {100 * (flops + scan) / total:.1f}% |')
    print(f'| **total** | {num_params(model) / 1e6:.2f} | {result["mmengine"] / giga:.3f} | '
          f'{result["scan"] / giga:.4f} | {total / giga:.3f} | 100% |')
    calls = result['scan_calls']
    shapes = sorted(Counter((b, d, l, n) for _, b, d, l, n in calls).items(), key=lambda kv: (kv[0][1], kv[0][2]))
    shape_text = ', '.join(f'{k}x (B={b}, D={d}, L={l}, N={n})' for (b, d, l, n), k in shapes) or 'none'
    print(f'\nselective scan: {len(calls)} calls [{shape_text}] (B counts windows), {result["scan"] / giga:.4f} '
          f'GFLOPs = {100 * result["scan"] / total:.2f}% of the total')
    print(f'window attention (scaled_dot_product_attention: q.k^T + attn.v): {result["attention"] / giga:.3f} GFLOPs '
          f'= {100 * result["attention"] / total:.1f}% of the total')
    operators = sorted(result['by_operator'].items(), key=lambda kv: -kv[1])
    print('by operator (GFLOPs): ' + ', '.join(f'{op} {flops / giga:.3f}' for op, flops in operators if flops)
          + f', selective scan {result["scan"] / giga:.4f}')
    skipped = sorted(result['unsupported'])
    if skipped:
        print('not counted (elementwise, or no handle): '
              + ', '.join(op.replace('aten::', '').replace('prim::PythonOp.', '') for op in skipped))
    dummy = dummy_total(result)
    if dummy is not None:
        print(f'RoI heads above run on {rois} RPN proposals (mmdet 3 tensor mode: every stage\'s box and mask head on '
              f'all of them). mmdet 2 forward_dummy convention (box heads on {DUMMY_BOX_ROIS} RoIs, mask heads on '
              f'{DUMMY_MASK_ROIS}; the Swin paper\'s detection FLOPs): {dummy / giga:.1f} GFLOPs')
    print(f'\n| model | input (HxW) | GFLOPs | params (M) | selective scan share |\n|---|---|---:|---:|---:|\n'
          f'| {title.split(" (")[0]} | {shape[0]}x{shape[1]} | {total / giga:.2f} | {num_params(model) / 1e6:.2f} | '
          f'{100 * result["scan"] / total:.2f}% |')


def main(argv: Optional[Sequence[str]] = None) -> dict:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.splitlines()[1:]))
    parser.add_argument('config', nargs='?', help='a detection (mmdet) or segmentation (mmseg) config file')
    parser.add_argument('--arch', help='instead of a config, the MambaVision backbone alone: '
                        f'one of {", ".join(ARCHS)}')
    parser.add_argument('--shape', type=int, nargs='+', metavar='SIZE',
                        help='input HEIGHT [WIDTH], one value for a square (default: 224 for --arch, 1280 800 for '
                        'a detection config, 512 2048 for a segmentation config)')
    parser.add_argument('--out-indices', type=int, nargs='+', metavar='I',
                        help='--arch only: stages the backbone outputs (default 3: the classification trunk)')
    parser.add_argument('--window-size', type=window_side, nargs=4, metavar='W',
                        help='--arch only: window side per stage (default: the classification windows 8 8 14 7); '
                        '"none" for stage 3 / 4: the whole map, no padding')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='config file only: overrides, e.g. model.backbone.window_size="(8,8,56,28)"')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default=None,
                        help='where to run the traced forward (default: cuda when available, else cpu)')
    args = parser.parse_args(argv)
    if (args.config is None) == (args.arch is None):
        parser.error('give either a config file or --arch ARCH (one of them, not both)')
    if args.config is not None and (args.window_size is not None or args.out_indices is not None):
        parser.error('arguments --window-size / --out-indices apply to --arch only; for a config file use '
                     '--cfg-options model.backbone.window_size="(8,8,56,28)"')
    if args.arch is not None and args.cfg_options:
        parser.error('argument --cfg-options applies to a config file only, not to --arch')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('argument --device: cuda requested but torch sees no CUDA device; allowed here: cpu')
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))

    import mmmambavision  # noqa: F401  (registers MambaVision)
    torch.manual_seed(0)
    if args.arch is not None:
        shape = parse_shape(args.shape, DEFAULT_SHAPES['arch'], parser)
        model, title = build_backbone(args, parser, device)
        wrapper, inputs = model, torch.randn(1, 3, *shape, device=device)
    else:
        cfg, scope = load_config(args.config, args.cfg_options, parser)
        shape = parse_shape(args.shape, DEFAULT_SHAPES['det' if scope == 'mmdet' else 'seg'], parser)
        wrapper, model, title, inputs = build_from_config(cfg, scope, shape, device)
        title = f'{osp.basename(args.config)} ({title})'
    result = count(wrapper, model, inputs)
    report(title, shape, inputs.shape[-2:], result, model)
    return result


if __name__ == '__main__':
    main()
