# Cascade Mask R-CNN + MambaVision-S + FPN, COCO 2017, 3x. Published: 52.3 box AP / 45.2 mask AP.
# Same recipe as MambaVision-T (./cascade_mambavision_t_3x.py); only the backbone size differs.
_base_ = './cascade_mambavision_t_3x.py'

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/mambavision_small_1k.pth.tar')),
    neck=dict(in_channels=[96, 192, 384, 768]))
