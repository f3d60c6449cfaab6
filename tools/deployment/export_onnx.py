"""Export the MambaVision backbone to ONNX, selective scan included as plain ONNX ops, and check it in onnxruntime.

    python tools/deployment/export_onnx.py --arch tiny --shape 224 224 --out work_dirs/mambavision_t_224.onnx
    python tools/deployment/export_onnx.py --config configs/seg/upernet_mambavision_t_160k_ade20k.py \\
        --checkpoint work_dirs/upernet_t/iter_160000.pth --shape 512 512 --out work_dirs/mambavision_t_seg.onnx

The file holds the backbone alone: one input ``input`` (1, C, H, W) float32 and its four outputs ``out0`` ..
``out3`` (or the stages of the config's ``out_indices``), shapes fixed at export (static). The selective scan
exports in the chunked matrix form of ``mmmambavision.ops.scan_chunked`` (masked segment-sums, exponentials and
a matmul per chunk of 64 steps, and one ONNX ``Scan`` node over the chunks carrying the state): no custom op,
no loop per time step. The exporter is torch's torch.export-based one (``torch.onnx.export(..., dynamo=True)``,
which needs onnxscript), run on a program from ``torch.export.export(..., strict=False)``.

After the export the file is loaded in a fresh onnxruntime ``InferenceSession`` on CPU and run on the same random
input as the PyTorch model; for each output the tool prints the largest difference relative to the largest
PyTorch value, ``max|ort - torch| / max|torch|``, and exits 1 if one is above ``--tolerance``.

Weights: ``--checkpoint`` loads a file through ``mmmambavision.checkpoint`` (the data-only loader): a detection
or segmentation checkpoint (keys ``backbone.*``) or an ImageNet file (no prefix; its ``head.*`` and ``norm.*``
are not part of the backbone). Without it the weights are random (seeded), which checks the export but is no
model to deploy. ``--config`` takes ``model.backbone`` from an mmdet / mmseg config (its ``custom_imports`` are
imported), with its ``window_size``; the config's own ``init_cfg`` is not loaded.

Exit status: 0 exported and within tolerance, 1 above tolerance (or the export failed), 2 bad arguments or a
missing dependency.
"""
import argparse
import os
import os.path as osp
import sys
import time
from typing import List, Optional, Sequence, Tuple

from mmmambavision.utils import window_side

REQUIREMENTS = ('onnx==1.23.2', 'onnxruntime==1.31.1', 'onnxscript==0.7.2')
ARCHS = ('tiny', 'tiny2', 'small', 'base', 'large', 'large2', 't', 't2', 's', 'b', 'l', 'l2')
DEFAULT_OPSET = 18  # the opset torch's ONNX function library is written in: no version conversion
OPSETS = range(18, 24)
DEFAULT_TOLERANCE = 1e-4
MIN_SIDE, MAX_SIDE = 32, 4096


def say(message: str) -> None:
    print(f'[export_onnx] {message}', flush=True)


def _opset(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value not in OPSETS:
        raise argparse.ArgumentTypeError(f'expected an int in {OPSETS.start}..{OPSETS.stop - 1}, got {text!r}')
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.
    if not value > 0:
        raise argparse.ArgumentTypeError(f'expected a positive number, got {text!r}')
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='export_onnx.py', description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.splitlines()[1:]))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--arch', help=f'a MambaVision size: one of {", ".join(ARCHS)}')
    source.add_argument('--config', metavar='CFG', help='an mmdet / mmseg config whose model.backbone is exported')
    parser.add_argument('--checkpoint', metavar='CKPT',
                        help='weights: a det / seg checkpoint (backbone.* keys) or an ImageNet file '
                        '(default: random weights)')
    parser.add_argument('--shape', type=int, nargs='+', required=True, metavar='SIZE',
                        help=f'input HEIGHT WIDTH (one value: a square), each {MIN_SIDE}..{MAX_SIDE}')
    parser.add_argument('--window-size', type=window_side, nargs=4, metavar='W',
                        help='window side per stage (default: the config\'s, or 8 8 14 7 for --arch); "none" for '
                        'stage 3 / 4: the whole map, no padding')
    parser.add_argument('--opset', type=_opset, default=DEFAULT_OPSET,
                        help=f'ONNX opset, {OPSETS.start}..{OPSETS.stop - 1} (default {DEFAULT_OPSET})')
    parser.add_argument('--out', required=True, metavar='X.onnx', help='the ONNX file to write')
    parser.add_argument('--tolerance', type=_tolerance, default=DEFAULT_TOLERANCE,
                        help=f'largest relative difference accepted per output (default {DEFAULT_TOLERANCE:g})')
    return parser


def parse_shape(values: Sequence[int], parser: argparse.ArgumentParser) -> Tuple[int, int]:
    if len(values) not in (1, 2) or any(not MIN_SIDE <= v <= MAX_SIDE for v in values):
        parser.error(f'argument --shape: expected HEIGHT [WIDTH], one or two ints in {MIN_SIDE}..{MAX_SIDE} (one '
                     f'value: a square), got {" ".join(map(str, values))}')
    return values[0], values[-1]


