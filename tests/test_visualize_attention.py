"""The attention-weight recording of ``Attention`` and tools/analysis_tools/visualize_attention.py.

Recording must not change the model (same outputs as the default ``scaled_dot_product_attention`` path) and must
keep the weights the block really used: they are checked against a float64 softmax computed here from the block's
own LayerNorm and qkv parameters on the block's captured input. The tool's geometry (which window and token a
point falls in, where a window's weights land on the image) is checked against the model's own windowing.
"""
import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import visualize_attention as tool  # tools/analysis_tools, on pytest's pythonpath
from analysis_tools_cli import run_tool
from mmmambavision import MambaVision
from mmmambavision.models import layers
from mmmambavision.models.layers import Attention, record_attention, pad_to_window, window_partition
from test_backbone import SMALL_ARCH

# No layer scale: the attention branch then counts fully in the outputs compared below (SMALL_ARCH's 1e-5 would
# hide it).
ARCH = dict(SMALL_ARCH, layer_scale=None)
# Several windows per image and zero padding in both hybrid stages: maps 6x7 (stage 3) and 3x4 (stage 4).
WINDOWS = (8, 8, 4, 3)
INPUT = (2, 3, 90, 100)


def small_model(windows=WINDOWS, sharpen=True):
    model = MambaVision(dict(ARCH), window_size=windows)
    model.init_weights()
    if sharpen:  # larger qkv weights than the init's std 0.02: peaked, far from uniform attention
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, Attention):
                    module.qkv.weight.normal_(0, 0.15)
                    module.qkv.bias.normal_(0, 0.1)
    return model.eval()


def attention_blocks(model):
    return [block for level in model.levels[2:] for block in level.blocks if isinstance(block.mixer, Attention)]


# ------------------------------------------------------------------------------------------ recording (layers)
@pytest.mark.parametrize('windows', [WINDOWS, (8, 8, None, None)])
def test_recording_gives_the_same_outputs(windows):
    model = small_model(windows)
    x = torch.randn(*INPUT)
    inputs = {}
    hooks = [b.mixer.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m, args[0]))
             for b in attention_blocks(model)]
    with torch.no_grad():
        plain = model(x)
        with record_attention(model) as modules:
            assert len(modules) == 2 and all(m.record_weights for m in modules)
            recorded = model(x)
        for hook in hooks:
            hook.remove()
        assert all(not m.record_weights and m.record_queries is None for m in modules)  # restored
        assert all(m.attn_weights is not None for m in modules)  # kept for the caller
        # each attention module on its captured windows: the explicit softmax gives the SDPA path's output, to
        # 1e-6 of the output's scale
        for m in modules:
            default = m(inputs[m])
            with record_attention(m):
                explicit = m(inputs[m])
            assert default.abs().max() > 0.1
            torch.testing.assert_close(explicit, default, atol=1e-6 * float(default.abs().max()), rtol=1e-6)
        reference = model.double()(x.double())
    # The whole model: the two float32 paths differ by float32 rounding, amplified by the output LayerNorms (a few
    # 1e-6 on unit-scale maps), no more than either differs from the same model in float64.
    for a, b, ref in zip(plain, recorded, reference):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        assert (b.double() - ref).abs().max() < 2e-5 and (a.double() - ref).abs().max() < 2e-5


