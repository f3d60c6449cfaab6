"""The detection configs: every one parses and builds, and states the published recipe."""
import os.path as osp

import pytest

pytest.importorskip('mmdet')

from mmengine.config import Config  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402

import mmmambavision  # noqa: E402,F401

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET = osp.join(REPO, 'configs', 'det')
PUBLISHED = {
    'cascade_mambavision_t_3x.py': ('tiny', [80, 160, 320, 640], 1e-4, 'mambavision_tiny_1k.pth.tar'),
    'cascade_mambavision_s_3x.py': ('small', [96, 192, 384, 768], 1e-4, 'mambavision_small_1k.pth.tar'),
    'cascade_mambavision_b_3x.py': ('base', [128, 256, 512, 1024], 2e-4, 'mambavision_base_1k.pth.tar'),
}
ALL_CONFIGS = sorted(f for f in __import__('os').listdir(DET) if f.endswith('.py'))


def load(name: str) -> Config:
    return Config.fromfile(osp.join(DET, name))


def test_every_published_config_is_present():
    assert set(PUBLISHED) <= set(ALL_CONFIGS)


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_published_config_states_the_recipe(name):
    arch, widths, lr, weights = PUBLISHED[name]
    cfg = load(name)
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports.imports == ['mmmambavision']
    backbone = cfg.model.backbone
    assert backbone.type == 'MambaVision' and backbone.arch == arch
    assert tuple(backbone.window_size) == (8, 8, 112, 56)
    assert backbone.drop_path_rate == 0.2  # published runs, including B
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=f'checkpoints/{weights}')
    assert 'depth' not in backbone  # the ResNet keys of the base were deleted
    assert cfg.model.neck.in_channels == widths
    assert cfg.model.type == 'CascadeRCNN'
    heads = cfg.model.roi_head.bbox_head
    assert len(heads) == 3
    for head, stds in zip(heads, ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])):
        assert head.type == 'ConvFCBBoxHead' and head.num_shared_convs == 4 and head.num_shared_fcs == 1
        assert head.reg_decoded_bbox and head.loss_bbox == dict(type='GIoULoss', loss_weight=10.0)
        assert head.norm_cfg.type == 'SyncBN'
        assert head.bbox_coder.target_stds == stds
    assert cfg.model.roi_head.mask_head.type == 'FCNMaskHead'
    # Multi-scale 480..800 with the DETR-style crop branch.
    choice = next(t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomChoice')
    plain, crop = choice.transforms
    assert [s[0] for s in plain[0].scales] == list(range(480, 801, 32))
    assert [t.type for t in crop] == ['RandomChoiceResize', 'RandomCrop', 'RandomChoiceResize']
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    assert cfg.train_cfg.max_epochs == 36
    step = next(s for s in cfg.param_scheduler if s.type == 'MultiStepLR')
    assert step.milestones == [27, 33]
    warmup = next(s for s in cfg.param_scheduler if s.type == 'LinearLR')
    assert warmup.end == 1000 and not warmup.by_epoch
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=lr, betas=(0.9, 0.999), weight_decay=0.05)
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)
    metric = cfg.val_evaluator
    assert metric.type == 'CocoMetric' and set(metric.metric) == {'bbox', 'segm'}


def test_small_and_base_state_only_what_differs():
    for name in ('cascade_mambavision_s_3x.py', 'cascade_mambavision_b_3x.py'):
        with open(osp.join(DET, name)) as f:
            text = f.read()
        assert "_base_ = './cascade_mambavision_t_3x.py'" in text
        assert 'train_pipeline' not in text and 'bbox_head' not in text and 'param_scheduler' not in text


def test_cuda_graph_variant_changes_only_the_backbone_compile_setting():
    variant, plain = load('cascade_mambavision_t_3x_cudagraphs.py'), load('cascade_mambavision_t_3x.py')
    assert variant.model.backbone.pop('compile') == dict(mode='reduce-overhead')
    assert 'compile' not in plain.model.backbone
    assert variant.to_dict() == plain.to_dict()


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_config_builds_the_detector(name):
    cfg = load(name)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == cfg.model.backbone.type
    if cfg.model.backbone.type == 'MambaVision':
        assert model.backbone.window_size == tuple(cfg.model.backbone.window_size)
    else:  # the Swin-T speed reference
        assert name == 'cascade_swin_t_3x.py' and type(model.backbone).__name__ == 'SwinTransformer'


def test_optimizer_takes_no_weight_decay_on_norms_ssm_parameters_and_layer_scale():
    from mmengine.optim import build_optim_wrapper

    from mmmambavision.engine import fall_back_to_fp32
    cfg = load('cascade_mambavision_b_3x.py')
    fall_back_to_fp32(cfg, device='cpu')
    # A small B-like backbone (layer-scale on) keeps the test fast; the parameter names are the same.
    cfg.model.backbone.arch = dict(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4),
                                   layer_scale=1e-5)
    cfg.model.neck.in_channels = [16, 32, 64, 128]
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {}
    for group in wrapper.optimizer.param_groups:
        for param in group['params']:
            decay[id(param)] = group['weight_decay']
    names = dict(model.named_parameters())
    no_decay = [n for n, p in names.items() if decay[id(p)] == 0]
    with_decay = [n for n, p in names.items() if decay[id(p)] == 0.05]
    assert len(no_decay) + len(with_decay) == len(names)
    for fragment in ('mixer.A_log', 'mixer.D', 'gamma_1', 'gamma_2', 'norm1.weight', 'outnorm0.bias',
                     'patch_embed.conv_down.1.weight', 'roi_head.bbox_head.0.shared_convs.0.bn.weight'):
        assert any(fragment in n for n in no_decay), fragment
        assert not any(fragment in n for n in with_decay), fragment
    for fragment in ('mixer.in_proj.weight', 'patch_embed.conv_down.0.weight', 'neck.fpn_convs.0.conv.weight'):
        assert any(fragment in n for n in with_decay), fragment
