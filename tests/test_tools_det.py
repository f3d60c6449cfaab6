"""tools/train.py, tools/test.py and --resume on CPU, end to end, on generated COCO-layout data.

One short run (a tiny MambaVision, 8 images of 128x160, 1 epoch) goes through train + COCO validation, then
tools/test.py with --show-dir and --out from another work_dir, then --resume for a second epoch: the commands of the
README, in process (slow tier). Its checkpoint also loads from other folders: for tools/test.py, for load_from, for
--resume FILE (message hub, optimiser and scheduler state as saved), and for mmdet's own inferencer.
"""
import glob
import os
import os.path as osp
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip('mmdet')

from mmmambavision.testing.coco_demo import config_options, generate_coco_demo  # noqa: E402
from mmmambavision.engine.entrypoints import test_main as run_test_tool  # noqa: E402
from mmmambavision.engine.entrypoints import train_main as run_train_tool  # noqa: E402
from checkpoint_state import assert_same_state  # noqa: E402  (tests/, on pytest's pythonpath)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(REPO, 'configs', 'det', 'demo_cascade_mambavision_t_synthcoco.py')

# A tiny backbone and light heads keep the run to seconds; everything else is the demo config (itself the 3x
# recipe at a small scale), SyncBN included, with the recipe's AMP put back.
TINY_CONFIG = f"""
_base_ = {DEMO_CONFIG!r}
model = dict(
    backbone=dict(arch=dict(_delete_=True, dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4))),
    neck=dict(in_channels=[16, 32, 64, 128]),
    train_cfg=dict(rpn_proposal=dict(nms_pre=100, max_per_img=50)),
    # score_thr 0: an untrained model still returns boxes, so COCO evaluation always runs.
    test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=50), rcnn=dict(max_per_img=20, score_thr=0.0)))
train_cfg = dict(max_epochs=1)
optim_wrapper = dict(type='AmpOptimWrapper')  # the 3x recipe's AMP (the demo trains in fp32): CPU falls back
"""


@pytest.fixture(scope='module')
def run(tmp_path_factory):  # used by slow tests only: a real training
    """Generate data, write the tiny config, train one epoch; shared by the tests below."""
    # One thread: a tiny model gains nothing from two, and two stall badly when another process holds a core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('det_tools')
    data_root = str(root / 'synthcoco')
    generate_coco_demo(data_root, num_train=8, num_val=4, seed=3)
    config = root / 'tiny_cascade.py'
    config.write_text(TINY_CONFIG)
    options = ['--cfg-options'] + [f'{k}={v}' for k, v in config_options(data_root).items()]
    work_dir = str(root / 'work_dir')
    runner = run_train_tool([str(config), '--work-dir', work_dir, *options])
    yield dict(root=root, config=str(config), options=options, work_dir=work_dir, runner=runner)
    torch.set_num_threads(threads)


def _log_text(work_dir: str) -> str:
    return '\n'.join(open(f).read() for f in sorted(glob.glob(osp.join(work_dir, '*', '*.log'))))


@pytest.mark.slow
def test_train_writes_a_checkpoint_and_reports_coco_ap(run):
    assert osp.isfile(osp.join(run['work_dir'], 'epoch_1.pth'))
    log = _log_text(run['work_dir'])
    assert 'coco/bbox_mAP' in log and 'coco/segm_mAP' in log
    assert 'bbox_mAP_copypaste' in log and 'segm_mAP_copypaste' in log


@pytest.mark.slow
def test_a_trained_checkpoint_loads_as_pretrained_weights(run):
    """A real runner checkpoint (message_hub, MultiStepLR milestones as a Counter) through the backbone's loader."""
    from mmmambavision import MambaVision
    from mmmambavision.checkpoint import load_checkpoint_file
    path = osp.join(run['work_dir'], 'epoch_1.pth')
    raw = load_checkpoint_file(path)
    assert 'message_hub' in raw and 'param_schedulers' in raw
    arch = dict(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4))
    model = MambaVision(arch, init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    model.init_weights()
    trained = raw['state_dict']
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained['backbone.' + key]), key


@pytest.mark.slow
def test_cpu_run_falls_back_to_fp32_with_one_warning(run):
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    if torch.cuda.is_available():
        pytest.skip('a CUDA machine keeps AMP')
    wrapper = run['runner'].optim_wrapper
    assert type(wrapper) is OptimWrapper and not isinstance(wrapper, AmpOptimWrapper)
    assert _log_text(run['work_dir']).count('mixed precision (AmpOptimWrapper) is not available on CPU') == 1


@pytest.mark.slow
def test_syncbn_is_reverted_when_not_distributed(run):
    model = run['runner'].model
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    head_norm = model.roi_head.bbox_head[0].shared_convs[0].bn
    assert isinstance(head_norm, torch.nn.modules.batchnorm._BatchNorm)


