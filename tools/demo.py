"""The embedded default: Cascade Mask R-CNN + MambaVision-T, trained and evaluated on generated COCO-layout data.

    .venv/bin/python tools/demo.py

1. generates a small synthetic data set in the standard COCO layout (``data/synthcoco``: the real 80-category
   table, instance polygons; see ``mmmambavision/testing/coco_demo.py``), unless it is there already;
2. trains ``configs/det/demo_cascade_mambavision_t_synthcoco.py`` through ``tools/train.py``'s code (train, then
   COCO validation);
3. tests the last checkpoint through ``tools/test.py``'s code with ``--show-dir``;
4. prints the COCO box / mask AP, the checkpoint path and where the pictures of the predictions went.

The defaults finish in a few minutes on 2 CPU cores (a GPU is used when present). The short schedule shows the
pipeline end to end; a longer one shows the task is learnt, e.g.::

    .venv/bin/python tools/demo.py --num-train 256 --epochs 24 --work-dir work_dirs/demo_long \
        --data-root data/synthcoco_256
"""
import argparse
import os
import os.path as osp
import sys
import time
from typing import List, Optional, Sequence

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/det/demo_cascade_mambavision_t_synthcoco.py'
DEFAULT_DATA_ROOT = 'data/synthcoco'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-root', default=DEFAULT_DATA_ROOT,
                        help='where the synthetic data set is (generated there when absent)')
    parser.add_argument('--num-train', type=int, default=64, help='training images to generate')
    parser.add_argument('--num-val', type=int, default=16, help='validation images to generate')
    parser.add_argument('--seed', type=int, default=0, help='seed of the generated data')
    parser.add_argument('--epochs', type=int, default=None, help="training epochs (default: the config's)")
    parser.add_argument('--work-dir', default='work_dirs/demo_cascade_mambavision_t_synthcoco')
    parser.add_argument('--show-dir', default='predictions',
                        help='pictures of the test predictions, under <work-dir>/<timestamp>/')
    parser.add_argument('--cfg-options', nargs='+', default=[], help='passed on to train.py and test.py')
    return parser.parse_args(argv)


def schedule_options(epochs: int) -> List[str]:
    """Train for ``epochs``, dropping the learning rate 10x for the last sixth (longer runs) and validating once."""
    milestone = epochs - max(1, epochs // 6) if epochs >= 6 else 1000
    return [f'train_cfg.max_epochs={epochs}', f'param_scheduler.1.end={epochs}',
            f'param_scheduler.1.milestones=[{milestone}]']


def use_one_thread_when_busy() -> None:
    """On a busy CPU-only machine, run torch on one thread.

    With fewer free cores than torch threads, every parallel region waits for a descheduled thread: measured on a
    2-core machine with one other busy process, an AdamW step took 5-12 s on 2 threads and 0.02 s on 1.
    """
    import torch
    if 'OMP_NUM_THREADS' in os.environ or torch.cuda.is_available():
        return
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if cpus - load < torch.get_num_threads() - 0.5:
        torch.set_num_threads(max(1, int(cpus - load + 0.5)))
        print(f'[demo] the machine is busy (load {load:.1f} on {cpus} cores): using {torch.get_num_threads()} '
              'torch thread(s); set OMP_NUM_THREADS to choose', flush=True)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    use_one_thread_when_busy()
    os.chdir(REPO)  # the config's relative paths (data/, work_dirs/) are relative to the repository
    from mmmambavision.testing.coco_demo import config_options, generate_coco_demo, is_generated
    from mmmambavision.engine.entrypoints import test_main, train_main

    start = time.time()
    if is_generated(args.data_root):
        print(f'[demo] using the synthetic COCO-layout data in {args.data_root} (delete it to regenerate)')
    else:
        print(f'[demo] generating {args.num_train} + {args.num_val} synthetic images in {args.data_root}')
        generate_coco_demo(args.data_root, num_train=args.num_train, num_val=args.num_val, seed=args.seed)

    options = list(args.cfg_options)
    if osp.normpath(args.data_root) != DEFAULT_DATA_ROOT:
        options += [f'{key}={value}' for key, value in config_options(args.data_root).items()]
    if args.epochs is not None:
        options += schedule_options(args.epochs)
    cfg_options = ['--cfg-options', *options] if options else []

    train_main([CONFIG, '--work-dir', args.work_dir, *cfg_options])
    with open(osp.join(args.work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    runner, metrics = test_main([CONFIG, checkpoint, '--work-dir', args.work_dir, '--show-dir', args.show_dir,
                                 *cfg_options])
    pictures = osp.join(runner.work_dir, runner.timestamp, args.show_dir)

    minutes = (time.time() - start) / 60
    names = ['mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l']
    lines = [f'[demo] finished in {minutes:.1f} min. COCO AP on the {args.data_root} val2017 split:',
             '         ' + ''.join(f'{n:>9}' for n in names)]
    for task in ('bbox', 'segm'):
        values = [metrics.get(f'coco/{task}_{n}', float('nan')) for n in names]
        lines.append(f'    {task:5}' + ''.join(f'{v:9.3f}' for v in values))
    lines += [f'[demo] checkpoint: {osp.abspath(checkpoint)}',
              f'[demo] pictures of the predictions: {osp.abspath(pictures)}',
              f'[demo] the full COCO tables (COCOeval summaries) are in the log above and in '
              f'{osp.abspath(osp.join(runner.work_dir, runner.timestamp))}']
    print('\n'.join(lines), flush=True)
    return dict(metrics=metrics, checkpoint=checkpoint, pictures=pictures)


if __name__ == '__main__':
    try:
        main()
    except FileNotFoundError as error:
        sys.exit(f'[demo] {error}')