def test_default_path_is_sdpa_and_recording_is_not(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(layers.F, 'scaled_dot_product_attention', counting)
    model = small_model()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
        assert len(calls) == 2 and all(b.mixer.attn_weights is None for b in attention_blocks(model))
        with record_attention(model):
            model(x)
    assert len(calls) == 2  # the recording forward computed its softmax explicitly


def _float64_weights(block, x):
    """softmax(q k^T / sqrt(d)) per head in float64 from the block's own LayerNorm and qkv parameters."""
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    t = (x - mean) / torch.sqrt(var + block.norm1.eps) * block.norm1.weight.double() + block.norm1.bias.double()
    qkv = t @ block.mixer.qkv.weight.double().T + block.mixer.qkv.bias.double()
    dim, heads = t.shape[-1], block.mixer.num_heads
    hd = dim // heads
    out = []
    for head in range(heads):
        sl = slice(head * hd, (head + 1) * hd)
        scores = qkv[..., sl] @ qkv[..., dim:2 * dim][..., sl].transpose(1, 2) / math.sqrt(hd)
        scores = torch.exp(scores - scores.max(-1, keepdim=True).values)
        out.append(scores / scores.sum(-1, keepdim=True))
    return torch.stack(out, 1)  # (sequences, heads, queries, keys)


@pytest.mark.parametrize('windows', [WINDOWS, (8, 8, None, None)])
def test_recorded_weights_are_the_float64_softmax_of_the_block(windows):
    model = small_model(windows)
    inputs = {}
    blocks = attention_blocks(model)
    hooks = [b.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m, args[0].detach())) for b in blocks]
    with torch.no_grad(), record_attention(model):
        model(torch.randn(*INPUT))
    for hook in hooks:
        hook.remove()
    for block in blocks:
        got = block.mixer.attn_weights
        seqs, length = inputs[block].shape[:2]
        assert got.shape == (seqs, block.mixer.num_heads, length, length) and got.dtype == torch.float32
        torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[:-1]), atol=1e-6, rtol=0)
        assert got.max() > 5 / length  # far from uniform: the comparison below means something
        torch.testing.assert_close(got.double(), _float64_weights(block, inputs[block]), atol=1e-6, rtol=0)


def test_selected_queries_and_chunking_keep_the_rows(monkeypatch):
    attention = Attention(32, 4).eval()
    with torch.no_grad():
        attention.qkv.weight.normal_(0, 0.3)
    x = torch.randn(3, 50, 32)
    with torch.no_grad():
        plain = attention(x)
        with record_attention(attention):
            full_out = attention(x)
        full = attention.attn_weights
        monkeypatch.setattr(layers, '_RECORD_CHUNK_ELEMENTS', 3 * 4 * 50 * 7)  # chunks of 7 queries
        with record_attention(attention, queries=[49, 0, 13, 7]):
            chunked_out = attention(x)
    assert attention.attn_weights.shape == (3, 4, 4, 50)
    torch.testing.assert_close(attention.attn_weights, full[:, :, [49, 0, 13, 7]], atol=1e-6, rtol=0)
    torch.testing.assert_close(full_out, plain, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(chunked_out, plain, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match='record_queries.*0..49'), record_attention(attention, queries=[50]):
        attention(x)
    assert not attention.record_weights  # restored after the error too


def test_recording_keeps_gradients():
    attention = Attention(16, 2)
    x = torch.randn(2, 9, 16, requires_grad=True)
    attention(x).square().sum().backward()
    plain = x.grad.clone()
    x.grad = None
    with record_attention(attention):
        attention(x).square().sum().backward()
    torch.testing.assert_close(x.grad, plain, atol=1e-5, rtol=1e-5)
    assert not attention.attn_weights.requires_grad


# ----------------------------------------------------------------------------------------------- tool geometry
@pytest.mark.parametrize('map_hw, window', [((6, 7), 4), ((3, 4), 3), ((5, 5), 5), ((6, 7), None), ((2, 9), 4)])
def test_query_token_and_placement_follow_the_models_windows(map_hw, window):
    height, width = map_hw
    ids = torch.arange(1, height * width + 1, dtype=torch.float32).view(1, 1, height, width)  # 0 = padding
    if window is None:
        windows = ids.flatten(2).transpose(1, 2)
    else:
        windows = window_partition(pad_to_window(ids, window), window)
    windows = windows[..., 0]
    for row in range(height):
        for col in range(width):
            index, token = tool.query_token((row, col), map_hw, window)
            assert windows[index, token] == row * width + col + 1
            on_map, padding = tool.window_weights_on_map(windows[index].numpy(), (row, col), map_hw, window)
            inside = ~np.isnan(on_map)
            assert inside[row, col]
            assert np.array_equal(on_map[inside], ids[0, 0].numpy()[inside])  # every token on its own cell
            assert inside.sum() == (windows[index] > 0).sum()  # the whole window but its padding
            ones, share = tool.window_weights_on_map(np.ones(windows.shape[1]), (row, col), map_hw, window)
            assert share == pytest.approx(1 - inside.sum() / windows.shape[1])


def test_stage_map_sizes_are_the_models():
    model = MambaVision(dict(ARCH), window_size=WINDOWS).eval()
    for hw in [(37, 53), (64, 64), (90, 100), (33, 95)]:
        shapes = {}
        hooks = [level.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[-2:])))
                 for n, level in enumerate(model.levels)]
        with torch.no_grad():
            model(torch.randn(1, 3, *hw))
        for hook in hooks:
            hook.remove()
        assert [shapes[i] for i in range(4)] == [tool.stage_map_size(hw, s) for s in (1, 2, 3, 4)]