@pytest.mark.slow
def test_test_tool_evaluates_the_checkpoint_and_draws_predictions(run):
    out = str(run['root'] / 'predictions.pkl')
    # train --work-dir runs/a, then test runs/a/epoch_1.pth --work-dir runs/a_eval
    runner, metrics = run_test_tool([run['config'], osp.join(run['work_dir'], 'epoch_1.pth'), '--work-dir',
                                     run['work_dir'] + '_eval', '--show-dir', 'pictures', '--out', out,
                                     *run['options']])
    assert {'coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50'} <= set(metrics)
    pictures = glob.glob(osp.join(runner.work_dir, runner.timestamp, 'pictures', '*.jpg'))
    assert len(pictures) == 4
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 4 and 'pred_instances' in predictions[0]


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(run):
    runner = run_train_tool([run['config'], '--work-dir', run['work_dir'], '--resume', *run['options'],
                         'train_cfg.max_epochs=2'])
    assert runner.epoch == 2
    assert osp.isfile(osp.join(run['work_dir'], 'epoch_2.pth'))
    assert 'resumed epoch: 1, iter: ' in _log_text(run['work_dir'])


def _copy_elsewhere(path, folder):
    """A checkpoint in a folder no run has used: a colleague's or a downloaded file."""
    os.makedirs(folder, exist_ok=True)
    target = osp.join(folder, osp.basename(path))
    shutil.copyfile(path, target)
    return target


@pytest.mark.slow
def test_resume_from_a_checkpoint_in_another_folder_restores_the_saved_state(run, tmp_path):
    """--resume FILE with a file no run of this work_dir wrote: message hub, optimiser and schedulers as saved.

    max_epochs=1 (the checkpoint's epoch): runner.train() loads and resumes, trains nothing, returns the runner."""
    from mmmambavision.checkpoint import load_checkpoint_file
    elsewhere = _copy_elsewhere(osp.join(run['work_dir'], 'epoch_1.pth'), str(tmp_path / 'downloads'))
    saved = load_checkpoint_file(elsewhere)
    runner = run_train_tool([run['config'], '--work-dir', str(tmp_path / 'other_run'), '--resume', elsewhere,
                             *run['options'], 'train_cfg.max_epochs=1'])
    assert runner.epoch == 1 and 'resumed epoch: 1, iter: ' in _log_text(str(tmp_path / 'other_run'))
    assert_same_state(runner.optim_wrapper.state_dict(), saved['optimizer'], 'optimizer')
    assert_same_state([s.state_dict() for s in runner.param_schedulers], saved['param_schedulers'], 'param_schedulers')
    # the message hub: every saved scalar's history, and the resumed keys (runtime info the loop refreshes aside)
    hub = runner.message_hub.state_dict()
    for key, buffer in saved['message_hub']['log_scalars'].items():
        assert_same_state(hub['log_scalars'][key], buffer, f'log_scalars[{key!r}]')
    assert set(saved['message_hub']['resumed_keys']) <= set(hub['resumed_keys'])
    assert saved['message_hub']['log_scalars']['train/loss'].mean() == runner.message_hub.get_scalar(
        'train/loss').mean()
    # the original run's optimiser and schedulers are those it saved (nothing changes them after the last save)
    assert_same_state(saved['optimizer'], run['runner'].optim_wrapper.state_dict(), 'original optimizer')
    assert_same_state(saved['param_schedulers'], [s.state_dict() for s in run['runner'].param_schedulers],
                 'original param_schedulers')


@pytest.mark.slow
def test_load_from_a_checkpoint_in_another_folder(run, tmp_path):
    from mmmambavision.engine.entrypoints import _build_runner, load_config, train_parser
    elsewhere = _copy_elsewhere(osp.join(run['work_dir'], 'epoch_1.pth'), str(tmp_path / 'colleague'))
    args = train_parser().parse_args([run['config'], *run['options'], f'load_from={elsewhere}'])
    runner = _build_runner(load_config(args.config, args.cfg_options, 'none', str(tmp_path / 'finetune')))
    runner.load_or_resume()
    trained = run['runner'].model.state_dict()
    for key, value in runner.model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert runner.epoch == 0  # weights only


@pytest.mark.slow
def test_mmdet_inferencer_loads_the_checkpoint_with_weights(run, tmp_path):
    """mmdet's own API (``weights=``) reads a runner checkpoint through mmengine's loader."""
    from mmdet.apis import DetInferencer
    elsewhere = _copy_elsewhere(osp.join(run['work_dir'], 'epoch_1.pth'), str(tmp_path / 'colleague'))
    inferencer = DetInferencer(model=run['config'], weights=elsewhere, device='cpu')
    trained = run['runner'].model.state_dict()
    for key, value in inferencer.model.state_dict().items():
        assert torch.equal(value, trained[key]), key


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_a_hostile_file_is_refused_wherever_it_is(tmp_path):
    """No folder is trusted: a file named like a checkpoint in a run's own work_dir is read like any other."""
    from mmengine.runner.checkpoint import CheckpointLoader
    marker = tmp_path / 'pwned'
    hostile = tmp_path / 'work_dir' / 'epoch_1.pth'
    hostile.parent.mkdir()
    torch.save({'state_dict': {}, 'meta': _RunsCode(marker)}, str(hostile))
    (tmp_path / 'work_dir' / 'last_checkpoint').write_text(str(hostile))
    with pytest.raises(pickle.UnpicklingError, match='posix.system|os.system'):
        CheckpointLoader.load_checkpoint(str(hostile))
    assert not marker.exists()


