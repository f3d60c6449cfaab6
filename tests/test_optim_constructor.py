"""MergedGroupsOptimWrapperConstructor: the default constructor's per-parameter settings in a few param groups."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import mmmambavision  # noqa: F401  (registers the constructor)
from mmmambavision.engine import fall_back_to_fp32

CONFIGS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs')


def _model_and_cfg(path, scope):
    cfg = Config.fromfile(osp.join(CONFIGS, path))
    fall_back_to_fp32(cfg, device='cpu')
    cfg.model.backbone.arch = dict(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4), layer_scale=1e-5)
    cfg.model.backbone.init_cfg = None
    if 'neck' in cfg.model:  # Cascade Mask R-CNN's FPN
        cfg.model.neck.in_channels = [16, 32, 64, 128]
    else:  # UperNet
        cfg.model.decode_head.in_channels = [16, 32, 64, 128]
        cfg.model.auxiliary_head.in_channels = 64
    init_default_scope(scope)
    from mmengine.registry import MODELS
    torch.manual_seed(0)
    return MODELS.build(cfg.model), cfg


def _settings(optimizer):
    """parameter id -> its group's settings (everything but the parameter list)."""
    return {id(p): {k: v for k, v in group.items() if k != 'params'}
            for group in optimizer.param_groups for p in group['params']}


@pytest.mark.parametrize('path, scope', [('det/cascade_mambavision_b_3x.py', 'mmdet'),
                                         ('seg/upernet_mambavision_t_160k_ade20k.py', 'mmseg')])
def test_merged_groups_give_every_parameter_the_default_settings(path, scope):
    model, cfg = _model_and_cfg(path, scope)
    assert cfg.optim_wrapper.constructor == 'MergedGroupsOptimWrapperConstructor'
    default_cfg = copy.deepcopy(cfg.optim_wrapper)
    default_cfg.pop('constructor')
    merged = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    default = build_optim_wrapper(model, default_cfg).optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(default.param_groups) == len(params)  # what the default constructor does with a paramwise_cfg
    assert len(merged.param_groups) <= 4
    assert sorted(id(p) for g in merged.param_groups for p in g['params']) == sorted(id(p) for p in params)
    assert _settings(merged) == _settings(default)
    assert {g['weight_decay'] for g in merged.param_groups} == {0., cfg.optim_wrapper.optimizer.weight_decay}


def test_merged_groups_take_the_same_adamw_steps():
    model, cfg = _model_and_cfg('det/cascade_mambavision_b_3x.py', 'mmdet')
    twin = copy.deepcopy(model)
    default_cfg = copy.deepcopy(cfg.optim_wrapper)
    default_cfg.pop('constructor')
    wrappers = [build_optim_wrapper(model, cfg.optim_wrapper), build_optim_wrapper(twin, default_cfg)]
    for step in range(3):
        for net in (model, twin):
            gen = torch.Generator().manual_seed(step)
            for p in net.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
        for wrapper in wrappers:
            wrapper.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