def test_map_to_image_and_resize_sizes():
    values = np.arange(6.).reshape(2, 3)
    up = tool.map_to_image(values, 4, (7, 10))
    assert up.shape == (7, 10) and up[5, 9] == 5 and up[3, 3] == 0 and up[4, 4] == 4
    assert tool.keep_ratio_size(600, 512, (1333, 800)) == (938, 800)  # mmcv's rescale_size
    assert tool.keep_ratio_size(600, 512, (2048, 512)) == (600, 512)
    assert tool.keep_ratio_size(600, 512, (224, )) == (263, 224)


def test_config_input_settings():
    from mmengine.config import Config
    cfg = Config(dict(
        model=dict(data_preprocessor=dict(mean=[1., 2., 3.], std=[4., 5., 6.], bgr_to_rgb=True,
                                          pad_size_divisor=32)),
        test_dataloader=dict(dataset=dict(pipeline=[dict(type='LoadImageFromFile'),
                                                    dict(type='Resize', scale=(1333, 800), keep_ratio=True)]))))
    assert tool.config_input_settings(cfg) == ((1333, 800), (1., 2., 3.), (4., 5., 6.), False, 32)
    cfg = Config(dict(model=dict(data_preprocessor=dict(mean=[1., 2., 3.], std=[4., 5., 6.])),
                      test_pipeline=[dict(type='mmseg.Resize', scale=(2048, 512), keep_ratio=True)]))
    assert tool.config_input_settings(cfg) == ((2048, 512), (1., 2., 3.), (4., 5., 6.), True, 1)


def test_run_maps_the_recorded_window(tmp_path):
    """The tool's panels for a point: the right token, the window's weights in the right place, padding cropped."""
    model = small_model()
    original = np.random.RandomState(0).randint(0, 256, (45, 50, 3)).astype(np.uint8)
    image = tool.prepare(original, (90, ), tool.IMAGENET_MEAN, tool.IMAGENET_STD, False, 32)
    assert image.resized_hw == (90, 100) and image.input_hw == (96, 128)
    result = tool.run(model, image, 3, (40., 30.))  # resized (80.5, 60.5): stage-3 cell (3, 5) at stride 16
    assert result['cell'] == (3, 5) and result['map_hw'] == (6, 8)
    assert (result['window_index'], result['token']) == (1, 13)  # 4x4 windows, 2 a row; (3 % 4) * 4 + 5 % 4
    for block in result['blocks']:
        assert abs(block['weights'].sum() - 1) < 1e-6
        img = block['image']
        assert img.shape == (90, 100)  # the resized image: the input's padding (to 96 x 128) cropped
        # the window covers map rows 0..3 and cols 4..7, i.e. pixels y < 64 and x >= 64 of the resized image
        assert np.isnan(img[:, :64]).all() and np.isnan(img[64:]).all() and not np.isnan(img[:64, 64:]).any()
        # token (row r, col c) of the window sits on pixels [16 r, 16 r + 16) x [64 + 16 c, 64 + 16 c + 16)
        assert img[16 * 1 + 3, 64 + 16 * 1 + 5] == pytest.approx(block['weights'][1 * 4 + 1])
        # map col 7 (pixels 112..127) lies wholly on the input's padding: its weights are the padding share
        assert block['padding_share'] == pytest.approx(block['weights'].reshape(4, 4)[:, 3].sum())
    for energy in result['energies']:
        assert energy['image'].shape == (90, 100) and energy['image'].min() == 0 and energy['image'].max() == 1