def test_a_weights_only_file_loads_and_torch_defaults_are_left_alone(tmp_path):
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.runner.checkpoint import CheckpointLoader
    plain = tmp_path / 'weights.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'epoch': 3, 'classes': ('a', 'b')}}, str(plain))
    assert CheckpointLoader.load_checkpoint(str(plain))['meta']['epoch'] == 3
    with_hub = tmp_path / 'with_hub.pth'
    torch.save({'message_hub': {'log_scalars': {'loss': HistoryBuffer([1.0], [1])}}}, str(with_hub))
    assert CheckpointLoader.load_checkpoint(str(with_hub))['message_hub']['log_scalars']['loss'].mean() == 1.0
    # nothing is added to torch's own allow-list, and torch.load keeps its weights_only default
    names = {getattr(g, '__name__', str(g)) for g in torch.serialization.get_safe_globals()}
    assert 'HistoryBuffer' not in names and 'getattr' not in names
    with pytest.raises(pickle.UnpicklingError):
        torch.load(str(with_hub))


@pytest.mark.parametrize('tool', ['train.py', 'test.py', 'demo.py'])
def test_tool_scripts_start(tool):
    result = subprocess.run([sys.executable, osp.join(REPO, 'tools', tool), '--help'], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'usage' in result.stdout


def test_missing_data_and_weights_say_what_to_do(tmp_path):
    from mmengine.config import Config

    from mmmambavision.engine.entrypoints import check_data, check_pretrained
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'det', 'cascade_mambavision_t_3x.py'))
    with pytest.raises(FileNotFoundError, match='model.backbone.init_cfg=None'):
        check_pretrained(cfg)
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'nowhere' / 'coco') + '/'
    with pytest.raises(FileNotFoundError, match='train2017'):
        check_data(cfg, ['train_dataloader'])
    demo = Config.fromfile(DEMO_CONFIG)
    demo.train_dataloader.dataset.data_root = str(tmp_path / 'synthcoco') + '/'
    with pytest.raises(FileNotFoundError, match='mmmambavision.testing.coco_demo'):
        check_data(demo, ['train_dataloader'])


def test_amp_fallback_only_on_cpu():
    from mmengine.config import Config

    from mmmambavision.engine import fall_back_to_fp32
    cfg = Config(dict(optim_wrapper=dict(type='AmpOptimWrapper', loss_scale='dynamic', optimizer=dict(type='SGD'))))
    assert fall_back_to_fp32(cfg, device='cuda') is None
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    message = fall_back_to_fp32(cfg, device='cpu')
    assert 'fp32' in message and cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    assert fall_back_to_fp32(cfg, device='cpu') is None  # nothing left to change: no second warning


def test_distributed_launch_without_gpus_says_so():
    from mmmambavision.engine import check_launcher
    with pytest.raises(RuntimeError, match='without --launcher'):
        check_launcher('pytorch', device='cpu')
    check_launcher('none', device='cpu')


def test_tools_take_mmseg_configs_and_flags():
    pytest.importorskip('mmseg')
    from mmmambavision.engine import entrypoints
    seg_config = osp.join(REPO, 'configs', 'seg', 'upernet_mambavision_t_160k_ade20k.py')
    if not osp.isfile(seg_config):
        pytest.skip('no segmentation config')
    args = entrypoints.test_parser().parse_args(
        [seg_config, 'ckpt.pth', '--out', 'pngs', '--show-dir', 'vis', '--wait-time', '1', '--tta'])
    cfg = entrypoints.load_config(seg_config, None, 'none', None)
    assert cfg.default_scope == 'mmseg' and cfg.work_dir == './work_dirs/upernet_mambavision_t_160k_ade20k'
    entrypoints._seg_visualization(cfg, args)
    assert cfg.default_hooks.visualization.draw and cfg.visualizer.save_dir == 'vis'
    model = cfg.model
    entrypoints._seg_tta(cfg)
    assert cfg.model.type == 'SegTTAModel' and cfg.model.module == model
    train_args = entrypoints.train_parser().parse_args([seg_config, '--resume', '--amp', '--local-rank', '0'])
    assert train_args.resume == 'auto' and train_args.amp


def test_a_config_of_another_codebase_is_refused(tmp_path):
    from mmmambavision.engine.entrypoints import load_config
    config = tmp_path / 'cls.py'
    config.write_text("default_scope = 'mmpretrain'\n")
    with pytest.raises(ValueError, match="default_scope 'mmdet' or 'mmseg'"):
        load_config(str(config), None, 'none', None)
