# UperNet + MambaVision-B, ADE20K 512x512, 160k iterations, 16 images per step (8 GPUs x 2).
# Published: 49.1 mIoU (single scale). Same recipe as T (lr 5e-5, windows (8, 8, 64, 32)); B has layer-scale.
_base_ = './upernet_mambavision_t_160k_ade20k.py'

model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/mambavision_base_1k.pth.tar')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
