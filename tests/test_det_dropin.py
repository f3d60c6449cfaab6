"""The backbone drops into other mmdet detectors: built from a config with type='MambaVision', one training step."""
import pytest
import torch

pytest.importorskip('mmdet')

from mmengine.config import Config  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402

import mmmambavision  # noqa: E402,F401

TINY_ARCH = dict(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4))
WIDTHS = [16, 32, 64, 128]

# The README's snippet, applied to two mmdet model configs of other families.
# RetinaNet taps strides 8-32 only (as mmdet's Swin RetinaNet: out_indices (1, 2, 3), FPN start_level 0).
DETECTORS = {
    'retinanet': ('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', (1, 2, 3), ', start_level=0', False),
    'mask_rcnn': ('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', (0, 1, 2, 3), '', True),
}


def dropin_config(base: str, out_indices: tuple, neck_extra: str) -> Config:
    widths = [WIDTHS[i] for i in out_indices]
    return Config.fromstring(f"""
_base_ = '{base}'
custom_imports = dict(imports=['mmmambavision'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='MambaVision', arch={TINY_ARCH!r}, out_indices={out_indices!r},
                  window_size=(8, 8, 14, 7), init_cfg=None),
    neck=dict(in_channels={widths!r}{neck_extra}))
""", file_format='.py')


@pytest.mark.parametrize('name', sorted(DETECTORS))
def test_backbone_trains_inside_another_detector(name):
    from mmdet.testing import demo_mm_inputs
    base, out_indices, neck_extra, with_mask = DETECTORS[name]
    cfg = dropin_config(base, out_indices, neck_extra)
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    packed = demo_mm_inputs(2, [[3, 96, 128], [3, 96, 128]], num_items=[3, 2], num_classes=80, with_mask=with_mask)
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in backbone_grads)
    assert any(g.abs().sum() > 0 for g in backbone_grads)
