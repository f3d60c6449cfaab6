"""InputShapeHook: the backbone input's height and width per training iteration, and whether it is new, with
hand-made runners; tests/test_benchmark_train.py's slow test checks it in a real training through tools/train.py."""
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub
from torch import nn

from mmmambavision import InputShapeHook


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.backbone(x)


def _runner(model, name):
    return SimpleNamespace(model=model, message_hub=MessageHub.get_instance(name))


def _iteration(hook, runner, x, i):
    hook.before_train_iter(runner, i)
    runner.model(x)
    hook.after_train_iter(runner, i)
    hub = runner.message_hub
    return tuple(hub.get_scalar(f'train/{k}').current() for k in ('input_h', 'input_w', 'new_shape'))


def test_logs_the_shape_and_flags_only_shapes_not_met_before():
    runner = _runner(Detector(), 'input_shape_hook_flags')
    hook = InputShapeHook()
    hook.before_train(runner)
    sizes = [(2, 32, 48), (2, 32, 48), (2, 64, 48), (1, 32, 48), (2, 32, 48), (2, 64, 48)]
    logged = [_iteration(hook, runner, torch.zeros(n, 3, h, w), i) for i, (n, h, w) in enumerate(sizes)]
    # the batch size is part of the shape: (1, 32, 48) is new although 32x48 is not
    assert logged == [(32, 48, 1), (32, 48, 0), (64, 48, 1), (32, 48, 1), (32, 48, 0), (64, 48, 0)]
    hook.after_train(runner)
    runner.model(torch.zeros(1, 3, 16, 16))  # the forward pre-hook is gone after training
    assert hook._shape == (2, 3, 64, 48)


def test_unwraps_ddp_style_wrappers_and_follows_a_dotted_path():
    inner = nn.Module()
    inner.det = Detector()
    wrapper = SimpleNamespace(module=inner)  # what the hook sees of DDP: .module (is_model_wrapper faked below)
    hook = InputShapeHook(module='det.backbone')
    with pytest.MonkeyPatch.context() as mp:
        import mmengine.model
        mp.setattr(mmengine.model, 'is_model_wrapper', lambda model: model is wrapper)
        runner = SimpleNamespace(model=wrapper, message_hub=MessageHub.get_instance('input_shape_hook_wrapped'))
        hook.before_train(runner)
    hook.before_train_iter(runner, 0)
    inner.det(torch.zeros(1, 3, 20, 24))
    hook.after_train_iter(runner, 0)
    assert runner.message_hub.get_scalar('train/input_w').current() == 24


def test_no_forward_no_fields():
    runner = _runner(Detector(), 'input_shape_hook_idle')
    hook = InputShapeHook()
    hook.before_train(runner)
    hook.before_train_iter(runner, 0)
    hook.after_train_iter(runner, 0)
    with pytest.raises(KeyError):
        runner.message_hub.get_scalar('train/new_shape')


@pytest.mark.parametrize('module, message', [
    ('', 'dotted attribute path'), ('backbone..x', 'dotted attribute path'), (3, 'dotted attribute path')])
def test_bad_module_argument_is_refused(module, message):
    with pytest.raises(ValueError, match=message):
        InputShapeHook(module=module)


def test_a_model_without_the_submodule_gets_an_error_naming_it():
    runner = _runner(nn.Linear(2, 2), 'input_shape_hook_missing')
    with pytest.raises(ValueError, match=r"no submodule 'backbone'.*set module="):
        InputShapeHook().before_train(runner)
