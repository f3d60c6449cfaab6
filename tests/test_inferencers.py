"""mmdet's DetInferencer and mmseg's MMSegInferencer with this project's configs, on a real photograph.

The photograph is matplotlib's sample image ``grace_hopper.jpg``; an odd-size PNG is made from it. The calls are the
ones docs/inference.md gives. Fast tier: the demo configs (~128 px test scale), with ``weights=None`` and with a
checkpoint written the way mmengine's runner writes one (``meta.dataset_meta``, a message hub whose HistoryBuffers
plain ``torch.load`` refuses). Slow tier: the full-size T configs with ``weights=None``, and checkpoints of real
one-epoch / two-iteration trainings of the demo configs on generated data.
"""
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

import mmcv  # noqa: E402
from mmengine.config import Config  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_T = osp.join(REPO, 'configs', 'det', 'cascade_mambavision_t_3x.py')
DET_DEMO = osp.join(REPO, 'configs', 'det', 'demo_cascade_mambavision_t_synthcoco.py')
SEG_T = osp.join(REPO, 'configs', 'seg', 'upernet_mambavision_t_160k_ade20k.py')
SEG_DEMO = osp.join(REPO, 'configs', 'seg', 'demo_upernet_mambavision_t_synthade.py')
DET_KEYS = {'labels', 'scores', 'bboxes', 'masks'}


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    # Small models on a 2-core machine: one thread avoids stalls when another process holds a core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def photo():
    """matplotlib's sample photograph (a JPEG, 600 rows x 512 columns)."""
    from matplotlib import cbook
    return str(cbook.get_sample_data('grace_hopper.jpg', asfileobj=False))


@pytest.fixture(scope='module')
def odd_png(photo, tmp_path_factory):
    """The photograph resized to 333 x 517 (rows x columns), neither a multiple of 32, saved as PNG."""
    path = str(tmp_path_factory.mktemp('odd') / 'odd_333x517.png')
    assert mmcv.imwrite(mmcv.imresize(mmcv.imread(photo), (517, 333)), path)
    return path


def _image_shape(path):
    return mmcv.imread(path).shape


def _check_det_result(result, images, out_dir):
    """One prediction dict per image, boxes inside the image, masks at its size; one picture of its size each."""
    from pycocotools import mask as mask_utils
    assert len(result['predictions']) == len(images)
    for image, prediction in zip(images, result['predictions']):
        height, width = _image_shape(image)[:2]
        assert set(prediction) == DET_KEYS, set(prediction)
        boxes = np.asarray(prediction['bboxes'], dtype=np.float32).reshape(-1, 4)
        assert len(boxes) == len(prediction['labels']) == len(prediction['scores']) == len(prediction['masks'])
        if len(boxes):
            assert boxes[:, [0, 2]].min() >= 0 and boxes[:, [0, 2]].max() <= width
            assert boxes[:, [1, 3]].min() >= 0 and boxes[:, [1, 3]].max() <= height
            assert tuple(mask_utils.decode(prediction['masks'][0]).shape) == (height, width)
        picture = osp.join(out_dir, 'vis', osp.basename(image))
        assert osp.isfile(picture), picture
        assert _image_shape(picture) == (height, width, 3)


def _det_inferencer(config, weights=None, cfg_options=None):
    from mmdet.apis import DetInferencer
    cfg = Config.fromfile(config)  # imports mmmambavision (custom_imports): MambaVision and the checkpoint loader
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return DetInferencer(model=cfg, weights=weights, device='cpu', show_progress=False)


# score_thr 0: an untrained model still returns its top boxes, so the checks below see some.
ANY_SCORE = {'model.test_cfg.rcnn.score_thr': 0.0, 'model.test_cfg.rcnn.max_per_img': 20}


