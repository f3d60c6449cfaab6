"""Backbone throughput, the paper's protocol: eval, fp16 autocast, batch 128, 224 px, median of timed runs.

MambaVision T/S/B beside timm's Swin-T and ConvNeXt-T (when timm is installed) in the same process; one table.

    python tools/benchmark.py                      # CUDA if present, else a small CPU run
    python tools/benchmark.py --channels-last --batch-size 128 --runs 30
"""
import argparse
import statistics
import time

import torch

from mmmambavision import MambaVision
from mmmambavision.ops import selected_backend


def build(name):
    if name.startswith('mambavision_'):
        return MambaVision(name.split('_', 1)[1], out_indices=(3, ))
    import timm
    return timm.create_model(name, pretrained=False, num_classes=0)


def measure(model, x, runs, warmup, device):
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16 if device.type == 'cuda'
                                          else torch.bfloat16, enabled=True):
        for i in range(warmup + runs):
            if device.type == 'cuda':
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if device.type == 'cuda':
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return x.shape[0] / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=['mambavision_tiny', 'mambavision_small', 'mambavision_base',
                                                        'swin_tiny_patch4_window7_224', 'convnext_tiny'])
    parser.add_argument('--batch-size', type=int, default=None)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--runs', type=int, default=None)
    parser.add_argument('--warmup', type=int, default=None)
    parser.add_argument('--channels-last', action='store_true', help='also measure each model in channels_last')
    args = parser.parse_args()
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    cuda = device.type == 'cuda'
    batch = args.batch_size or (128 if cuda else 2)
    runs, warmup = args.runs or (30 if cuda else 3), args.warmup or (10 if cuda else 1)
    print(f'device: {torch.cuda.get_device_name() if cuda else "cpu"}, torch {torch.__version__}, '
          f'scan backend: {selected_backend(device)}, batch {batch}, {args.img_size}px')
    rows = []
    for name in args.models:
        try:
            model = build(name).to(device).eval()
        except ImportError as err:
            print(f'skip {name}: {err}')
            continue
        for cl in ([False, True] if args.channels_last else [False]):
            x = torch.randn(batch, 3, args.img_size, args.img_size, device=device)
            if cl:
                model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
            rows.append((name, cl, measure(model, x, runs, warmup, device)))
        del model
    best = {}
    for name, cl, ips in rows:
        best[name] = max(best.get(name, 0), ips)
    ref = {k: best.get(k) for k in ('swin_tiny_patch4_window7_224', 'convnext_tiny')}
    print(f'\n| model | channels_last | img/s | vs Swin-T (best) | vs ConvNeXt-T (best) |\n|---|---|---:|---:|---:|')
    for name, cl, ips in rows:
        rs = f'{ips / ref["swin_tiny_patch4_window7_224"]:.2f}x' if ref['swin_tiny_patch4_window7_224'] else '-'
        rc = f'{ips / ref["convnext_tiny"]:.2f}x' if ref['convnext_tiny'] else '-'
        print(f'| {name} | {cl} | {ips:.0f} | {rs} | {rc} |')


if __name__ == '__main__':
    main()
