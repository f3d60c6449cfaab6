"""Segmentation demo: synthetic ADE20K-layout data -> UperNet + MambaVision-T -> mIoU, on CPU or GPU.

    python tools/demo_seg.py                    # ~300 iterations: generate data if absent, train + val, test
    python tools/demo_seg.py --iters 1500       # a longer run (the schedule follows --iters)

Everything runs through ``tools/train.py`` and ``tools/test.py`` (fp32 from scratch, see the config; SyncBN reverts),
with ``configs/seg/demo_upernet_mambavision_t_synthade.py``. At the end it prints the test mIoU / mAcc / aAcc,
the checkpoint it tested and the folder of coloured prediction pictures (``--show-dir``).
"""
import argparse
import glob
import json
import os.path as osp
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIG = osp.join(REPO, 'configs', 'seg', 'demo_upernet_mambavision_t_synthade.py')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train and test UperNet + MambaVision on synthetic ADE20K data.')
    parser.add_argument('--config', default=DEFAULT_CONFIG, help='demo config')
    parser.add_argument('--data-root', default='data/synthade', help='synthetic data set (generated if absent)')
    parser.add_argument('--work-dir', default='work_dirs/demo_upernet_mambavision_t_synthade')
    parser.add_argument('--iters', type=int, default=None,
                        help='training iterations (default: the config\'s); warm-up and poly decay follow')
    parser.add_argument('--num-train', type=int, default=64, help='images to generate for training')
    parser.add_argument('--num-val', type=int, default=16, help='images to generate for validation')
    parser.add_argument('--resume', action='store_true', help='resume from the latest checkpoint in work-dir')
    parser.add_argument('--cfg-options', nargs='+', default=[], help='extra key=value overrides for both tools')
    return parser.parse_args(argv)


def schedule_options(iters: int) -> list:
    """cfg-options that make the demo schedule ``iters`` long (warm-up kept below a tenth of it)."""
    warmup = max(1, min(30, iters // 10))
    return [
        f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        f'param_scheduler.0.end={warmup}', f'param_scheduler.1.begin={warmup}', f'param_scheduler.1.end={iters}',
        f'default_hooks.checkpoint.interval={iters}'
    ]


def run(cmd: list) -> None:
    print('+', ' '.join(cmd), flush=True)
    returncode = subprocess.run(cmd).returncode
    if returncode != 0:
        sys.exit(f'demo_seg: {osp.basename(cmd[1])} failed (exit status {returncode}); see its output above')


def last_checkpoint(work_dir: str) -> str:
    """The checkpoint the training run wrote last (mmengine records it in ``<work_dir>/last_checkpoint``)."""
    marker = osp.join(work_dir, 'last_checkpoint')
    if osp.exists(marker):
        with open(marker) as f:
            path = f.read().strip()
        if osp.exists(path):
            return path
    candidates = sorted(glob.glob(osp.join(work_dir, 'iter_*.pth')), key=osp.getmtime)
    if not candidates:
        sys.exit(f'demo_seg: no checkpoint in {work_dir}')
    return candidates[-1]


def latest_test_metrics(work_dir: str) -> dict:
    """The metrics tools/test.py's logger dumped to ``<work_dir>/<timestamp>/<timestamp>.json``."""
    for path in sorted(glob.glob(osp.join(work_dir, '*', '*.json')), key=osp.getmtime, reverse=True):
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        for record in reversed(records):
            if 'mIoU' in record:
                return record
    return {}


def main(argv=None) -> None:
    args = parse_args(argv)
    from mmmambavision.testing.ade20k_demo import generate_ade20k_demo, is_generated

    if is_generated(args.data_root):
        print(f'using the synthetic data set in {args.data_root}')
    else:
        counts = generate_ade20k_demo(args.data_root, num_train=args.num_train, num_val=args.num_val)
        print(f'generated {counts} images in the ADE20K layout under {args.data_root}')

    options = [f'{loader}.dataset.data_root={args.data_root}'
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    if args.iters is not None:
        options += schedule_options(args.iters)
    options += args.cfg_options

    start = time.time()
    train_cmd = [sys.executable, osp.join(REPO, 'tools', 'train.py'), args.config, '--work-dir', args.work_dir,
                 '--cfg-options', *options]
    if args.resume:
        train_cmd.insert(3, '--resume')
    run(train_cmd)
    train_s = time.time() - start

    checkpoint = last_checkpoint(args.work_dir)
    show_dir = osp.join(args.work_dir, 'show')
    start = time.time()
    run([sys.executable, osp.join(REPO, 'tools', 'test.py'), args.config, checkpoint, '--work-dir', args.work_dir,
         '--show-dir', show_dir, '--cfg-options', *options])
    test_s = time.time() - start

    metrics = latest_test_metrics(args.work_dir)
    pictures = osp.join(show_dir, 'vis_data', 'vis_image')
    print('\n==== segmentation demo (UperNet + MambaVision-T, synthetic ADE20K layout) ====')
    if metrics:
        print('test   ' + '  '.join(f'{k} {metrics[k]:.2f}' for k in ('mIoU', 'mAcc', 'aAcc') if k in metrics))
    print(f'chance mIoU for 8 classes is about {100 / 15:.1f} (uniform guessing)')
    print(f'train {train_s:.0f} s, test {test_s:.0f} s')
    print(f'checkpoint  {checkpoint}')
    print(f'pictures    {pictures}  (coloured predictions next to the ground truth, one per image)')


if __name__ == '__main__':
    main()
