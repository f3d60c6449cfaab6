# Embedded default for segmentation: UperNet + MambaVision-T on the synthetic ADE20K-layout data of
# mmmambavision.testing.ade20k_demo (8 classes, 128x128 images), from scratch, a short CPU schedule.
#   python tools/demo_seg.py                      # generates data/synthade if absent, trains, tests
# The full recipe (heads, losses, AdamW + warm-up + poly, AMP, evaluation) is the T config's; what changes is
# the data, the crop, the windows (one per stage-3/4 map at this size), the head widths, the length and the
# from-scratch lr.
_base_ = './upernet_mambavision_t_160k_ade20k.py'

data_root = 'data/synthade'
demo_classes = ('wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed ')  # see ade20k_demo.py
num_classes = 8
crop_size = (96, 96)
max_iters = 300

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(window_size=(8, 8, 8, 4), drop_path_rate=0.1, init_cfg=None),
    # Narrower heads than the 512/256 channels of the recipe: at these sizes they dominate the CPU time.
    decode_head=dict(channels=128, num_classes=num_classes),
    auxiliary_head=dict(channels=64, num_classes=num_classes))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=dict(classes=demo_classes), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=dict(classes=demo_classes), pipeline=test_pipeline))
test_dataloader = val_dataloader

# From scratch: a higher lr than fine-tuning, short warm-up, poly to the end.
# fp32, not the recipe's fp16 AMP: trained from scratch, the padded windows (6x6 maps in 8x8 windows) make
# gradients at the edge of fp16's range (see configs/det/demo_cascade_mambavision_t_synthcoco.py and
# mmmambavision.AmpLossScaleHook). bf16 AMP (optim_wrapper.dtype=bfloat16) also trains it: mIoU 87.8 on an H100.
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=6e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=0., power=1.0, begin=30, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=2),
    # tools/test.py --show-dir draws every image (mmseg's default draws every 50th).
    visualization=dict(type='SegVisualizationHook', interval=1))
randomness = dict(seed=0)
