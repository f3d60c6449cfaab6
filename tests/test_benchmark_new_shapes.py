"""tools/analysis_tools/benchmark_new_shapes.py (what a new input size costs the detector's training step): the sizes
it makes, the operator ranking, the table, argument errors, a failed row; the tool itself on CPU (slow)."""
import json
import subprocess

import pytest
import torch

pytest.importorskip('mmdet')

import benchmark_new_shapes as bns  # noqa: E402  (tools/analysis_tools, on pytest's pythonpath)
from analysis_tools_cli import run_tool, usage_error  # noqa: E402


def test_multi_scale_sizes_of_a_coco_sized_image():
    """Short side 480, 512, ... 800 for an 800x1024 image (its long side 1.28x, under the 1333 cap), padded to 32."""
    sizes = bns.multi_scale_sizes((800, 1024))
    expected = []
    for short in range(480, 801, 32):
        long = short * 1024 / 800
        expected.append((short + (-short) % 32, int(long + 0.5) + (-int(long + 0.5)) % 32))
    assert sizes == expected and sizes[0] == (480, 640) and sizes[-1] == (800, 1024)
    assert bns.multi_scale_sizes((1024, 800)) == [(w, h) for h, w in expected]  # portrait: the same, transposed


def test_the_padding_is_the_configs_data_preprocessors():
    """PAD stands for the detection configs' pad_size_divisor: the sizes are the batches those configs train on."""
    import os.path as osp

    from mmengine.config import Config
    for _, config in bns.benchmark_det.DET_MODELS.values():
        assert Config.fromfile(osp.join(bns.REPO, config)).model.data_preprocessor.pad_size_divisor == bns.PAD


def test_multi_scale_sizes_cap_the_long_side_and_drop_repeats():
    # 400x1600: the long side may be at most 1333/800 of the short side's 800-equivalent, 4x the short side here:
    # every short side above 480 is capped, so all give the capped size once
    sizes = bns.multi_scale_sizes((400, 1600))
    cap = 1333 / 800 * 400 / 1600
    assert sizes[-1] == (bns.padded(int(400 * cap + 0.5)), bns.padded(int(1600 * cap + 0.5)))
    assert len(sizes) == len(set(sizes)) < len(bns.SHORT_SIDES)
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in sizes)


def test_extra_operators_rank_by_extra_host_time_per_size():
    pairs = [({'conv': (5000, 3), 'mm': (900, 2), 'add': (100, 9)},
              {'conv': (1000, 3), 'mm': (800, 2), 'add': (100, 9)}),
             ({'conv': (7000, 3), 'mm': (1100, 2), 'new_op': (300, 1)}, {'conv': (1000, 3), 'mm': (800, 2)})]
    rows = bns.extra_operators(pairs, top=3)
    assert [row[0] for row in rows] == ['conv', 'mm', 'new_op']
    name, extra, new, again, calls = rows[0]
    assert (extra, new, again, calls) == pytest.approx((5.0, 6.0, 1.0, 3))
    assert rows[1][1] == pytest.approx(0.2) and rows[2][1:4] == pytest.approx((0.15, 0.15, 0.0))


def test_profile_sizes_are_new_to_the_row():
    args, _ = bns.parse_args(['--image-size', '800', '1024', '--base-size', '800', '1344', '--sizes', '11'])
    assert bns.profile_sizes(args) == [(448, 576), (416, 544)]
    # a very wide image: every short side is capped to the same size, which is timed, so none is left to profile
    args, _ = bns.parse_args(['--image-size', '400', '1600', '--base-size', '64', '96', '--sizes', '1'])
    assert args.sizes_list == bns.multi_scale_sizes((400, 1600))[:1] and bns.profile_sizes(args) == []


def test_operator_table_names_the_profiled_sizes():
    row = dict(label='T', profiled_sizes=[[448, 576], [416, 544]],
               operators=[dict(operator='aten::convolution_backward', extra_ms=549.44, new_ms=565.2, again_ms=15.8,
                               calls=72.0)])
    lines = bns.operator_table(row)
    assert lines[0].endswith('(torch.profiler, self time, mean over 448x576, 416x544)')
    assert lines[3] == '| aten::convolution_backward | 549.4 | 565.2 | 15.8 | 72 |'