def test_load_weights_detects_the_backbone_prefix(tmp_path):
    import argparse
    source = small_model()
    path = str(tmp_path / 'det.pth')
    torch.save(dict(meta=dict(epoch=1), state_dict={**{f'backbone.{k}': v for k, v in source.state_dict().items()},
                                                    'neck.conv.weight': torch.zeros(1)}), path)
    target = MambaVision(dict(ARCH), window_size=WINDOWS)
    note = tool.load_weights(target, path, argparse.ArgumentParser())
    assert note == 'det.pth (backbone.*)'
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    wrong = MambaVision(dict(ARCH, dim=24), window_size=WINDOWS)
    with pytest.raises(SystemExit) as exit_info:
        tool.load_weights(wrong, path, argparse.ArgumentParser())
    assert exit_info.value.code == 2


# ------------------------------------------------------------------------------------------------ tool CLI
def grace_hopper():
    import matplotlib.cbook
    return matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)  # 512 x 600, in matplotlib


@pytest.mark.parametrize('args, words', [
    (['--arch', 'tiny', '--stage', '2'], ['--stage', 'invalid choice: 2', '3, 4']),
    (['--arch', 'huge'], ['--arch', "invalid choice: 'huge'", 'tiny', 'large2']),
    (['--arch', 'tiny', '--point', '600', '10'], ['--point', 'outside the image', '0 <= X <= 511']),
    (['--arch', 'tiny', '--point', '5', '-1'], ['--point', '0 <= Y <= 599']),
    (['--arch', 'tiny', '--checkpoint', 'missing.pth'], ['--checkpoint', 'file not found']),
    (['--config', 'missing.py'], ['--config', 'file not found']),
    (['--arch', 'tiny', '--scale', '8'], ['--scale', 'at least 32']),
    ([], ['one of the arguments --arch --config is required']),
])
def test_bad_arguments_exit_2_naming_the_argument(tmp_path, capsys, args, words):
    with pytest.raises(SystemExit) as exit_info:
        tool.main([grace_hopper(), *args, '--out', str(tmp_path / 'x.png')])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    for word in words:
        assert word in error, (word, error)
    assert not (tmp_path / 'x.png').exists()


def test_missing_image_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool.main([str(tmp_path / 'nope.jpg'), '--arch', 'tiny', '--out', str(tmp_path / 'x.png')])
    assert exit_info.value.code == 2 and 'argument IMAGE: file not found' in capsys.readouterr().err


def png_size(path):
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n'
    return struct.unpack('>II', head[16:24])


@pytest.mark.slow
def test_cli_writes_the_png(tmp_path):
    out = tmp_path / 'attention.png'
    result = run_tool('tools/analysis_tools/visualize_attention.py', grace_hopper(), '--arch', 'tiny', '--scale',
                      '64', '--point', '100', '450', '--out', str(out))
    assert result.returncode == 0, result.stderr
    assert 'random' in result.stdout and f'wrote {out}' in result.stdout
    width, height = png_size(out)
    expected = tool.png_size(4, (600, 512), 100)  # T's stage 3: four attention blocks
    assert abs(width - expected[0]) <= 1 and abs(height - expected[1]) <= 1
    from PIL import Image
    pixels = np.asarray(Image.open(out).convert('RGB'))
    assert pixels.std() > 20  # a picture, not a blank page


@pytest.mark.slow
def test_cli_with_a_segmentation_config(tmp_path):
    out = tmp_path / 'attention.png'
    result = run_tool('tools/analysis_tools/visualize_attention.py', grace_hopper(), '--config',
                      'configs/seg/upernet_mambavision_t_160k_ade20k.py', '--scale', '128', '--stage', '4',
                      '--out', str(out))
    assert result.returncode == 0, result.stderr
    assert '512x600 -> 128x150 (stage 4: 2 attention blocks recorded)' in result.stdout  # no pad divisor in mmseg
    width, height = png_size(out)
    expected = tool.png_size(2, (600, 512), 100)
    assert abs(width - expected[0]) <= 1 and abs(height - expected[1]) <= 1
