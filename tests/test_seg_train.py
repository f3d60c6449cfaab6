"""End to end on generated ADE20K-layout data, through tools/train.py and tools/test.py on CPU: train + validation
(mIoU printed), test from another work_dir (mIoU / mAcc / aAcc, predictions, coloured pictures), --resume, and
--resume FILE with the checkpoint in another folder. Real trainings: the slow tier."""
import glob
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

pytest.importorskip('mmseg')
pytestmark = pytest.mark.slow
from mmmambavision.testing.ade20k_demo import generate_ade20k_demo  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(REPO, 'configs', 'seg', 'demo_upernet_mambavision_t_synthade.py')
NUM_VAL = 2


def tool(name, *args, cwd):
    result = subprocess.run([sys.executable, osp.join(REPO, 'tools', name), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:]
    return result.stdout


def small_run_options(data_root, max_iters):
    """A 64x64 version of the demo: tiny crops and images, batch 2, one checkpoint per iteration."""
    return [
        *(f'{loader}.dataset.data_root={data_root}' for loader in ('train_dataloader', 'val_dataloader',
                                                                    'test_dataloader')),
        'train_dataloader.batch_size=2',
        'model.data_preprocessor.size=(64,64)',
        'train_dataloader.dataset.pipeline.2.scale=(64,64)',
        'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
        'val_dataloader.dataset.pipeline.1.scale=(64,64)',
        'test_dataloader.dataset.pipeline.1.scale=(64,64)',
        'model.backbone.window_size=(8,8,4,2)',
        f'train_cfg.max_iters={max_iters}', f'train_cfg.val_interval={max_iters}',
        'param_scheduler.0.end=1', 'param_scheduler.1.begin=1', f'param_scheduler.1.end={max_iters}',
        'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
    ]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Two training iterations with validation at the end, through tools/train.py (AMP config, CPU)."""
    root = tmp_path_factory.mktemp('seg_e2e')
    data_root = str(root / 'synthade')
    generate_ade20k_demo(data_root, num_train=4, num_val=NUM_VAL, image_size=(64, 64))
    work_dir = str(root / 'work')
    out = tool('train.py', DEMO, '--work-dir', work_dir, '--amp', '--cfg-options',
               *small_run_options(data_root, 2), cwd=str(root))
    return dict(root=root, data_root=data_root, work_dir=work_dir, train_log=out)


def test_train_tool_trains_validates_and_checkpoints(trained):
    log = trained['train_log']
    assert 'Iter(train) [2/2]' in log
    assert 'mIoU' in log and 'aAcc' in log and 'mAcc' in log
    assert osp.exists(osp.join(trained['work_dir'], 'iter_2.pth'))


def test_test_tool_prints_metrics_writes_predictions_and_pictures(trained):
    work_dir = trained['work_dir']
    out_dir, show_dir = str(trained['root'] / 'pred'), str(trained['root'] / 'show')
    # train --work-dir work, then test work/iter_2.pth --work-dir work_eval
    log = tool('test.py', DEMO, osp.join(work_dir, 'iter_2.pth'), '--work-dir', work_dir + '_eval', '--out', out_dir,
               '--show-dir', show_dir, '--cfg-options', *small_run_options(trained['data_root'], 2),
               cwd=str(trained['root']))
    for metric in ('mIoU', 'mAcc', 'aAcc'):
        assert metric in log
    assert len(glob.glob(osp.join(out_dir, '*.png'))) == NUM_VAL
    pictures = glob.glob(osp.join(show_dir, '**', '*.png'), recursive=True)
    assert len(pictures) == NUM_VAL


def test_resume_continues_from_the_last_checkpoint(trained):
    log = tool('train.py', DEMO, '--work-dir', trained['work_dir'], '--resume', '--cfg-options',
               *small_run_options(trained['data_root'], 3), cwd=str(trained['root']))
    assert 'resumed epoch: 0, iter: 2' in log
    assert 'Iter(train) [3/3]' in log and 'Iter(train) [1/3]' not in log
    assert osp.exists(osp.join(trained['work_dir'], 'iter_3.pth'))


def test_resume_from_a_checkpoint_in_another_folder(trained, tmp_path):
    """--resume FILE where FILE is a copy in a folder no run has used (a colleague's checkpoint)."""
    elsewhere = tmp_path / 'colleague' / 'iter_2.pth'
    elsewhere.parent.mkdir()
    shutil.copyfile(osp.join(trained['work_dir'], 'iter_2.pth'), elsewhere)
    log = tool('train.py', DEMO, '--work-dir', str(tmp_path / 'other_run'), '--resume', str(elsewhere),
               '--cfg-options', *small_run_options(trained['data_root'], 3), cwd=str(trained['root']))
    assert 'resumed epoch: 0, iter: 2' in log and 'local_data_only backend' in log
    assert 'Iter(train) [3/3]' in log and 'Iter(train) [1/3]' not in log
    assert osp.exists(str(tmp_path / 'other_run' / 'iter_3.pth'))
