"""Segmentation configs: every one parses and builds, the heads match the backbone, and the 160k configs state the
published UperNet recipe (crops, batch, optimiser, schedule, windows, pretrained file names)."""
import argparse
import copy
import glob
import os.path as osp

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('mmseg')
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import mmmambavision  # noqa: E402,F401
from mmmambavision.testing.ade20k_demo import DEMO_CLASSES  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG_CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'seg', '*.py')))
PUBLISHED = {  # size: (arch, lr, window_size, widths, pretrained file)
    't': ('tiny', 5e-5, (8, 8, 64, 32), [80, 160, 320, 640], 'checkpoints/mambavision_tiny_1k.pth.tar'),
    's': ('small', 6e-5, (8, 8, 160, 56), [96, 192, 384, 768], 'checkpoints/mambavision_small_1k.pth.tar'),
    'b': ('base', 5e-5, (8, 8, 64, 32), [128, 256, 512, 1024], 'checkpoints/mambavision_base_1k.pth.tar'),
}
TINY_ARCH = dict(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 1, 2, 2), layer_scale=1e-5)


def published_config(size):
    return Config.fromfile(osp.join(REPO, 'configs', 'seg', f'upernet_mambavision_{size}_160k_ade20k.py'))


def build_segmentor(model_cfg):
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    return MODELS.build(copy.deepcopy(model_cfg))


def test_every_published_size_has_a_config():
    names = {osp.basename(p) for p in SEG_CONFIGS}
    for size in PUBLISHED:
        assert f'upernet_mambavision_{size}_160k_ade20k.py' in names


@pytest.mark.parametrize('path', SEG_CONFIGS, ids=osp.basename)
def test_config_parses_builds_and_heads_match_backbone_widths(path):
    cfg = Config.fromfile(path)
    assert 'mmmambavision' in cfg.custom_imports['imports']
    assert cfg.default_scope == 'mmseg'
    assert cfg.model.backbone.type == 'MambaVision'
    cfg.model.backbone.init_cfg = None  # building must not need the ImageNet file
    model = build_segmentor(cfg.model)
    widths = [getattr(model.backbone, f'outnorm{i}').normalized_shape[0] for i in range(4)]
    assert list(model.decode_head.in_channels) == widths
    aux = model.auxiliary_head
    assert aux.in_channels == widths[aux.in_index]
    assert model.decode_head.num_classes == model.auxiliary_head.num_classes


@pytest.mark.parametrize('size', sorted(PUBLISHED))
def test_160k_config_states_the_published_recipe(size):
    arch, lr, window, widths, pretrained = PUBLISHED[size]
    cfg = published_config(size)
    backbone = cfg.model.backbone
    assert backbone.arch == arch and tuple(backbone.window_size) == window
    assert backbone.out_indices == (0, 1, 2, 3) and backbone.drop_path_rate == 0.2
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=pretrained)
    assert cfg.model.decode_head.type == 'UPerHead' and cfg.model.decode_head.in_channels == widths
    assert cfg.model.auxiliary_head.type == 'FCNHead' and cfg.model.auxiliary_head.in_channels == widths[2]
    assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == 150
    assert tuple(cfg.crop_size) == (512, 512) and tuple(cfg.model.data_preprocessor.size) == (512, 512)
    crops = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCrop']
    assert [tuple(t.crop_size) for t in crops] == [(512, 512)]
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'
    # 16 images per step = 8 GPUs x 2; validation one image at a time.
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.val_dataloader.batch_size == 1 and cfg.test_dataloader.batch_size == 1
    assert cfg.val_evaluator.type == 'IoUMetric' and 'mIoU' in cfg.val_evaluator.iou_metrics
    optim = cfg.optim_wrapper
    assert optim.type == 'AmpOptimWrapper'
    assert optim.optimizer == dict(type='AdamW', lr=lr, betas=(0.9, 0.999), weight_decay=0.01)
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.begin, warmup.end, warmup.by_epoch) == ('LinearLR', 0, 1500, False)
    assert (poly.type, poly.power, poly.begin, poly.end, poly.by_epoch) == ('PolyLR', 1.0, 1500, 160000, False)
    assert cfg.train_cfg.max_iters == 160000


