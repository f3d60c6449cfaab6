"""The train / test command lines behind ``tools/train.py`` and ``tools/test.py``.

One pair of tools serves detection (``default_scope='mmdet'``) and segmentation (``default_scope='mmseg'``)
configs: the options are mmdet's and mmseg's (a superset of both), and what differs between the two libraries
(``--out``, ``--show-dir``, ``--tta``) is dispatched on the config's ``default_scope``. On top of the libraries'
own tools:

* a config written for GPUs runs on a machine without CUDA (AMP falls back to fp32 with one logged warning;
  mmengine reverts SyncBN to BN when not distributed);
* every checkpoint a runner writes loads under torch >= 2.6 (``load_from``, the checkpoint to test,
  ``--resume``), wherever it is, through the data-only loader that ``import mmmambavision`` installs into
  mmengine (see :mod:`mmmambavision.checkpoint`); a file that references anything else is refused unexecuted;
* errors say what to do (missing data, missing pretrained weights).
"""
import argparse
import logging
import os
import os.path as osp
import warnings
from copy import deepcopy
from typing import Optional, Sequence, Tuple

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

from .device import check_launcher, fall_back_to_fp32

SCOPES = ('mmdet', 'mmseg')
_CFG_OPTIONS_HELP = ('override settings of the config, as key=value pairs merged into it; lists as key="[a,b]" or '
                     'key=a,b, nested tuples as key="[(a,b),(c,d)]" (quotes needed, no white space)')


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help=_CFG_OPTIONS_HELP)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (tools/dist_train.sh and tools/dist_test.sh pass pytorch)')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Train a detector (mmdet config) or a segmentor (mmseg config)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models (default ./work_dirs/<config name>)')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic mixed precision (the MambaVision configs already use it)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help="scale the learning rate by (GPUs x images per GPU) / the config's base_batch_size")
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or, without a value, from the latest checkpoint in '
                        'the work_dir')
    _add_common_arguments(parser)
    return parser


def test_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector or a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str,
                        help='mmdet: dump predictions to this .pkl file for offline evaluation; '
                        'mmseg: save the predicted maps as PNGs in this directory')
    parser.add_argument('--show', action='store_true', help='show prediction results in a window')
    parser.add_argument('--show-dir', help='directory where the pictures of the predictions are saved '
                        '(mmdet: relative paths land in <work_dir>/<timestamp>/<show-dir>)')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (where the config supports it)')
    _add_common_arguments(parser)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_config(path: str, cfg_options: Optional[dict], launcher: str, work_dir: Optional[str]) -> Config:
    """Read a config, apply ``--cfg-options``, set the launcher and the work_dir (CLI > config > file name)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file {path!r} does not exist (run the tools from the repository root, '
                                'e.g. python tools/train.py configs/det/cascade_mambavision_t_3x.py)')
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'{path}: default_scope is {scope!r}; these tools run mmdet and mmseg configs '
                         f"(default_scope 'mmdet' or 'mmseg', set by their _base_ runtime files)")
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def check_data(cfg: Config, loaders: Sequence[str]) -> None:
    """Fail early, saying what to do, when a data_root the run needs does not exist."""
    for name in loaders:
        loader = cfg.get(name)
        if not loader:
            continue
        dataset = loader.get('dataset', {})
        while isinstance(dataset, dict) and 'dataset' in dataset:
            dataset = dataset['dataset']
        data_root = dataset.get('data_root') if isinstance(dataset, dict) else None
        if data_root and '://' not in data_root and not osp.isdir(data_root):
            hint = ('generate the synthetic demo set with `python -m mmmambavision.testing.coco_demo ' +
                    data_root + '` (or run tools/demo.py)') if 'synth' in data_root else (
                        'lay the data out as docs/detection.md or docs/segmentation.md (Data and weights) '
                        'describes (e.g. data/coco/{annotations,train2017,val2017}), or point the config at it with '
                        f'--cfg-options {name}.dataset.data_root=/path/to/data/')
            raise FileNotFoundError(f'{name}: data_root {data_root!r} does not exist (working directory '
                                    f'{os.getcwd()}); {hint}')


def check_pretrained(cfg: Config) -> None:
    """Fail early when the backbone's ``init_cfg`` names a local pretrained file that is missing."""
    backbone = cfg.get('model', {}).get('backbone', {})
    init_cfg = backbone.get('init_cfg') if isinstance(backbone, dict) else None
    for item in init_cfg if isinstance(init_cfg, list) else [init_cfg]:
        if not isinstance(item, dict) or item.get('type') != 'Pretrained':
            continue
        checkpoint = item.get('checkpoint')
        if isinstance(checkpoint, str) and '://' not in checkpoint and not osp.isfile(checkpoint):
            raise FileNotFoundError(
                f'pretrained backbone weights {checkpoint!r} not found (working directory {os.getcwd()}). '
                f'Download the published ImageNet-1K file (Hugging Face hub, nvidia/MambaVision-*-1K; '
                f'CC-BY-NC-SA-4.0) to {checkpoint}, or train from scratch with '
                '--cfg-options model.backbone.init_cfg=None (in fp32 on GPU: add optim_wrapper.type=OptimWrapper; '
                'from scratch, fp16 AMP can overflow)')