def _save_runner_style_checkpoint(model, path, dataset_meta):
    """What mmengine's runner saves: ``meta`` (dataset_meta among it), ``state_dict`` and a message hub state."""
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('test_inferencers_checkpoint')
    hub.update_scalar('train/loss', 1.5)
    hub.update_info('epoch', 1)
    meta = dict(epoch=1, iter=2, seed=0, experiment_name='test_inferencers', dataset_meta=dataset_meta)
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(dict(meta=meta, state_dict=state_dict, message_hub=hub.state_dict()), path)
    return state_dict


# ---------------------------------------------------------------------------------------------------- detection


@pytest.mark.slow  # builds a whole detector / segmentor: over 10 s on 2 cores
def test_det_demo_config_without_weights_on_an_odd_size_png(odd_png, photo, tmp_path):
    inferencer = _det_inferencer(DET_DEMO, cfg_options=ANY_SCORE)
    # no checkpoint: mmdet takes COCO's classes, the config's test data set gives the palette
    assert len(inferencer.model.dataset_meta['classes']) == 80
    assert len(inferencer.model.dataset_meta['palette']) == 80
    out_dir = str(tmp_path / 'out')
    result = inferencer([odd_png, photo], batch_size=2, out_dir=out_dir, no_save_pred=False, pred_score_thr=0.0)
    _check_det_result(result, [odd_png, photo], out_dir)
    assert len(result['predictions'][0]['labels']) > 0
    assert osp.isfile(osp.join(out_dir, 'preds', 'odd_333x517.json'))


@pytest.mark.slow  # builds a whole detector / segmentor: over 10 s on 2 cores
def test_det_demo_config_with_a_runner_checkpoint(photo, tmp_path):
    from mmdet.datasets import CocoDataset
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(DET_DEMO)
    init_default_scope('mmdet')
    torch.manual_seed(1)
    model = MODELS.build(cfg.model)
    classes = tuple(f'shape {i}' for i in range(80))  # not COCO's: the checkpoint's names must win
    path = str(tmp_path / 'elsewhere' / 'epoch_1.pth')
    os.makedirs(osp.dirname(path))
    saved = _save_runner_style_checkpoint(model, path, dict(classes=classes,
                                                            palette=CocoDataset.METAINFO['palette']))
    with pytest.raises(Exception, match='Weights only load failed|weights_only'):
        torch.load(path)  # torch's own loader refuses the message hub; mmmambavision's loader reads it

    inferencer = _det_inferencer(DET_DEMO, weights=path, cfg_options=ANY_SCORE)
    loaded = inferencer.model.state_dict()
    assert set(loaded) == set(saved)
    for key, value in saved.items():
        assert torch.equal(loaded[key].cpu(), value), key
    assert tuple(inferencer.model.dataset_meta['classes']) == classes
    assert inferencer.visualizer.dataset_meta['classes'] == inferencer.model.dataset_meta['classes']
    out_dir = str(tmp_path / 'out')
    result = inferencer(photo, out_dir=out_dir, pred_score_thr=0.0)
    _check_det_result(result, [photo], out_dir)


@pytest.mark.slow
def test_det_t_config_without_weights_on_the_photo(photo, tmp_path):
    """The full-size T config (800 px short side, windows 8, 8, 112, 56), no checkpoint and no ImageNet file."""
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=DET_T, weights=None, device='cpu', show_progress=False)
    assert type(inferencer.model.backbone).__name__ == 'MambaVision'
    out_dir = str(tmp_path / 'out')
    result = inferencer(photo, out_dir=out_dir)
    _check_det_result(result, [photo], out_dir)


