# The optimiser and AMP settings shared by every MambaVision detection and segmentation config here.
# Each task config takes the optim wrapper and sets its own learning rate and weight decay:
#
#   optim_wrapper = dict(_base_.mambavision_optim_wrapper, _delete_=True,
#                        optimizer=dict(_base_.mambavision_optim_wrapper.optimizer, lr=1e-4, weight_decay=0.05))
#
# AdamW under fp16 AMP, without weight decay on normalisation layers (norm_decay_mult covers every BN / LN,
# whatever its name), the selective-scan parameters (A_log, D) and layer-scale (gamma_1 / gamma_2, used by B).
mambavision_optim_wrapper = dict(
    type='AmpOptimWrapper',
    # mmengine's default constructor with these settings, then one param group per distinct setting instead of
    # one per parameter (AdamW's multi-tensor update then runs a few times per step, not ~700 times)
    constructor='MergedGroupsOptimWrapperConstructor',
    optimizer=dict(type='AdamW', betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            'norm': dict(decay_mult=0.),
            'A_log': dict(decay_mult=0.),
            'mixer.D': dict(decay_mult=0.),
            'gamma': dict(decay_mult=0.),
        }))

# fp16 AMP: log the loss scale in every training line and warn if it collapses (gradients beyond fp16's range,
# e.g. when training from scratch; see mmmambavision.AmpLossScaleHook).
custom_hooks = [dict(type='AmpLossScaleHook')]
