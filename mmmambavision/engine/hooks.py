"""Training hooks for the configs of this package (registered in mmengine's root ``HOOKS``)."""
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS


@HOOKS.register_module()
class AmpLossScaleHook(Hook):
    """Logs AMP's dynamic loss scale and warns when it collapses.

    With fp16 AMP, ``torch.amp.GradScaler`` skips every step whose gradients overflow and halves the scale. When
    the gradients themselves exceed fp16's range (65504), the scale falls below 1 and keeps falling while no step
    is taken: training silently stops. That happens, for instance, when MambaVision is trained from scratch
    (``init_cfg=None``) with padded windows: at initialisation the zero padding tokens stay constant through the
    hybrid blocks, and the LayerNorms over them multiply gradients by up to ``1/sqrt(eps)`` each. ImageNet
    initialisation does not do this; fp32, or bf16 AMP where every op has a bf16 kernel (mmseg models; not
    mmcv's RoIAlign in mmdet 3.3 / mmcv 2.1), avoid it.

    Args:
        min_scale: warn (once) when the scale drops below this.
        log_scale: add ``loss_scale`` to the training log lines.
    """

    priority = 'LOW'

    def __init__(self, min_scale: float = 1.0, log_scale: bool = True):
        if not min_scale > 0:
            raise ValueError(f'AmpLossScaleHook: min_scale must be > 0, got {min_scale!r}')
        self.min_scale = float(min_scale)
        self.log_scale = log_scale
        self._warned = False

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
        if scaler is None or not hasattr(scaler, 'get_scale') or not getattr(scaler, 'is_enabled', lambda: True)():
            return
        scale = float(scaler.get_scale())
        if self.log_scale:
            runner.message_hub.update_scalar('train/loss_scale', scale)
        if scale < self.min_scale and not self._warned:
            self._warned = True
            print_log(
                f'AMP loss scale fell to {scale:g} at iteration {runner.iter + 1}: the gradients overflow fp16 even '
                'unscaled, so the optimizer is skipping steps and the model is not learning. Train in fp32 '
                '(--cfg-options optim_wrapper.type=OptimWrapper) or, where every op has a bf16 kernel (mmseg '
                'models; not mmcv RoIAlign), in bf16 (--cfg-options optim_wrapper.dtype=bfloat16). Training '
                'MambaVision from scratch with padded windows does this; ImageNet-initialised runs do not.',
                logger='current', level=30)
