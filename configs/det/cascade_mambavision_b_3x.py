# Cascade Mask R-CNN + MambaVision-B + FPN, COCO 2017, 3x. Published: 52.8 box AP / 45.7 mask AP.
# Same recipe as MambaVision-T (./cascade_mambavision_t_3x.py) except the backbone size and AdamW lr 2e-4.
# drop_path_rate stays 0.2 (inherited), as in the published run, not B's ImageNet 0.3.
_base_ = './cascade_mambavision_t_3x.py'

model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/mambavision_base_1k.pth.tar')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(optimizer=dict(lr=2e-4))
