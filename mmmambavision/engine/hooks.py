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


@HOOKS.register_module()
class InputShapeHook(Hook):
    """Logs the shape of the batch a submodule (the backbone) gets at each training iteration, and whether this
    process met that shape before.

    Adds to each training log line (and ``vis_data/scalars.json``): ``input_h`` and ``input_w``, the height and width
    of the submodule's first input (for a detector's or segmentor's backbone: the batch after the data preprocessor's
    padding), and ``new_shape``, 1 when this process had not met that input shape (all its dimensions) before, else
    0. With a multi-scale pipeline the iterations that meet a new shape are the slow ones (cuDNN builds an execution
    plan per new convolution and attention shape, compiled code may recompile, the allocator grows), and they become
    rare over a long schedule: ``tools/analysis_tools/benchmark_train.py`` uses the field to time the iterations on
    shapes met before apart from the others. In a distributed run each rank logs its own shapes (rank 0's log is
    the one written); another rank's new shape slows the iteration of every rank, as DDP waits for it.

    In a config: ``default_hooks = dict(input_shape=dict(type='InputShapeHook'))`` (or ``custom_hooks``), with
    ``custom_imports`` of ``mmmambavision``.

    Args:
        module: the dotted attribute path, in the model (unwrapped from DDP), of the submodule whose input is
            recorded (a forward pre-hook); default ``'backbone'``.
    """

    priority = 'NORMAL'  # before LoggerHook (BELOW_NORMAL) in after_train_iter, so the line carries the fields

    def __init__(self, module: str = 'backbone'):
        if not isinstance(module, str) or not module or any(not part for part in module.split('.')):
            raise ValueError(f"InputShapeHook: module must be a dotted attribute path such as 'backbone', "
                             f'got {module!r}')
        self.module = module
        self._seen = set()
        self._shape = None
        self._handle = None

    def _target(self, model):
        from mmengine.model import is_model_wrapper
        if is_model_wrapper(model):
            model = model.module
        target = model
        for part in self.module.split('.'):
            if not hasattr(target, part):
                raise ValueError(f'InputShapeHook: the model ({type(model).__name__}) has no submodule '
                                 f'{self.module!r} (no attribute {part!r}); set module= to one it has')
            target = getattr(target, part)
        if not hasattr(target, 'register_forward_pre_hook'):
            raise ValueError(f'InputShapeHook: {self.module!r} of {type(model).__name__} is a '
                             f'{type(target).__name__}, not a torch.nn.Module')
        return target

    def _record(self, module, args) -> None:
        first = args[0] if args else None
        if hasattr(first, 'shape') and len(first.shape) >= 2:
            self._shape = tuple(int(s) for s in first.shape)

    def before_train(self, runner) -> None:
        self._handle = self._target(runner.model).register_forward_pre_hook(self._record)

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._shape = None

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        shape = self._shape
        if shape is None:  # the submodule did not run, or got no tensor positionally
            return
        new = shape not in self._seen
        self._seen.add(shape)
        hub = runner.message_hub
        hub.update_scalar('train/input_h', shape[-2])
        hub.update_scalar('train/input_w', shape[-1])
        hub.update_scalar('train/new_shape', int(new))

    def after_train(self, runner) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
