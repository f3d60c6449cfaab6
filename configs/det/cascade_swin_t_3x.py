# Cascade Mask R-CNN + Swin-T + FPN, the 3x recipe of ./cascade_mambavision_t_3x.py with mmdet's SwinTransformer as
# the backbone: the reference for speed comparisons (tools/analysis_tools/benchmark_train.py), trained through the
# same entry points. Everything but the backbone and the neck's input widths is the MambaVision-T config's: heads,
# multi-scale pipeline, schedule, fp16 AMP, SyncBN box heads, 2 images per GPU.
# The backbone is mmdet's Swin-T as in mmdet's configs/swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py.
_base_ = './cascade_mambavision_t_3x.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=True,
        # No ImageNet weights by default. mmdet's Swin configs start from the official ImageNet-1K file:
        # init_cfg=dict(type='Pretrained', checkpoint='https://github.com/SwinTransformer/storage/releases/'
        #                                             'download/v1.0.0/swin_tiny_patch4_window7_224.pth')
        init_cfg=None),
    neck=dict(in_channels=[96, 192, 384, 768]))

# The optimiser is the MambaVision config's (AdamW lr 1e-4, wd 0.05, betas (0.9, 0.999), fp16 AMP, merged param
# groups), which is also mmdet's Swin-T recipe (mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py: AdamW 1e-4, wd
# 0.05, AmpOptimWrapper). The one difference, Swin's relative position bias tables (and absolute position
# embeddings, unused here) without weight decay, is added below; it changes weight decay values, not the speed
# (the merged-groups constructor still makes one AdamW call per distinct setting).
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
    }))
