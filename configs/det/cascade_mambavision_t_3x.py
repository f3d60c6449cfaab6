# Cascade Mask R-CNN + MambaVision-T + FPN, COCO 2017, 3x schedule (36 epochs), 16 images per step (8 GPUs x 2).
# Published: 51.1 box AP / 44.3 mask AP (COCO val2017). The recipe follows the published run: 4conv1fc cascade box
# heads with SyncBN and GIoU loss, multi-scale resize with the DETR-style random-crop branch, AdamW lr 1e-4,
# wd 0.05 (none on norms, the mixer's A_log / D and layer-scale), steps at 27 and 33, AMP, window_size
# (8, 8, 112, 56), i.e. one padded attention window per image at COCO scale.
# On a machine without CUDA, tools/train.py falls back to fp32 (one logged warning) and SyncBN runs as BN.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/mambavision_adamw_amp.py',
]
custom_imports = dict(imports=['mmmambavision'], allow_failed_imports=False)

# One box head per cascade stage: 4 shared convs + 1 fc, decoded-box GIoU regression (loss weight 10).
_box_head = dict(
    type='ConvFCBBoxHead',
    num_shared_convs=4,
    num_shared_fcs=1,
    in_channels=256,
    conv_out_channels=256,
    fc_out_channels=1024,
    roi_feat_size=7,
    num_classes=80,
    reg_class_agnostic=False,
    reg_decoded_bbox=True,
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    loss_bbox=dict(type='GIoULoss', loss_weight=10.0))

model = dict(
    backbone=dict(
        _delete_=True,
        type='MambaVision',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        window_size=(8, 8, 112, 56),
        # The published wrapper ignored its config's rate: every published detection run trained with 0.2.
        drop_path_rate=0.2,
        # ImageNet-1K weights (nvidia/MambaVision-T-1K on the Hugging Face hub, CC-BY-NC-SA-4.0) go here;
        # train from scratch with --cfg-options model.backbone.init_cfg=None optim_wrapper.type=OptimWrapper
        # (fp32: from scratch, the padded windows' gradients can overflow fp16; see docs/detection.md).
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/mambavision_tiny_1k.pth.tar')),
    neck=dict(in_channels=[80, 160, 320, 640]),
    roi_head=dict(bbox_head=[
        dict(**_box_head, bbox_coder=dict(
            type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=[0.1, 0.1, 0.2, 0.2])),
        dict(**_box_head, bbox_coder=dict(
            type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=[0.05, 0.05, 0.1, 0.1])),
        dict(**_box_head, bbox_coder=dict(
            type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=[0.033, 0.033, 0.067, 0.067])),
    ]))

# Multi-scale training (short side 480..800, long side <= 1333) or, with probability 1/2, the DETR-style branch:
# resize, random crop, resize again.
_multi_scale = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333), (672, 1333),
                (704, 1333), (736, 1333), (768, 1333), (800, 1333)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=_multi_scale, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=_multi_scale, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
# 2 images per GPU; the published runs used 8 GPUs (16 images per step).
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]

# AdamW with fp16 AMP and the loss-scale hook (../_base_/mambavision_adamw_amp.py): lr 1e-4, wd 0.05.
optim_wrapper = dict(
    _base_.mambavision_optim_wrapper, _delete_=True,
    optimizer=dict(_base_.mambavision_optim_wrapper.optimizer, lr=1e-4, weight_decay=0.05))

# The learning rate above is for 16 images per step; `--auto-scale-lr` rescales it to the actual batch.
auto_scale_lr = dict(enable=False, base_batch_size=16)
# Keep the last 3 epochs' checkpoints (each holds the AdamW state).
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=3))
