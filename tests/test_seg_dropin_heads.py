"""Drop-in: type='MambaVision' serves other mmseg decode heads, not only UperNet."""
import pytest
import torch

pytest.importorskip('mmseg')
from mmengine.config import ConfigDict  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402

import mmmambavision  # noqa: E402,F401

WIDTHS = [16, 32, 64, 128]
NUM_CLASSES = 4
BN = dict(type='BN', requires_grad=True)
CE = dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)
HEADS = {
    'segformer': dict(
        decode_head=dict(type='SegformerHead', in_channels=WIDTHS, in_index=[0, 1, 2, 3], channels=32,
                         num_classes=NUM_CLASSES, norm_cfg=BN, align_corners=False, loss_decode=CE)),
    'fpn': dict(
        neck=dict(type='FPN', in_channels=WIDTHS, out_channels=32, num_outs=4),
        decode_head=dict(type='FPNHead', in_channels=[32] * 4, in_index=[0, 1, 2, 3], feature_strides=[4, 8, 16, 32],
                         channels=32, num_classes=NUM_CLASSES, norm_cfg=BN, align_corners=False, loss_decode=CE)),
}


def build(head):
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    return MODELS.build(dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, size=(64, 64), seg_pad_val=255),
        backbone=dict(type='MambaVision', arch=dict(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 1, 2, 2)),
                      window_size=(8, 8, 4, 2), drop_path_rate=0.1),
        train_cfg=ConfigDict(), test_cfg=ConfigDict(mode='whole'), **HEADS[head]))


def batch(size=2):
    from mmseg.structures import SegDataSample
    torch.manual_seed(0)
    samples = []
    for _ in range(size):
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, NUM_CLASSES, (1, 64, 64)))
        samples.append(sample)
    return dict(inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(size)],
                data_samples=samples)


@pytest.mark.parametrize('head', sorted(HEADS))
def test_other_decode_head_trains_a_step_and_every_backbone_parameter_gets_a_gradient(head):
    model = build(head)
    model.init_weights()
    model.train()
    data = model.data_preprocessor(batch(), True)
    losses = model(**data, mode='loss')
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing

    model.zero_grad()
    log_vars = model.train_step(batch(), OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3)))
    assert torch.isfinite(torch.as_tensor(log_vars['loss']))
    model.eval()
    with torch.no_grad():
        predictions = model.test_step(batch(1))
    assert predictions[0].pred_sem_seg.data.shape == (1, 64, 64)