def check_dependencies(parser: argparse.ArgumentParser) -> None:
    missing = []
    for module in ('onnx', 'onnxruntime', 'onnxscript'):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        parser.exit(2, f'export_onnx.py: error: {", ".join(missing)} not installed; install with\n'
                    f'  pip install {" ".join(REQUIREMENTS)}\n'
                    '(or pip install -e ".[onnx]"; bash tools/setup_env.sh installs them in .venv)\n')


def backbone_kwargs_from_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """``model.backbone`` of a config (its custom_imports imported), as MambaVision keyword arguments."""
    from mmengine.config import Config
    from mmengine.utils import import_modules_from_strings
    try:
        cfg = Config.fromfile(path)
    except Exception as error:  # a syntax error, a missing base config, ...
        parser.error(f'argument --config: cannot read {path}: {type(error).__name__}: {error}')
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    backbone = cfg.get('model', {}).get('backbone')
    if backbone is None:
        parser.error(f'argument --config: {path} has no model.backbone')
    backbone = dict(backbone)
    kind = str(backbone.pop('type', ''))
    if kind.split('.')[-1] != 'MambaVision':
        parser.error(f'argument --config: model.backbone is {kind!r}; this tool exports MambaVision backbones')
    backbone.pop('init_cfg', None)
    backbone.pop('_delete_', None)
    return backbone


def build_backbone(args, parser: argparse.ArgumentParser):
    from mmmambavision import MambaVision
    if args.config is not None:
        kwargs = backbone_kwargs_from_config(args.config, parser)
        source = '--config'
    else:
        kwargs = dict(arch=args.arch)
        source = '--arch'
    if args.window_size is not None:
        kwargs['window_size'] = tuple(args.window_size)
    try:
        model = MambaVision(**kwargs)
    except (TypeError, ValueError) as error:
        message = str(error)
        argument = ('--window-size' if 'window_size' in message and args.window_size is not None
                    else '--arch' if message.startswith('arch') and args.arch is not None else source)
        allowed = f' (allowed: {", ".join(ARCHS)})' if argument == '--arch' else ''
        parser.error(f'argument {argument}: {message}{allowed}')
    return model