@pytest.mark.slow
def test_det_demo_checkpoint_of_a_real_training(photo, tmp_path):
    """One epoch of the demo config on 4 generated images through tools/train.py's code; its checkpoint predicts."""
    from mmdet.apis import DetInferencer
    from mmdet.datasets import CocoDataset
    from mmmambavision.engine.entrypoints import train_main
    from mmmambavision.testing.coco_demo import config_options, generate_coco_demo
    data_root = str(tmp_path / 'synthcoco')
    generate_coco_demo(data_root, num_train=4, num_val=2, seed=5)
    options = dict(config_options(data_root), **{'train_cfg.max_epochs': 1})
    work_dir = str(tmp_path / 'work_dir')
    train_main([DET_DEMO, '--work-dir', work_dir, '--cfg-options', *(f'{k}={v}' for k, v in options.items())])
    checkpoint = osp.join(work_dir, 'epoch_1.pth')

    inferencer = DetInferencer(model=DET_DEMO, weights=checkpoint, device='cpu', show_progress=False)
    assert tuple(inferencer.model.dataset_meta['classes']) == tuple(CocoDataset.METAINFO['classes'])
    out_dir = str(tmp_path / 'out')
    _check_det_result(inferencer(photo, out_dir=out_dir), [photo], out_dir)

    # model=None: the config comes from the checkpoint's message hub; mmmambavision is imported in this process
    from_checkpoint = DetInferencer(weights=checkpoint, device='cpu', show_progress=False)
    assert type(from_checkpoint.model.backbone).__name__ == 'MambaVision'
    # a fresh process must import mmmambavision first: the inferencer reads the file before the config it holds
    fresh = subprocess.run(
        [sys.executable, '-c', f'from mmdet.apis import DetInferencer; DetInferencer(weights={checkpoint!r}, '
         "device='cpu')"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert fresh.returncode != 0 and 'Weights only load failed' in fresh.stdout, fresh.stdout[-3000:]


# ------------------------------------------------------------------------------------------------- segmentation


def _seg_dataset_meta(cfg):
    """classes and palette of the config's test data set (built lazily: no file is read)."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    meta = DATASETS.build(dict(cfg.test_dataloader.dataset, lazy_init=True)).metainfo
    return dict(classes=tuple(meta['classes']), palette=[list(c) for c in meta['palette']])


def _seg_inferencer(config, weights=None):
    from mmseg.apis import MMSegInferencer
    cfg = Config.fromfile(config)
    return cfg, MMSegInferencer(model=cfg, weights=weights, device='cpu')


def _check_seg_result(result, images, out_dir, num_classes):
    predictions = result['predictions']
    predictions = predictions if isinstance(predictions, list) else [predictions]
    assert len(predictions) == len(images)
    for index, (image, prediction) in enumerate(zip(images, predictions)):
        height, width = _image_shape(image)[:2]
        assert prediction.shape == (height, width)
        assert prediction.min() >= 0 and prediction.max() < num_classes
        picture = osp.join(out_dir, 'vis', osp.basename(image))
        assert _image_shape(picture) == (height, width, 3)
        label_map = osp.join(out_dir, 'pred', f'{index:08d}_pred.png')
        np.testing.assert_array_equal(mmcv.imread(label_map, flag='unchanged'), prediction)


def test_seg_demo_config_without_weights_on_an_odd_size_png(odd_png, photo, tmp_path):
    cfg, inferencer = _seg_inferencer(SEG_DEMO)
    # no checkpoint: mmseg falls back to Cityscapes' 19 classes, whatever the config says; and visualize() draws
    # with model.dataset_meta (MMSegInferencer's classes= / palette= / dataset_name= arguments are overridden by it)
    assert len(inferencer.model.dataset_meta['classes']) == 19
    inferencer.model.dataset_meta = _seg_dataset_meta(cfg)
    assert tuple(inferencer.model.dataset_meta['classes']) == tuple(cfg.demo_classes)
    out_dir = str(tmp_path / 'out')
    # batch_size 1: mmseg's data preprocessor refuses a batch of images of different sizes at test time
    result = inferencer([odd_png, photo], out_dir=out_dir)
    _check_seg_result(result, [odd_png, photo], out_dir, num_classes=8)
    assert tuple(inferencer.visualizer.dataset_meta['classes']) == tuple(cfg.demo_classes)


def test_seg_images_of_different_sizes_in_one_batch_are_refused(odd_png, photo, tmp_path):
    """A limit of mmseg 1.2's SegDataPreProcessor (docs/inference.md): a batch needs one image size."""
    _, inferencer = _seg_inferencer(SEG_DEMO)
    with pytest.raises(AssertionError, match='same'):
        inferencer([odd_png, photo], batch_size=2)
    result = inferencer([photo, photo], batch_size=2)
    assert len(result['predictions']) == 2


@pytest.mark.slow  # builds a whole detector / segmentor: over 10 s on 2 cores
def test_seg_demo_config_with_a_runner_checkpoint(photo, tmp_path):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = Config.fromfile(SEG_DEMO)
    init_default_scope('mmseg')
    torch.manual_seed(2)
    model = MODELS.build(cfg.model)
    meta = _seg_dataset_meta(cfg)
    path = str(tmp_path / 'iter_300.pth')
    saved = _save_runner_style_checkpoint(model, path, meta)

    _, inferencer = _seg_inferencer(SEG_DEMO, weights=path)
    loaded = inferencer.model.state_dict()
    for key, value in saved.items():
        assert torch.equal(loaded[key].cpu(), value), key
    # classes and palette come from the checkpoint's dataset_meta
    assert tuple(inferencer.model.dataset_meta['classes']) == tuple(cfg.demo_classes)
    out_dir = str(tmp_path / 'out')
    result = inferencer(photo, out_dir=out_dir)
    _check_seg_result(result, [photo], out_dir, num_classes=8)


@pytest.mark.slow
def test_seg_t_config_without_weights_on_the_photo(odd_png, tmp_path):
    """The full-size T config (2048 x 512 test scale, windows 8, 8, 64, 32) with ADE20K's 150 classes."""
    from mmseg.apis import MMSegInferencer
    from mmseg.utils import get_classes, get_palette
    inferencer = MMSegInferencer(model=SEG_T, weights=None, device='cpu')
    inferencer.model.dataset_meta = dict(classes=get_classes('ade20k'), palette=get_palette('ade20k'))
    out_dir = str(tmp_path / 'out')
    result = inferencer(odd_png, out_dir=out_dir)
    _check_seg_result(result, [odd_png], out_dir, num_classes=150)


@pytest.mark.slow
def test_seg_demo_checkpoint_of_a_real_training(photo, tmp_path):
    """Two iterations of the demo config on generated 64x64 images through tools/train.py's code; it predicts."""
    from mmseg.apis import MMSegInferencer
    from mmmambavision.engine.entrypoints import train_main
    from mmmambavision.testing.ade20k_demo import generate_ade20k_demo
    data_root = str(tmp_path / 'synthade')
    generate_ade20k_demo(data_root, num_train=2, num_val=1, image_size=(64, 64))
    options = [f'{loader}.dataset.data_root={data_root}'
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    options += ['train_dataloader.batch_size=2', 'model.data_preprocessor.size=(64,64)',
                'train_dataloader.dataset.pipeline.2.scale=(64,64)',
                'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
                'train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'param_scheduler.0.end=1',
                'param_scheduler.1.begin=1', 'param_scheduler.1.end=2', 'default_hooks.checkpoint.interval=2']
    work_dir = str(tmp_path / 'work_dir')
    train_main([SEG_DEMO, '--work-dir', work_dir, '--cfg-options', *options])

    inferencer = MMSegInferencer(model=SEG_DEMO, weights=osp.join(work_dir, 'iter_2.pth'), device='cpu')
    assert tuple(inferencer.model.dataset_meta['classes']) == tuple(Config.fromfile(SEG_DEMO).demo_classes)
    out_dir = str(tmp_path / 'out')
    _check_seg_result(inferencer(photo, out_dir=out_dir), [photo], out_dir, num_classes=8)