def test_no_weight_decay_on_norms_ssm_parameters_and_layer_scale():
    cfg = published_config('b')
    cfg.model.backbone.update(arch=TINY_ARCH, init_cfg=None)
    cfg.model.decode_head.update(in_channels=[16, 32, 64, 128], channels=16)
    cfg.model.auxiliary_head.update(in_channels=64, channels=16)
    model = build_segmentor(cfg.model)
    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    optim_cfg.type = 'OptimWrapper'  # AmpOptimWrapper needs CUDA; the parameter groups do not depend on it
    optimizer = build_optim_wrapper(model, optim_cfg).optimizer
    decay = {id(p): group['weight_decay'] for group in optimizer.param_groups for p in group['params']}
    names = dict(model.named_parameters())
    no_decay = [n for n in names if 'norm' in n or n.endswith(('A_log', 'mixer.D')) or 'gamma' in n]
    assert any(n.endswith('A_log') for n in no_decay) and any('gamma' in n for n in no_decay)
    assert any('outnorm' in n for n in no_decay)
    for name in no_decay:
        assert decay[id(names[name])] == 0., name
    # BatchNorm (stem, conv blocks, SyncBN heads) is a norm too.
    from torch.nn.modules.batchnorm import _BatchNorm
    for module_name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            assert decay[id(module.weight)] == 0., module_name
    for name in ('backbone.levels.2.blocks.0.mixer.in_proj.weight', 'backbone.patch_embed.conv_down.0.weight',
                 'decode_head.fpn_bottleneck.conv.weight'):
        assert decay[id(names[name])] == pytest.approx(0.01), name


def test_demo_classes_are_ade20k_class_names():
    from mmseg.datasets import ADE20KDataset
    assert ADE20KDataset.METAINFO['classes'][:len(DEMO_CLASSES)] == DEMO_CLASSES
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'seg', 'demo_upernet_mambavision_t_synthade.py'))
    assert tuple(cfg.train_dataloader.dataset.metainfo.classes) == DEMO_CLASSES
    assert cfg.model.decode_head.num_classes == len(DEMO_CLASSES)
    assert cfg.model.backbone.init_cfg is None


def test_demo_dataset_keeps_labels_and_ignores_zero(tmp_path):
    """ADE20KDataset restricted to the demo classes maps annotation k to class k-1 and 0 to ignore (255)."""
    from mmseg.datasets import ADE20KDataset
    from mmmambavision.testing.ade20k_demo import generate_ade20k_demo
    generate_ade20k_demo(str(tmp_path), num_train=2, num_val=1, image_size=(40, 32))
    init_default_scope('mmseg')
    dataset = ADE20KDataset(
        data_root=str(tmp_path), data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        metainfo=dict(classes=DEMO_CLASSES),
        pipeline=[dict(type='LoadAnnotations', reduce_zero_label=True)])
    assert len(dataset) == 2
    raw = np.array(Image.open(dataset[0]['seg_map_path']))
    loaded = dataset[0]['gt_seg_map']
    assert (loaded[raw == 0] == 255).all()
    assert (loaded[raw > 0] == raw[raw > 0] - 1).all()
    assert raw.max() <= len(DEMO_CLASSES)


def test_demo_iters_option_rescales_the_whole_schedule():
    """tools/demo_seg.py --iters N: training, warm-up, poly decay and the checkpoint all follow N."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('demo_seg', osp.join(REPO, 'tools', 'demo_seg.py'))
    demo_seg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_seg)
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'seg', 'demo_upernet_mambavision_t_synthade.py'))
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg.merge_from_dict(parser.parse_args(['--cfg-options', *demo_seg.schedule_options(1500)]).cfg_options)
    warmup, poly = cfg.param_scheduler
    assert cfg.train_cfg.max_iters == cfg.train_cfg.val_interval == 1500
    assert warmup.end == poly.begin == 30 and poly.end == 1500
    assert cfg.default_hooks.checkpoint.interval == 1500


def test_t_config_initialises_the_backbone_from_the_imagenet_file_it_names(tmp_path, monkeypatch):
    """A file shaped like the published ImageNet checkpoint, at the path the config names, loads into the backbone."""
    import torch
    from mmmambavision import MambaVision
    source = MambaVision('tiny').state_dict()
    torch.manual_seed(0)
    source = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.items()
              if not k.startswith('outnorm')}  # a classification model has no output norms
    published = dict(state_dict={**source, 'head.weight': torch.zeros(1000, 640), 'head.bias': torch.zeros(1000),
                                 'norm.weight': torch.ones(640), 'norm.bias': torch.zeros(640)},
                     epoch=309, arch='mamba_vision_T', version=2, metric=82.3, args=argparse.Namespace(lr=1e-3))
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'checkpoints').mkdir()
    torch.save(published, tmp_path / 'checkpoints' / 'mambavision_tiny_1k.pth.tar')
    model = build_segmentor(published_config('t').model)
    model.init_weights()
    loaded = model.backbone.state_dict()
    for name, value in source.items():
        assert torch.equal(loaded[name], value), name
    assert {k.split('.')[0] for k in set(loaded) - set(source)} == {f'outnorm{i}' for i in range(4)}
