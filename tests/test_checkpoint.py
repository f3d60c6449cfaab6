"""Published weight layouts load bit-exactly through init_cfg; hostile pickles never run code."""
import argparse
import collections
import os
import pickle
import subprocess
import sys

import pytest
import torch

from mmmambavision import MambaVision
from mmmambavision.checkpoint import UnsafeCheckpointError, load_checkpoint_file

SMALL_ARCH = dict(dim=16, in_dim=8, depths=(1, 1, 3, 2), num_heads=(1, 2, 2, 4), layer_scale=1e-5)


def _random_source():
    torch.manual_seed(3)
    model = MambaVision(SMALL_ARCH)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def _assert_backbone_equal(loaded, source):
    src = source.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, src[key]), key


def test_imagenet_layout_with_namespace_loads_bit_exactly(tmp_path, caplog):
    source = _random_source()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith('outnorm')}
    width = source.num_features[3]
    state.update({'head.weight': torch.randn(1000, width), 'head.bias': torch.randn(1000),
                  'norm.weight': torch.randn(width), 'norm.bias': torch.randn(width)})
    path = tmp_path / 'mambavision_small_1k.pth.tar'
    torch.save({'epoch': 309, 'arch': 'mamba_vision_T', 'state_dict': state, 'version': 2, 'metric': 82.3,
                'args': argparse.Namespace(model='mamba_vision_T', lr=0.005)}, path)
    model = MambaVision(SMALL_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    loaded = model.state_dict()
    for key, value in state.items():
        if key in loaded:
            assert torch.equal(loaded[key], value), key
    assert set(state) - set(loaded) == {'head.weight', 'head.bias', 'norm.weight', 'norm.bias'}


def test_mmdet_layout_with_prefix_and_message_hub_loads_bit_exactly(tmp_path):
    from mmengine.logging.history_buffer import HistoryBuffer
    import numpy as np
    source = _random_source()
    state = collections.OrderedDict(('backbone.' + k, v) for k, v in source.state_dict().items())
    state['neck.lateral_convs.0.conv.weight'] = torch.randn(4, 16, 1, 1)
    buffer = HistoryBuffer()
    buffer.update(1.5)
    ckpt = {'meta': {'epoch': 36, 'iter': 1000, 'mmengine_version': '0.10.7', 'seed': np.int64(3),
                     'dataset_meta': {'classes': ('person', 'car')}},
            'state_dict': state, 'message_hub': {'log_scalars': {'loss': buffer}}}
    path = tmp_path / 'cascade_mask_rcnn_mambavision_tiny_3x.pth'
    torch.save(ckpt, path)
    model = MambaVision(SMALL_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    model.init_weights()
    _assert_backbone_equal(model, source)


def test_missing_checkpoint_file_is_an_error_not_a_random_init(tmp_path):
    model = MambaVision(SMALL_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'nope.pth')))
    with pytest.raises(FileNotFoundError, match='init_cfg=None'):
        model.init_weights()


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def test_booby_trapped_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'patch_embed.conv_down.0.weight': torch.zeros(1)}, 'x': _Exploit(marker)}, path)
    with pytest.raises(pickle.UnpicklingError, match='system'):
        load_checkpoint_file(str(path))
    model = MambaVision(SMALL_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(UnsafeCheckpointError, match='system'):
        model.init_weights()
    assert not marker.exists()


def test_builds_by_type_name_through_mmdet_and_mmseg_registries():
    pytest.importorskip('mmdet')
    pytest.importorskip('mmseg')
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    for registry in (DET_MODELS, SEG_MODELS):
        model = registry.build(dict(type='MambaVision', arch=SMALL_ARCH, out_indices=(2, 3)))
        assert isinstance(model, MambaVision) and model.out_indices == (2, 3)


def test_custom_imports_in_a_config_registers_the_backbone():
    code = (
        "from mmengine.config import Config\n"
        "cfg = Config(dict(custom_imports=dict(imports=['mmmambavision'], allow_failed_imports=False)))\n"
        "from mmengine.utils import import_modules_from_strings\n"
        "import_modules_from_strings(**cfg.custom_imports)\n"
        "from mmengine.registry import MODELS\n"
        "print(type(MODELS.build(dict(type='MambaVision', arch='tiny'))).__name__)\n")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith('MambaVision')


def test_package_imports_without_mmdet_mmseg_mmcv_ops_or_mamba_ssm():
    code = (
        "import sys\n"
        "for name in ('mmdet', 'mmseg', 'mmcv', 'mmcv.ops', 'mamba_ssm', 'selective_scan_cuda'):\n"
        "    sys.modules[name] = None\n"
        "import torch\n"
        "from mmmambavision import MambaVision\n"
        "outs = MambaVision(dict(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 1, 2, 2)))"
        "(torch.randn(1, 3, 32, 32))\n"
        "print(len(outs))\n")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == '4'
