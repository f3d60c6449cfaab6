"""tools/analysis_tools/get_flops.py: the selective scan and the window attention counted, against hand counts;
argument errors; the table of the command line (slow)."""
import pytest
import torch

pytest.importorskip('mmengine')

import get_flops  # noqa: E402  (tools/analysis_tools, on pytest's pythonpath)
from analysis_tools_cli import run_tool, usage_error  # noqa: E402
from mmmambavision import MambaVision  # noqa: E402


def hand_scan(windows: int, dim: int, tokens: int, d_state: int = 8) -> int:
    """One mixer call, mamba's convention: 9*B*D*L*N + B*D*L, D = dim / 2 channels scanned, B = windows."""
    channels = dim // 2
    return 9 * windows * channels * tokens * d_state + windows * channels * tokens


# MambaVision-T: stage 3 (dim 320, depth 8) has 4 mixer blocks then 4 attention blocks, stage 4 (dim 640, depth 4)
# 2 + 2. The scan and the attention run on the padded windows: B counts windows, L is the window's token count.
# The last block of a stage asks queries only for the tokens the stage outputs (q: per window).
CASES = {
    # 64x64, classification windows (14, 7): stage 3 is 4x4 -> one 14x14 window, stage 4 2x2 -> one 7x7 window
    'square-default-windows': ((64, 64), (8, 8, 14, 7), dict(s3=(1, 196, 16), s4=(1, 49, 4))),
    # 64x96, windows (4, 2): stage 3 is 4x6 -> padded 4x8, two 4x4 windows; stage 4 2x3 -> 2x4, two 2x2 windows
    # (whole windows along both axes: every query kept)
    'two-windows': ((64, 96), (8, 8, 4, 2), dict(s3=(2, 16, 16), s4=(2, 4, 4))),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_get_flops_counts_the_scan_and_attention_as_by_hand(case):
    (height, width), window, shapes = CASES[case]
    torch.manual_seed(0)
    model = MambaVision('tiny', out_indices=(3, ), window_size=window).eval()
    result = get_flops.count(model, model, torch.randn(1, 3, height, width))
    (w3, l3, q3), (w4, l4, q4) = shapes['s3'], shapes['s4']
    scan3, scan4 = 4 * hand_scan(w3, 320, l3), 2 * hand_scan(w4, 640, l4)
    assert result['scan'] == scan3 + scan4
    assert sorted(call[1:] for call in result['scan_calls']) == sorted(
        [(w3, 160, l3, 8)] * 4 + [(w4, 320, l4, 8)] * 2)
    parts = {name: scan for name, _, scan in result['parts']}
    assert parts['levels.2'] == scan3 and parts['levels.3'] == scan4 and parts['levels.0'] == 0
    # q.k^T and attn.v: windows * queries * keys * dim each (heads x head_dim = dim); the last block: q queries
    assert result['attention'] == (2 * w3 * (3 * l3 + q3) * l3 * 320) + (2 * w4 * (l4 + q4) * l4 * 640)
    assert result['total'] == result['mmengine'] + result['scan']
    assert result['mmengine'] > 50 * result['scan'] > 0


def test_scan_formula_is_mambas_convention():
    assert get_flops.scan_flops(2, 3, 5, 7) == 9 * 2 * 3 * 5 * 7 + 2 * 3 * 5
    assert get_flops.scan_flops(2, 3, 5, 7, with_d=False) == 9 * 2 * 3 * 5 * 7


@pytest.mark.slow
def test_get_flops_cli_prints_the_table():
    proc = run_tool('tools/analysis_tools/get_flops.py', '--arch', 'tiny', '--shape', '64')
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert '| model | input (HxW) | GFLOPs | params (M) | selective scan share |' in out
    assert '9*B*D*L*N + B*D*L' in out
    row = next(line for line in out.splitlines() if line.startswith('| **total**'))
    assert float(row.split('|')[2]) == pytest.approx(31.15, abs=0.01)  # backbone params (M)
    assert float(row.split('|')[5]) > 0  # GFLOPs


@pytest.mark.parametrize('args, argument', [
    (['--arch', 'tiny', '--shape', '16'], '--shape'),
    (['--arch', 'tiny', '--shape', '64', '64', '64'], '--shape'),
    (['--arch', 'huge'], '--arch'),
    (['--arch', 'tiny', '--window-size', '0', '8', '8', '8'], '--window-size'),
    (['--arch', 'tiny', '--window-size', '8', '8', 'wide', '8'], '--window-size'),
    ([], 'config file or --arch'),
    (['configs/det/missing.py'], 'file not found'),
])
def test_get_flops_bad_arguments_exit_with_a_message(args, argument, capsys):
    assert argument in usage_error(get_flops.main, args, capsys)