def test_operator_host_times_come_from_the_profiler():
    seconds, ops = bns.operator_host_us(lambda: torch.ones(64, 64) @ torch.ones(64, 64), cuda=False)
    assert seconds > 0 and ops['aten::mm'][1] == 1 and ops['aten::mm'][0] > 0


def _row(name, label, extras, drops=0):
    steps = [dict(size=[64, 96 + 32 * i], new_s=0.3 + e, again_s=0.3) for i, e in enumerate(extras)]
    return dict(spec=name, name=name, label=label, scan_backend='triton', first_step_s=12.0, steps=steps,
                loss_scale_drops=drops, operators=[], **bns.summary(steps))


def test_table_gives_each_row_its_extra_against_swin_t():
    rows = [_row('mambavision_t', 'T', [0.5, 0.7, 1.2], drops=1), _row('swin_t', 'Swin-T', [0.5, 0.6, 0.7]),
            dict(spec='mambavision_b', error='exit code 1: CUDA out of memory')]
    lines = bns.table(rows)
    assert lines[2] == '| T | 3 | 1.100 | 0.300 | 0.800 / 0.700 | +0.200 | 12.0 | triton |'
    assert lines[3] == '| Swin-T | 3 | 0.900 | 0.300 | 0.600 / 0.600 | +0.000 | 12.0 | triton |'
    assert lines[4].startswith('| mambavision_b | failed: exit code 1: CUDA out of memory |')
    assert lines[5] == ('note: T: the AMP loss scaler skipped the optimiser update at 1 of the new sizes (the rest '
                        'of the step ran)')
    assert '| - |' in bns.table(rows[:1])[2]  # no Swin-T row: no comparison


def test_a_row_whose_process_fails_is_reported_not_raised(monkeypatch):
    args, _ = bns.parse_args(['--det-models', 'mambavision_t@8,8,8,4', '--sizes', '1'])
    monkeypatch.setattr(subprocess, 'run', lambda *a, **k: subprocess.CompletedProcess(
        a, 1, stdout='', stderr='Traceback\nRuntimeError: no kernel image\n'))
    expected = dict(spec='mambavision_t@8,8,8,4', error='exit code 1: RuntimeError: no kernel image')
    assert bns.run_rows(args) == [expected]


@pytest.mark.parametrize('args, message', [
    (['--det-models', 'swin_s'], "argument --det-models: unknown model 'swin_s'"),
    (['--sizes', '12', '--image-size', '800', '1024'], 'argument --sizes: an image of 800x1024 gives 11 distinct'),
    (['--base-size', '96', '160'], 'argument --base-size: 96x160 is one of the new sizes'),
    (['--image-size', '32', '64'], 'argument --image-size: expected HEIGHT WIDTH, two ints of at least 64'),
    (['--out', 'result.csv'], 'argument --out: the file name must end in .json'),
    (['--again', '0'], 'argument --again'),
])
def test_bad_arguments_exit_with_a_message(args, message, capsys):
    assert message in usage_error(bns.main, args, capsys)


@pytest.mark.slow
def test_benchmark_new_shapes_runs_a_row_in_its_own_process_on_cpu(tmp_path):
    out = tmp_path / 'shapes.json'
    proc = run_tool('tools/analysis_tools/benchmark_new_shapes.py', '--det-models', 'mambavision_t@8,8,8,4', '--sizes',
                    '1', '--again', '1', '--warmup', '0', '--batch-size', '1', '--out', str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'new sizes: 96x160 (the 3x pipeline\'s sizes of a 160x224 image, padded to 32)' in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith('| MambaVision-T (window 8,8,8,4) |'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    new, again = float(cells[2]), float(cells[3])
    mean_extra, median_extra = (float(v) for v in cells[4].split(' / '))
    assert cells[1] == '1' and new > 0 and again > 0 and cells[5] == '-' and cells[7] == 'torch'
    assert mean_extra == median_extra == pytest.approx(new - again, abs=2e-3)  # one size: mean = median
    content = json.loads(out.read_text())
    (result, ) = content['rows']
    assert result['steps'][0]['size'] == [96, 160] and result['steps'][0]['new_s'] == pytest.approx(new, abs=5e-4)
    assert content['command'].startswith('python tools/analysis_tools/benchmark_new_shapes.py --det-models')
    assert content['table'][2] == row
