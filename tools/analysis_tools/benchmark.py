"""Backbone throughput, the paper's protocol: eval, fp16 autocast, batch 128, 224 px, median of timed runs.

MambaVision T/S/B beside timm's Swin-T and ConvNeXt-T (when timm is installed) in the same process; one table.

    python tools/analysis_tools/benchmark.py                      # CUDA if present, else a small CPU run
    python tools/analysis_tools/benchmark.py --channels-last --batch-size 128 --runs 30
    python tools/analysis_tools/benchmark.py --channels-last --cuda-graph --fuse-conv-bn  # every deployment option
    python tools/analysis_tools/benchmark.py --channels-last --compile                    # torch.compile, every model
    MMMV_SCAN_BACKEND=triton python tools/analysis_tools/benchmark.py --models mambavision_tiny convnext_tiny

The detection training step has its own tool: benchmark_det.py (and profile_det.py, where its time goes;
benchmark_new_shapes.py, what a new input size costs it).
"""
import argparse
import statistics
from typing import Optional, Sequence, Tuple

import torch

from mmmambavision import MambaVision
from mmmambavision.ops import selected_backend
from timing import graph_times, non_negative_int, positive_int, synced_times


def build(name):
    if name.startswith('mambavision_'):
        return MambaVision(name.split('_', 1)[1], out_indices=(3, ))
    import timm
    return timm.create_model(name, pretrained=False, num_classes=0)


def measure(model, x, runs, warmup, device, graph=False):
    """Images per second of ``model(x)`` in eval under fp16 (CUDA) / bf16 (CPU) autocast, median of ``runs``.

    ``graph``: capture one forward in a CUDA graph and time its replays (no Python or launch overhead), one replay
    per timed run, synchronised like the eager runs.
    """
    dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16
    with torch.no_grad():
        if graph:  # autocast's cache of cast weights would not survive the capture
            with torch.autocast('cuda', dtype=dtype, cache_enabled=False):
                times = graph_times(lambda: model(x), runs, warmup, replays=1)
        else:
            with torch.autocast(device.type, dtype=dtype, enabled=True):
                times = synced_times(lambda: model(x), runs, warmup, device)
    return x.shape[0] / statistics.median(times)


def fuse_conv_bn(model):
    """Fold eval-mode BatchNorm into the preceding convolution (mmcv's ``fuse_conv_bn``): inference only."""
    try:
        from mmcv.cnn import fuse_conv_bn as fuse
    except ImportError as err:
        raise SystemExit(f'--fuse-conv-bn needs mmcv (pip install mmcv): {err}')
    return fuse(model)


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.splitlines()[1:]))
    parser.add_argument('--models', nargs='+', default=None,
                        help='MambaVision (mambavision_tiny/small/base) or timm model names '
                        '(default: T, S, B, swin_tiny_patch4_window7_224, convnext_tiny)')
    parser.add_argument('--batch-size', type=positive_int, default=None, help='default: 128 (CUDA) / 2 (CPU)')
    parser.add_argument('--img-size', type=positive_int, default=None, help='input side (default 224)')
    parser.add_argument('--runs', type=positive_int, default=None, help='timed runs (default: 30 CUDA / 3 CPU)')
    parser.add_argument('--warmup', type=non_negative_int, default=None, help='warm-up runs (default: 10 CUDA / 1 CPU)')
    parser.add_argument('--channels-last', action='store_true', help='also measure each model in channels_last')
    parser.add_argument('--cuda-graph', action='store_true',
                        help='also measure each model replayed from a CUDA graph (every model alike; CUDA only)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile(model, dynamic=False) every model first (the warm-up absorbs compiling)')
    parser.add_argument('--no-cudnn-benchmark', dest='cudnn_benchmark', action='store_false',
                        help='leave torch.backends.cudnn.benchmark off (by default it is on for every model, as in '
                             'timm\'s benchmark: cuDNN picks and caches the fastest convolution per shape instead of '
                             'running its heuristics at every call)')
    parser.add_argument('--fuse-conv-bn', action='store_true',
                        help='fold BatchNorm into convolutions first (changes MambaVision only: the others have '
                             'no BatchNorm)')
    args = parser.parse_args(argv)
    if args.cuda_graph and not torch.cuda.is_available():
        parser.error('argument --cuda-graph: needs a CUDA device')
    return args, parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args, _ = parse_args(argv)
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
