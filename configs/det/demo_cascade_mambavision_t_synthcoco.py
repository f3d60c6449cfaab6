# The embedded demo (tools/demo.py): Cascade Mask R-CNN + MambaVision-T, the recipe of
# ./cascade_mambavision_t_3x.py, on the small synthetic COCO-layout set of mmmambavision.testing.coco_demo
# (real COCO category table, 6 categories drawn as coloured shapes, 128x160 images), sized to train in minutes on
# 2 CPU cores. Differences from the 3x config: image scale (~128 px instead of ~800), windows that fit that scale,
# 64-channel FPN and RoI heads, fewer proposals / sampled RoIs, no ImageNet initialisation, a short schedule and
# a higher learning rate, fp32 instead of AMP.
#   python -m mmmambavision.testing.coco_demo data/synthcoco     # or let tools/demo.py generate it
#   python tools/train.py configs/det/demo_cascade_mambavision_t_synthcoco.py
_base_ = './cascade_mambavision_t_3x.py'

data_root = 'data/synthcoco/'

# FPN and RoI heads 64 channels wide instead of 256 (the 4conv1fc / 4conv mask heads at 256 channels take ~90%
# of a CPU step); everything else about the architecture is the 3x config's.
_width = 64
_box_head = dict(
    type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1, in_channels=_width, conv_out_channels=_width,
    fc_out_channels=256, roi_feat_size=7, num_classes=80, reg_class_agnostic=False, reg_decoded_bbox=True,
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
model = dict(
    # (8, 8, 14, 7): one padded window per 128x160 image in stages 3-4, as (8, 8, 112, 56) is at COCO scale.
    backbone=dict(window_size=(8, 8, 14, 7), drop_path_rate=0.1, init_cfg=None),
    neck=dict(out_channels=_width),
    rpn_head=dict(in_channels=_width, feat_channels=_width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=_width),
        bbox_head=[
            dict(**_box_head, bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                                              target_stds=stds))
            for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
        ],
        mask_roi_extractor=dict(out_channels=_width),
        mask_head=dict(in_channels=_width, conv_out_channels=_width)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=[
            dict(
                assigner=dict(type='MaxIoUAssigner', pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                              match_low_quality=False, ignore_iof_thr=-1),
                sampler=dict(type='RandomSampler', num=64, pos_fraction=0.25, neg_pos_ub=-1,
                             add_gt_as_proposals=True),
                mask_size=28, pos_weight=-1, debug=False) for iou in (0.5, 0.6, 0.7)
        ]),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=200)))

# The 3x pipeline scaled down (short side 112..144 instead of 480..800, crop branch likewise).
_scales = [(1333, 112), (1333, 128), (1333, 144)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(1333, 96), (1333, 112), (1333, 128)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(80, 120), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='Resize', scale=(1333, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
# Loading 128x160 JPEGs costs little: no worker processes competing with the model for 2 cores.
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# Short schedule; validation after the last epoch only (val_interval larger than any demo schedule).
max_epochs = 6
train_cfg = dict(max_epochs=max_epochs, val_interval=1000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[1000], gamma=0.1),
]
# fp32, not the recipe's fp16 AMP: trained from scratch, the padded windows make gradients at the edge of fp16's
# range (zero padding tokens stay nearly constant, and each LayerNorm over them multiplies gradients by up to
# 1/sqrt(eps)); on an H100 fp16 AMP reached box AP 55.8 in one run and 3.3 in another, when the loss scale fell
# below 1 (AmpLossScaleHook now warns). bf16 is no way out for detection: mmcv's RoIAlign has no bf16 kernel.
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=2e-4))
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=1, max_keep_ckpts=2))