def load_weights(model, path: str) -> None:
    """Weights from a det / seg checkpoint (``backbone.`` prefix, detected) or an ImageNet file (no prefix)."""
    from mmmambavision.checkpoint import extract_state_dict, load_checkpoint_file
    full = extract_state_dict(load_checkpoint_file(path, map_location='cpu'))
    prefix = 'backbone.' if any(k.startswith('backbone.') for k in full) else ''
    state = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own}
    if not matched:
        raise ValueError(f'{path}: no key matches the backbone (first keys: {list(state)[:3]})')
    shapes = [k for k, v in matched.items() if tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        raise ValueError(f'{path}: shapes differ from the backbone for {shapes[:5]} (another arch?)')
    model.load_state_dict(matched, strict=False)
    missing = sorted(set(own) - set(matched))
    ignored = sorted(k for k in full if not (k.startswith(prefix) and k[len(prefix):] in own))
    say(f'loaded {len(matched)} tensors from {path} (prefix {prefix or "none"}); '
        f'{len(ignored)} not in the backbone ignored{_sample(ignored)}; '
        f'{len(missing)} backbone tensors not in the file, left at their initial values{_sample(missing)}')


def _sample(names: List[str]) -> str:
    if not names:
        return ''
    roots = sorted({name.split('.')[0] for name in names})
    return ' (' + ', '.join(f'{root}.*' for root in roots[:6]) + (', ...' if len(roots) > 6 else '') + ')'


def relative_difference(got, want) -> float:
    """``max|got - want| / max|want|`` (absolute where want is all zeros), in float64."""
    import numpy as np
    want = np.asarray(want, dtype=np.float64)
    error = float(np.abs(np.asarray(got, dtype=np.float64) - want).max())
    scale = float(np.abs(want).max())
    return error / scale if scale > 0 else error


def export(model, image, path: str, opset: int = DEFAULT_OPSET, output_names: Optional[Sequence[str]] = None,
           progress: bool = False) -> Tuple[float, float]:
    """Export ``model`` (in eval mode) at ``image``'s shape, weights inside the file: ``torch.export.export``
    (non-strict: the model's Python runs as it is, on fake tensors), then torch's ONNX exporter on the exported
    program (its decompositions, the translation through onnxscript and the graph optimisation). Returns the
    seconds of both steps.
    ``output_names`` default to ``out{i}`` per out_index."""
    import warnings

    import torch
    output_names = list(output_names or (f'out{i}' for i in model.out_indices))
    with warnings.catch_warnings(), torch.no_grad():  # an inference graph: no autograd state to trace
        warnings.simplefilter('ignore')  # notes on prototype ops (torch's scan) and the like
        if progress:
            say('torch.export (non-strict) ...')
        start = time.perf_counter()
        program = torch.export.export(model, (image, ), strict=False)
        traced = time.perf_counter() - start
        if progress:
            say(f'torch.export: {traced:.1f} s; translating to ONNX (decompositions, onnxscript, optimisation) ...')
        start = time.perf_counter()
        torch.onnx.export(program, (image, ), path, dynamo=True, opset_version=opset, input_names=['input'],
                          output_names=output_names, external_data=False, optimize=True, verbose=False)
    return traced, time.perf_counter() - start


def describe(path: str) -> str:
    """Size, node count, op types and any operator domain besides the standard one."""
    import onnx
    graph = onnx.load(path, load_external_data=False).graph
    op_types = sorted({node.op_type for node in graph.node})
    custom = sorted({node.domain for node in graph.node if node.domain not in ('', 'ai.onnx')})
    size = osp.getsize(path) / 2 ** 20
    return (f'{size:.1f} MiB, {len(graph.node)} nodes; ops: {" ".join(op_types)}'
            f'{"; other domains: " + ", ".join(custom) if custom else ""}')


def run_onnxruntime(path: str, image) -> list:
    """The outputs of ``path`` on ``image`` in a fresh onnxruntime session on CPU."""
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    return session.run(None, {session.get_inputs()[0].name: image.numpy()})


def compare(got: Sequence, want: Sequence, names: Sequence[str], tolerance: float) -> Tuple[bool, List[float]]:
    """Print the largest relative difference of each output; whether all are within ``tolerance``."""
    differences = []
    for name, ort_out, torch_out in zip(names, got, want):
        if tuple(ort_out.shape) != tuple(torch_out.shape):
            print(f'{name}: shape {tuple(ort_out.shape)} from onnxruntime, {tuple(torch_out.shape)} from PyTorch',
                  flush=True)
            differences.append(float('inf'))
            continue
        differences.append(relative_difference(ort_out, torch_out))
        print(f'{name} {"x".join(map(str, torch_out.shape))}: max relative difference {differences[-1]:.2e}',
              flush=True)
    ok = len(got) == len(want) and all(d <= tolerance for d in differences)  # NaN compares False
    return ok, differences


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.arch is not None and args.arch.lower() not in ARCHS:
        parser.error(f'argument --arch: {args.arch!r} is not a MambaVision size; allowed: {", ".join(ARCHS)}')
    if args.config is not None and not osp.isfile(args.config):
        parser.error(f'argument --config: file not found: {args.config}')
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        parser.error(f'argument --checkpoint: file not found: {args.checkpoint}')
    if not args.out.endswith('.onnx'):
        parser.error(f'argument --out: expected a file name ending in .onnx, got {args.out!r}')
    if osp.isdir(args.out):
        parser.error(f'argument --out: {args.out} is a folder; give a file name')
    height, width = parse_shape(args.shape, parser)
    check_dependencies(parser)

    import onnx
    import onnxruntime
    import torch

    import mmmambavision  # noqa: F401  (registers MambaVision, installs the data-only checkpoint loader)

    torch.manual_seed(0)
    model = build_backbone(args, parser)
    model.init_weights()
    if args.checkpoint is not None:
        try:
            load_weights(model, args.checkpoint)
        except Exception as error:
            parser.exit(2, f'export_onnx.py: error: argument --checkpoint: {type(error).__name__}: {error}\n')
    else:
        say('no --checkpoint: random (seeded) weights; the file checks the export, it is not a trained model')
    model.eval()
    name = args.arch or osp.basename(args.config)
    say(f'MambaVision {name}: window_size={model.window_size}, out_indices={model.out_indices}, '
        f'input 1x{model.in_channels}x{height}x{width}, opset {args.opset}')
    image = torch.randn(1, model.in_channels, height, width, generator=torch.Generator().manual_seed(0))
    output_names = [f'out{i}' for i in model.out_indices]

    start = time.perf_counter()
    with torch.no_grad():
        want = [t.numpy().copy() for t in model(image)]
    say(f'PyTorch forward: {time.perf_counter() - start:.1f} s')

    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    try:
        export_seconds = sum(export(model, image, args.out, args.opset, output_names, progress=True))
        onnx.checker.check_model(args.out)
    except Exception as error:
        say(f'export failed: {type(error).__name__}: {error}')
        return 1
    say(f'exported {args.out} in {export_seconds:.1f} s ({describe(args.out)})')

    say('onnxruntime: a fresh InferenceSession on CPU ...')
    start = time.perf_counter()
    got = run_onnxruntime(args.out, image)
    say(f'onnxruntime {onnxruntime.__version__}: session and run {time.perf_counter() - start:.1f} s')
    ok, differences = compare(got, want, output_names, args.tolerance)
    worst = max(differences, default=float('nan'))
    print(f'{"OK" if ok else "FAILED"}: largest relative difference {worst:.2e} '
          f'({"within" if ok else "above"} the tolerance {args.tolerance:g}); export {export_seconds:.1f} s',
          flush=True)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
