"""AmpLossScaleHook: logs the loss scale and warns once when fp16 AMP's scale collapses."""
import logging
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub, MMLogger

from mmmambavision import AmpLossScaleHook


def _runner(scale, name):
    scaler = torch.amp.GradScaler('cpu', init_scale=scale)
    return SimpleNamespace(optim_wrapper=SimpleNamespace(loss_scaler=scaler), iter=41,
                           message_hub=MessageHub.get_instance(name))


def _warnings(caplog_records):
    return [r for r in caplog_records if 'AMP loss scale fell' in r.getMessage()]


@pytest.fixture
def records():
    logger = MMLogger.get_current_instance()
    seen = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record)

    handler = Collect(level=logging.WARNING)
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


def test_logs_the_scale_and_stays_quiet_while_it_is_healthy(records):
    runner = _runner(65536., 'amp_hook_healthy')
    AmpLossScaleHook().after_train_iter(runner, 0)
    assert runner.message_hub.get_scalar('train/loss_scale').current() == 65536.
    assert not _warnings(records)


def test_warns_once_when_the_scale_collapses(records):
    runner = _runner(0.25, 'amp_hook_collapsed')
    hook = AmpLossScaleHook()
    hook.after_train_iter(runner, 0)
    hook.after_train_iter(runner, 1)
    found = _warnings(records)
    assert len(found) == 1
    assert 'bfloat16' in found[0].getMessage() and 'iteration 42' in found[0].getMessage()


def test_no_scaler_no_log():
    runner = SimpleNamespace(optim_wrapper=SimpleNamespace(), iter=0,
                             message_hub=MessageHub.get_instance('amp_hook_fp32'))
    AmpLossScaleHook().after_train_iter(runner, 0)
    with pytest.raises(KeyError):
        runner.message_hub.get_scalar('train/loss_scale')


def test_bad_threshold_is_refused():
    with pytest.raises(ValueError, match='min_scale'):
        AmpLossScaleHook(min_scale=0)


def test_configs_use_it():
    from mmengine.config import Config
    for path in ('configs/det/cascade_mambavision_b_3x.py', 'configs/seg/upernet_mambavision_s_160k_ade20k.py'):
        cfg = Config.fromfile(osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), path))
        assert dict(type='AmpLossScaleHook') in cfg.custom_hooks, path
