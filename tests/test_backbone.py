"""The MambaVision backbone as specified: architecture, published weight layout and numerics, training knobs."""
import os.path as osp

import pytest
import torch

from mmmambavision import MambaVision
from float64_reference import reference_forward

DATA = osp.join(osp.dirname(__file__), 'data')
ARCHS = ['tiny', 'tiny2', 'small', 'base', 'large', 'large2']
# Published parameter counts with the classification head (the paper's table), in millions.
PUBLISHED_PARAMS = {'tiny': 31.79, 'tiny2': 35.10, 'small': 50.14, 'base': 97.69, 'large': 227.96,
                    'large2': 241.55}
SMALL_ARCH = dict(dim=16, in_dim=8, depths=(1, 2, 3, 2), num_heads=(1, 2, 2, 4), layer_scale=1e-5)


def read_official_keys(name):
    keys = {}
    with open(osp.join(DATA, f'official_keys_{name}.txt')) as f:
        for line in f:
            key, shape = line.split(' ', 1)
            keys[key] = tuple(int(s) for s in shape.strip()[1:-1].split(',') if s.strip())
    return keys


def randomize_(model, seed=0):
    """Give every weight and BN statistic a non-trivial value (layer-scale around 0.5, not 1e-5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('A_log'):
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 1)
            elif 'gamma' in name or 'norm' in name and name.endswith('weight'):
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=gen))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 16
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith('running_var'):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return model


@pytest.mark.parametrize('arch', ARCHS)
def test_parameter_count_matches_published_table(arch):
    model = MambaVision(arch)
    backbone = sum(p.numel() for n, p in model.named_parameters() if not n.startswith('outnorm'))
    width = model.num_features[3]
    with_head = backbone + width * 1000 + 1000 + 2 * width  # + classifier + final BatchNorm affine
    assert round(with_head / 1e6, 2) == PUBLISHED_PARAMS[arch]


@pytest.mark.parametrize('arch,name', [('tiny', 'T'), ('base', 'B')])
def test_state_dict_matches_published_keys_and_shapes(arch, name):
    official = read_official_keys(name)
    ours = {k: tuple(v.shape) for k, v in MambaVision(arch).state_dict().items()}
    expected = {k: v for k, v in official.items() if not k.startswith(('head.', 'norm.'))}
    for i in range(4):
        expected[f'outnorm{i}.weight'] = expected[f'outnorm{i}.bias'] = (model_width := 2 ** i * ours[
            'patch_embed.conv_down.4.weight'][0], )
    assert ours == expected


def test_aliases_and_dict_arch():
    assert MambaVision('t').arch == MambaVision('tiny').arch
    assert MambaVision('L2').arch == MambaVision('large2').arch
    model = MambaVision(SMALL_ARCH)
    assert model.num_features == (16, 32, 64, 128)


def test_unknown_arch_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"arch 'huge'.*base.*large2.*tiny"):
        MambaVision('huge')
    with pytest.raises(ValueError, match='unknown fields'):
        MambaVision(dict(SMALL_ARCH, depth=(1, 1, 1, 1)))


def test_misspelt_keyword_is_a_type_error():
    with pytest.raises(TypeError):
        MambaVision('tiny', drop_path_rat=0.1)


@pytest.mark.parametrize('kwargs,match', [
    (dict(out_indices=(0, 4)), 'out_indices'),
    (dict(out_indices=(-1, )), 'out_indices'),
    (dict(window_size=(8, 8, 14)), 'window_size'),
    (dict(window_size=(8, 8, 0, 7)), 'window_size'),
    (dict(window_size=(8, 8, 14.0, 7)), 'window_size'),
    (dict(window_size=(None, 8, 14, 7)), 'window_size'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(frozen_stages=-2), 'frozen_stages'),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MambaVision(SMALL_ARCH, **kwargs)


def test_bad_input_names_the_problem():
    model = MambaVision(SMALL_ARCH)
    with pytest.raises(ValueError, match='N, C, H, W'):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='in_channels=3'):
        model(torch.randn(1, 4, 32, 32))


@pytest.mark.parametrize('size', [(1, 1), (7, 5), (33, 47), (64, 64), (97, 130)])
def test_output_shapes_follow_the_strided_convs(size):
    model = MambaVision(SMALL_ARCH, window_size=(8, 8, 3, 2)).eval()
    h, w = size
    with torch.no_grad():
        outs = model(torch.randn(2, 3, h, w))
    assert len(outs) == 4
    for i, out in enumerate(outs):
        sh, sw = h, w
        for _ in range(i + 2):
            sh, sw = -(-sh // 2), -(-sw // 2)
        assert out.shape == (2, 16 * 2 ** i, sh, sw)
        assert torch.isfinite(out).all()


def test_out_indices_select_outputs():
    model = MambaVision(SMALL_ARCH, out_indices=(1, 3)).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 128]
    assert not hasattr(model, 'outnorm0') and hasattr(model, 'outnorm3')


def _check_against_reference(model, size, seed=0):
    randomize_(model, seed).eval()
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours = model(x)
    ref = reference_forward(model.state_dict(), x, model.arch['num_heads'], model.window_size)
    for i, (a, b) in enumerate(zip(ours, ref)):
        rel = (a.double() - b).norm() / b.norm()
        worst = (a.double() - b).abs().max() / b.abs().max()
        assert rel < 1e-4 and worst < 1e-4, f'stage {i}: relative error {rel:.2e}, max {worst:.2e}'


@pytest.mark.parametrize('arch', [pytest.param(a, marks=pytest.mark.slow) if a.startswith('large') else a
                                  for a in ARCHS])  # the large sizes: seconds each (slow tier)
def test_classification_windows_match_float64_reference(arch):
    # 124 px: stage 3 is 8x8 in 14-windows and stage 4 4x4 in 7-windows, so padding is exercised.
    _check_against_reference(MambaVision(arch, window_size=(8, 8, 14, 7)), (124, 124))


# The published det / seg windows make 12544- and 4096-step sequences: minutes for the float64 loops (slow tier).
@pytest.mark.parametrize('arch,window,size', [
    pytest.param('tiny', (8, 8, 112, 56), (70, 45), marks=pytest.mark.slow),  # detection: one padded window
    pytest.param('base', (8, 8, 112, 56), (45, 38), marks=pytest.mark.slow),
    pytest.param('tiny', (8, 8, 64, 32), (93, 61), marks=pytest.mark.slow),   # segmentation windows
    ('small', (8, 8, 5, 3), (161, 99)),    # many windows per image, ragged borders
])
def test_detection_and_segmentation_windows_match_float64_reference(arch, window, size):
    _check_against_reference(MambaVision(arch, window_size=window), size, seed=1)


@pytest.mark.parametrize('window', [(8, 8, None, None), (8, 8, 3, None)])
def test_whole_map_windows_match_float64_reference(window):
    # 93x61: stage 3 is 6x4 and stage 4 3x2, non-square maps run as single unpadded sequences
    _check_against_reference(MambaVision(SMALL_ARCH, window_size=window), (93, 61), seed=2)


def test_whole_map_window_equals_an_exactly_fitting_window():
    torch.manual_seed(0)
    model = MambaVision(SMALL_ARCH, window_size=(8, 8, 4, 2)).eval()
    whole = MambaVision(SMALL_ARCH, window_size=(8, 8, None, None)).eval()
    whole.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)  # stage 3 is 4x4, stage 4 2x2: one window each, no padding either way
    with torch.no_grad():
        for a, b in zip(model(x), whole(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('window', [(8, 8, None, None), (8, 8, 3, 2)])
@pytest.mark.parametrize('channels_last', [False, True])
def test_hybrid_blocks_get_contiguous_sequences(window, channels_last):
    # a strided (transposed) view would make every elementwise op and norm of the stage run on strided memory
    model = MambaVision(SMALL_ARCH, window_size=window).eval()
    seen = []
    for level in model.levels[2:]:
        level.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    x = torch.randn(2, 3, 93, 61)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        outs = model(x)
    assert seen == [True, True]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert all(out.is_contiguous(memory_format=fmt) for out in outs)
    if channels_last:  # the same values either way
        with torch.no_grad():
            plain = model.to(memory_format=torch.contiguous_format)(x.contiguous())
        for a, b in zip(outs, plain):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_every_parameter_receives_a_gradient():
    model = MambaVision(SMALL_ARCH, window_size=(8, 8, 3, 2)).train()
    outs = model(torch.randn(2, 3, 48, 40))
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_with_cp_gives_the_same_gradients():
    torch.manual_seed(0)
    base = MambaVision(SMALL_ARCH, window_size=(8, 8, 3, 2), drop_path_rate=0.2)
    cp = MambaVision(SMALL_ARCH, window_size=(8, 8, 3, 2), drop_path_rate=0.2, with_cp=True)
    cp.load_state_dict(base.state_dict())
    x = torch.randn(2, 3, 40, 40)
    grads = []
    for model in (base, cp):
        model.train()
        torch.manual_seed(1)
        outs = model(x.clone().requires_grad_())
        sum(o.sum() for o in outs).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_with_cp_constructor_argument_checkpoints_blocks(monkeypatch):
    import mmmambavision.models.mambavision as mv
    calls = []
    real = mv.checkpoint
    monkeypatch.setattr(mv, 'checkpoint', lambda fn, *a, **k: calls.append(1) or real(fn, *a, **k))
    model = MambaVision(SMALL_ARCH, with_cp=True).train()
    sum(o.sum() for o in model(torch.randn(1, 3, 32, 32, requires_grad=True))).backward()
    assert len(calls) == sum(SMALL_ARCH['depths'])


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 4])
def test_frozen_stages_stay_frozen_after_train(frozen_stages):
    model = MambaVision(SMALL_ARCH, frozen_stages=frozen_stages)
    model.train()
    for name, param in model.named_parameters():
        if name.startswith('patch_embed'):
            frozen = frozen_stages >= 0
        elif name.startswith('levels.'):
            frozen = int(name.split('.')[1]) < frozen_stages
        else:
            frozen = int(name[len('outnorm')]) < frozen_stages
        assert param.requires_grad is not frozen, name
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            in_frozen = name.startswith('patch_embed') and frozen_stages >= 0 or \
                name.startswith('levels.') and int(name.split('.')[1]) < frozen_stages
            assert module.training is not in_frozen, name


def test_norm_eval_keeps_batchnorm_in_eval_mode():
    model = MambaVision(SMALL_ARCH, norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    before = [m.running_mean.clone() for m in bns]
    model(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    assert any(m.training for m in model.modules() if isinstance(m, torch.nn.LayerNorm))


def test_drop_path_rate_is_linear_over_all_blocks():
    model = MambaVision('tiny', drop_path_rate=0.4)
    rates = [block.drop_path.drop_prob for level in model.levels for block in level.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.4, 16).tolist())
    default = [block.drop_path.drop_prob for level in MambaVision('base').levels for block in level.blocks]
    assert default[-1] == pytest.approx(0.3) and default[0] == 0


def test_attention_in_the_last_half_of_stages_3_and_4():
    model = MambaVision('base')
    kinds = [[type(b.mixer).__name__ for b in model.levels[i].blocks] for i in (2, 3)]
    assert kinds[0] == ['MambaVisionMixer'] * 5 + ['Attention'] * 5
    assert kinds[1] == ['MambaVisionMixer'] * 3 + ['Attention'] * 2