def _build_runner(cfg: Config) -> Runner:
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    from mmengine.registry import RUNNERS
    return RUNNERS.build(cfg)


def _import_scope(scope: str) -> None:
    from mmengine.registry import init_default_scope
    if scope == 'mmdet':
        import mmdet.registry  # noqa: F401
    else:
        import mmseg.registry  # noqa: F401
    init_default_scope(scope)


def train_main(argv: Optional[Sequence[str]] = None) -> Runner:
    """``tools/train.py``: returns the runner after training."""
    args = _parse(train_parser(), argv)
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    scope = cfg.default_scope
    check_launcher(args.launcher)
    _import_scope(scope)
    if scope == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()

    if args.amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper == 'AmpOptimWrapper':
            print_log('AMP training is already enabled in your config.', logger='current', level=logging.WARNING)
        elif wrapper != 'OptimWrapper':
            raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper, but the config has {wrapper}')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    fp32_warning = fall_back_to_fp32(cfg)

    if args.auto_scale_lr:
        auto_scale_lr = cfg.get('auto_scale_lr')
        if not auto_scale_lr or 'base_batch_size' not in auto_scale_lr:
            raise RuntimeError('--auto-scale-lr needs auto_scale_lr=dict(enable=..., base_batch_size=...) in the '
                               f'config; {args.config} has {auto_scale_lr!r}')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if args.resume is not None and cfg.load_from and not osp.isfile(cfg.load_from):
        raise FileNotFoundError(f'--resume {cfg.load_from}: no such checkpoint (omit the file name to resume from '
                                f'the latest checkpoint in {cfg.work_dir})')

    check_data(cfg, ['train_dataloader', 'val_dataloader'])
    if not cfg.get('resume') and not cfg.get('load_from'):
        check_pretrained(cfg)

    runner = _build_runner(cfg)
    if fp32_warning:
        runner.logger.warning(fp32_warning)
    runner.train()
    return runner


def _det_visualization(cfg: Config, args: argparse.Namespace) -> None:
    from mmdet.engine.hooks.utils import trigger_visualization_hook
    trigger_visualization_hook(cfg, args)


def _seg_visualization(cfg: Config, args: argparse.Namespace) -> None:
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise RuntimeError('--show / --show-dir need default_hooks.visualization (SegVisualizationHook) in the '
                           'config')
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        cfg.visualizer['save_dir'] = args.show_dir


def _has_mask_head(model_cfg: dict) -> bool:
    roi_head = model_cfg.get('roi_head') or {}
    return bool(model_cfg.get('mask_head') or roi_head.get('mask_head'))


def _det_tta(cfg: Config) -> None:
    if 'tta_model' not in cfg:
        if _has_mask_head(cfg.model):
            raise ValueError('--tta: this config predicts instance masks and defines no tta_model; mmdet 3.3\'s '
                             'DetTTAModel merges boxes only. Test without --tta, or add tta_model / tta_pipeline '
                             'to the config.')
        warnings.warn('Cannot find ``tta_model`` in config, using mmdet\'s default (flip, NMS 0.5).')
        cfg.tta_model = dict(type='DetTTAModel',
                             tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    if 'tta_pipeline' not in cfg:
        warnings.warn('Cannot find ``tta_pipeline`` in config, using the test pipeline with horizontal flip.')
        dataset = cfg.test_dataloader.dataset
        while 'dataset' in dataset:
            dataset = dataset['dataset']
        cfg.tta_pipeline = deepcopy(dataset.pipeline)
        cfg.tta_pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[[dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
                        [dict(type='PackDetInputs',
                              meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                                         'flip_direction'))]])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:
        dataset = dataset['dataset']
    if 'batch_shapes_cfg' in dataset:
        dataset.batch_shapes_cfg = None
    dataset.pipeline = cfg.tta_pipeline


def _seg_tta(cfg: Config) -> None:
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise ValueError('--tta needs tta_model and tta_pipeline in the config (mmseg\'s dataset and runtime '
                         'bases define them)')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def test_main(argv: Optional[Sequence[str]] = None) -> Tuple[Runner, dict]:
    """``tools/test.py``: returns the runner and the metrics."""
    args = _parse(test_parser(), argv)
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    scope = cfg.default_scope
    check_launcher(args.launcher)
    _import_scope(scope)
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist (train first, e.g. python '
                                f'tools/train.py {args.config}, or download the published weights)')
    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        (_det_visualization if scope == 'mmdet' else _seg_visualization)(cfg, args)
    if args.tta:
        (_det_tta if scope == 'mmdet' else _seg_tta)(cfg)
    if args.out is not None:
        if scope == 'mmdet':
            if not args.out.endswith(('.pkl', '.pickle')):
                raise ValueError(f'--out {args.out}: for detection the dump file must be a .pkl file')
        else:
            cfg.test_evaluator['output_dir'] = args.out
            cfg.test_evaluator['keep_results'] = True

    check_data(cfg, ['test_dataloader'])
    runner = _build_runner(cfg)
    if args.out is not None and scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    metrics = runner.test()
    if args.show_dir:
        if scope == 'mmdet':
            where = osp.join(runner.work_dir, runner.timestamp, args.show_dir)
        else:
            where = osp.join(args.show_dir, 'vis_data', 'vis_image')
        runner.logger.info(f'pictures of the predictions: {where}')
    return runner, metrics
