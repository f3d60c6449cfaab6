# UperNet + MambaVision-T, ADE20K 512x512, 160k iterations, 16 images per step (8 GPUs x 2).
# Published: 46.0 mIoU (single scale). The recipe follows the published run: AdamW, linear warm-up 1500 iters then
# poly decay (power 1), AMP, SyncBN heads, window_size (8, 8, 64, 32), stochastic depth 0.2.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
    '../_base_/mambavision_adamw_amp.py',
]
custom_imports = dict(imports=['mmmambavision'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='MambaVision',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        # Stages 3-4 see one padded 64x64 / 32x32 window per 512x512 crop, as in the published runs.
        window_size=(8, 8, 64, 32),
        # The published wrapper ignored its config's rate; every published run trained with 0.2.
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/mambavision_tiny_1k.pth.tar')),
    decode_head=dict(in_channels=[80, 160, 320, 640], num_classes=150),
    auxiliary_head=dict(in_channels=320, num_classes=150))

# AdamW with fp16 AMP and the loss-scale hook (../_base_/mambavision_adamw_amp.py), wd 0.01.
# Published learning rates: T 5e-5, S 6e-5, B 5e-5.
optim_wrapper = dict(
    _base_.mambavision_optim_wrapper, _delete_=True,
    optimizer=dict(_base_.mambavision_optim_wrapper.optimizer, lr=5e-5, weight_decay=0.01))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0., power=1.0, begin=1500, end=160000, by_epoch=False),
]

# 8 GPUs x 2 images = 16 images per step; validation one image at a time.
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=16)
