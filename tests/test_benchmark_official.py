"""tools/analysis_tools/benchmark_official.py (NVIDIA's MambaVision beside ours) and official.py (NVIDIA's classifier
as a backbone, weight copy, equality check): the CLI on CPU (our rows, the skip note of NVIDIA's), argument errors,
the rows timed in turns, the ratios; OfficialBackbone against ours through a stand-in for NVIDIA's package built from
our own modules; against the real package where it is installed."""
import csv
import json
import sys
import types

import pytest
import torch
import torch.nn as nn

pytest.importorskip('mmdet')

import benchmark_official  # noqa: E402  (tools/analysis_tools, on pytest's pythonpath)
import official  # noqa: E402
from analysis_tools_cli import run_tool, usage_error  # noqa: E402
from mmmambavision import MambaVision  # noqa: E402
from mmmambavision.models.mambavision import MambaVisionLevel  # noqa: E402


def test_cli_on_cpu_prints_our_rows_and_skips_nvidia(tmp_path):
    out = tmp_path / 'rows.csv'
    result = run_tool('tools/analysis_tools/benchmark_official.py', '--parts', 'cls', 'backbone', '--img-size', '64',
                      '--size', '64', '96', '--window', '8', '8', '4', '2', '--rounds', '2', '--out', str(out),
                      timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert 'NVIDIA model: skipped (' in result.stdout
    assert any(line.startswith('| NVIDIA MambaVision-T | - | NVIDIA model: skipped (') for line in lines)
    for part in ('cls', 'backbone'):
        start = lines.index(part)
        assert lines[start + 1].startswith('| model | scan | ')
    ours = [line for line in lines if line.startswith('| MambaVision-T') and 'skipped' not in line]
    assert len(ours) == 2  # one per part, each with a number
    for line in ours:
        float(line.split('|')[3])
    assert any(line.startswith('| Swin-T (mmdet, window 7) |') and 'skipped' not in line for line in lines)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert {row['part'] for row in rows} == {'cls', 'backbone'}
    timed = [row for row in rows if row['model'] == 'MambaVision-T']
    assert timed and timed[0]['timed_steps'] == '2' and timed[0]['window_size'] == '8,8,4,2'
    assert rows[0]['command'].startswith('python tools/analysis_tools/benchmark_official.py --parts cls backbone')
    assert rows[0]['gpu'] == 'cpu' and rows[0]['torch'] == torch.__version__ and rows[0]['commit']


@pytest.mark.slow
def test_cli_test_step_parts_on_cpu(tmp_path):
    """det-test / seg-test: mmdet's and mmseg's test_step of the configs' models, ours and Swin-T timed (NVIDIA's
    skipped here, the Triton and CUDA-graph rows need CUDA), one image per step."""
    out = tmp_path / 'rows.json'
    result = run_tool('tools/analysis_tools/benchmark_official.py', '--parts', 'det-test', 'seg-test',
                      '--no-equality-check', '--out', str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for part in ('det-test', 'seg-test'):
        start = lines.index(part)
        assert lines[start + 1].startswith('| model | scan | ms (median) |')
        body = lines[start + 3:lines.index('', start)]  # to the blank line after the table's notes
        ours = next(line for line in body if line.startswith('| MambaVision-T |'))
        assert float(ours.split('|')[3]) > 0
        assert any(line.startswith('| Swin-T (window 7) |') and 'skipped' not in line for line in body)
        assert any(line.startswith('| MambaVision-T, Triton scan |') and 'skipped (CUDA and Triton needed)' in line
                   for line in body)
    rows = json.loads(out.read_text())
    assert {row['part'] for row in rows} == {'det-test', 'seg-test'}
    timed = {row['part']: row for row in rows if row['model'] == 'MambaVision-T'}
    assert timed['det-test']['batch'] == 1 and timed['det-test']['size'] == '128x192'
    assert timed['seg-test']['size'] == '128x160' and timed['seg-test']['timed_steps'] == 1


@pytest.mark.parametrize('argv, words', [
    (['--parts', 'det', 'nope'], ['argument --parts', "'nope'", 'cls', 'backbone', 'det', 'seg', 'seg-test']),
    (['--archs', 'huge'], ['argument --archs', "'huge'", 'tiny', 'small', 'base']),
    (['--ours-kwargs', '[1]'], ['argument --ours-kwargs', 'JSON object']),
    (['--ours-kwargs', '{compile: 1}'], ['argument --ours-kwargs', 'JSON object']),
    (['--out', 'rows.txt'], ['argument --out', '.json or .csv']),
    (['--window', 'none', '8', '8', '8'], ['argument --window', 'W1 and W2']),
    (['--window', '8', '8', '0', '8'], ['argument --window', 'positive int']),
    (['--size', '16', '64'], ['argument --size', 'at least 32']),
    (['--runs', '0'], ['argument --runs', 'positive']),
])
def test_argument_errors_name_the_argument_and_allowed_values(argv, words, capsys):
    err = usage_error(benchmark_official.parse_args, argv, capsys)
    for word in words:
        assert word in err, (word, err)


def test_arguments_pass_kwargs_through_and_resolve_aliases():
    args, _ = benchmark_official.parse_args(['--archs', 't', 'B', '--ours-kwargs', '{"compile": true}',
                                             '--ours-kwargs', '{"with_cp": true, "x": [1]}', '--window', '8', '8',
                                             'none', 'none'])
    assert args.archs == ['tiny', 'base'] and args.window == [8, 8, None, None]
    assert args.ours_kwargs == [{'compile': True}, {'with_cp': True, 'x': [1]}]
    assert benchmark_official.kwargs_label(args.ours_kwargs[1]) == 'with_cp=true, x=[1]'


def test_rows_are_timed_in_turns_and_a_failing_row_keeps_the_table():
    calls = []

    def timer(name, fail=False):
        def run(runs):
            calls.append(name)
            if fail and len(calls) > 3:
                raise RuntimeError('capture failed\nsecond line')
            return [0.01 * (ord(name) - 96)] * runs, 0
        return run

    rows = [benchmark_official.Row('backbone', name, side, 'tiny', timer=timer(name, fail=name == 'c'))
            for name, side in (('a', 'official'), ('b', 'ours'), ('c', 'ours'))]
    rows.append(benchmark_official.Row('backbone', 'd', 'ours', 'tiny', skip='not built'))
    benchmark_official.time_in_turns(rows, runs=2, rounds=3)
    assert calls == ['a', 'b', 'c', 'c', 'b', 'a', 'a', 'b']  # c fails in round 2 and is left out after
    assert len(rows[0].times) == 6 and len(rows[1].times) == 6 and len(rows[2].times) == 2
    assert rows[2].skip == 'failed while timed: RuntimeError: capture failed'
    assert benchmark_official.error_line(RuntimeError()) == 'RuntimeError'  # no message: no first line to take
    assert benchmark_official.error_line(ValueError('x' * 300 + '\nmore')) == 'ValueError: ' + 'x' * 200
    lines = benchmark_official.table('backbone', rows, ['n'])
    assert lines[2] == '| a | - | 10 | - | 1.00x |'
    assert lines[3] == '| b | - | 20 | - | 0.50x |'  # NVIDIA's 10 ms over ours' 20 ms
    assert lines[4].startswith('| c | - | skipped (failed while timed')
    assert lines[6] == 'note: n'


def test_warm_up_time_is_kept_and_a_long_one_gets_a_note(monkeypatch):
    """A compile or capture happens in a row's warm-up: its seconds go to the data file and, from WARMUP_NOTE_S on,
    into a note under the table."""
    clock = [100.0]
    monkeypatch.setattr(benchmark_official.time, 'perf_counter', lambda: clock[0])
    Row = benchmark_official.Row
    slow, quick = Row('backbone', 'compiled', 'ours', 'tiny'), Row('backbone', 'eager', 'ours', 'tiny')
    for row, seconds in ((slow, 12.5), (quick, 0.5)):
        row.peak_fn, row.times = (lambda: None), [0.05]
        benchmark_official.warm_and_peak(row, lambda seconds=seconds: clock.__setitem__(0, clock[0] + seconds),
                                         torch.device('cpu'))
    assert (slow.warmup_s, quick.warmup_s) == (12.5, 0.5) and not slow.skip
    lines = benchmark_official.table('backbone', [slow, quick], [])
    assert lines[-1] == 'note: warm-up of compiled: 12.5 s' and not any('of eager' in line for line in lines)


def test_a_graph_rows_peak_includes_the_pool_its_warm_up_records(monkeypatch):
    """A row that replays CUDA graphs allocates their memory pool while recording them in the warm-up and nothing
    in a replayed step: its peak is the warm-up's where that is higher; other rows keep the step's peak."""
    mem = dict(now=2 ** 30, peak=2 ** 30)
    cuda = benchmark_official.torch.cuda
    monkeypatch.setattr(cuda, 'synchronize', lambda: None)
    monkeypatch.setattr(cuda, 'memory_allocated', lambda: mem['now'])
    monkeypatch.setattr(cuda, 'max_memory_allocated', lambda: mem['peak'])
    monkeypatch.setattr(cuda, 'reset_peak_memory_stats', lambda: mem.__setitem__('peak', mem['now']))

    def record():  # 3 GiB at the warm-up's peak, 1 GiB of it kept (the graphs' pool)
        mem['peak'] = mem['now'] + 3 * 2 ** 30
        mem['now'] += 2 ** 30

    Row = benchmark_official.Row
    graphed = Row('backbone', 'graphed', 'ours', 'tiny', graphs=True)
    eager = Row('backbone', 'eager', 'ours', 'tiny')
    for row in (graphed, eager):
        row.peak_fn, row.times = (lambda: 0.5), [0.05]
        benchmark_official.warm_and_peak(row, record, torch.device('cuda'))
    assert graphed.peak == pytest.approx(3.0) and eager.peak == 0.5 and not graphed.skip
    note = benchmark_official.table('backbone', [graphed, eager], [])[-1]
    assert note.startswith('note: the peak of a row that replays CUDA graphs')
    assert not any('replays CUDA graphs' in line for line in benchmark_official.table('backbone', [eager], []))
    records = benchmark_official.records_graphs
    assert records(dict(compile=dict(mode='reduce-overhead'))) and records(dict(cuda_graph=True))
    assert records(dict(compile=dict(options={'triton.cudagraphs': True}), cuda_graph=False))
    assert not records(dict(compile=True)) and not records(dict(compile=dict(mode='max-autotune-no-cudagraphs')))
    assert not records(None) and not records(dict(cuda_graph=False))


def test_ratio_is_per_part_arch_and_mode_and_absent_without_nvidia():
    Row = benchmark_official.Row
    rows = [Row('cls', 'NVIDIA T', 'official', 'tiny', items=128, times=[0.02]),
            Row('cls', 'NVIDIA T, CUDA graph', 'official', 'tiny', items=128, times=[0.01]),
            Row('cls', 'T', 'ours', 'tiny', items=128, times=[0.01]),
            Row('cls', 'T, CUDA graph', 'ours', 'tiny', items=128, times=[0.008]),
            Row('cls', 'S', 'ours', 'small', items=128, times=[0.01]),
            Row('det', 'T', 'ours', 'tiny', times=[0.3], skipped_steps=2),
            Row('seg', 'NVIDIA T', 'official', 'tiny', times=[0.09]),
            Row('seg', 'T', 'ours', 'tiny', times=[0.06])]
    ratios = [benchmark_official.speed_ratio(row, rows) for row in rows]
    assert ratios[2] == pytest.approx(2.0) and ratios[3] == pytest.approx(1.25)
    assert ratios[4] is None and ratios[0] is None and ratios[5] is None
    assert ratios[7] == pytest.approx(1.5)  # against NVIDIA's row of its own part, not the cls part's
    assert benchmark_official.value_of(rows[2]) == pytest.approx(12800)
    assert benchmark_official.table('det', rows[5:], [])[2].endswith('| n/c (2 optimiser steps skipped) |')


def test_scan_backend_is_set_per_row_and_restored(monkeypatch):
    monkeypatch.setenv('MMMV_SCAN_BACKEND', 'torch')
    with benchmark_official.scan_backend('triton'):
        assert benchmark_official.os.environ['MMMV_SCAN_BACKEND'] == 'triton'
    assert benchmark_official.os.environ['MMMV_SCAN_BACKEND'] == 'torch'
    monkeypatch.delenv('MMMV_SCAN_BACKEND')
    with pytest.raises(KeyError):
        with benchmark_official.scan_backend('chunked'):
            raise KeyError('x')
    assert 'MMMV_SCAN_BACKEND' not in benchmark_official.os.environ


def test_triton_row_of_a_task_part_times_ours_own_model(monkeypatch):
    """det / seg parts: NVIDIA's row and the variants start from ours' weights (``like``), the Triton row times ours'
    model itself (``same``: its weights and optimiser state; a detector's step time depends on its weights); with
    ours not built, the Triton row is skipped, not built apart."""
    monkeypatch.setattr(benchmark_official, 'triton_available', lambda: True)
    ctx = dict(archs=lambda part: ['tiny'], scan='cuda', official_ok=True, official_why='')
    for ours_builds in (True, False):
        calls, rows = [], []

        def add(label, side, arch, scan, kind, kwargs=None, like=None, env=None, same=None):
            calls.append(dict(label=label, side=side, kind=kind, like=like, env=env, same=same, kwargs=kwargs))
            if side == 'ours' and kwargs is None and env is None and not ours_builds:
                return None
            return f'model of {label}'

        benchmark_official.task_model_rows(rows, ctx, 'det', (8, 8, 112, 56), add, True, [dict(compile=True)])
        by_label = {c['label']: c for c in calls}
        assert by_label['NVIDIA MambaVision-T']['like'] == ('model of MambaVision-T' if ours_builds else None)
        assert by_label['MambaVision-T (compile=true)']['like'] == by_label['NVIDIA MambaVision-T']['like']
        if ours_builds:
            triton = by_label['MambaVision-T, Triton scan']
            assert triton['same'] == 'model of MambaVision-T' and triton['env'] == 'triton'
            assert triton['like'] is None and rows == []
        else:
            assert 'MambaVision-T, Triton scan' not in by_label
            [skipped] = rows
            assert skipped.label == 'MambaVision-T, Triton scan' and 'ours was not built' in skipped.skip
        assert calls[-1]['kind'] == 'swin'


class _NvidiaStyleLevel(MambaVisionLevel):
    """A level with NVIDIA's interface: it applies its own downsample when it has one."""

    def forward(self, x):
        x = super().forward(x)
        return x if self.downsample is None else self.downsample(x)


@pytest.fixture
def stand_in(monkeypatch):
    """A module with NVIDIA's builders' interface (``mamba_vision_T(pretrained=False, window_size=[...])`` -> a
    classifier with patch_embed, levels, norm, head), built from our modules, installed as the official package."""
    def builder(arch):
        def build(pretrained=False, window_size=(8, 8, 14, 7), drop_path_rate=None):
            assert pretrained is False and isinstance(window_size, list)
            model = MambaVision(arch, window_size=tuple(window_size), out_indices=(3, ))
            del model.outnorm3
            for level in model.levels:
                level.__class__ = _NvidiaStyleLevel
            width = model.num_features[3]
            model.norm, model.head = nn.BatchNorm2d(width), nn.Linear(width, 10)
            return model
        return build

    module = types.ModuleType('nvidia_stand_in')
    for ours, theirs in official.OFFICIAL_BUILDERS.items():
        setattr(module, theirs, builder(ours))
    monkeypatch.setitem(sys.modules, 'nvidia_stand_in', module)
    monkeypatch.setattr(official, 'OFFICIAL_MODULE', 'nvidia_stand_in')


@pytest.mark.parametrize('window, shape', [((8, 8, 14, 7), (64, 96)), ((8, 8, 5, 3), (64, 96))])
def test_official_backbone_equals_ours_with_copied_weights(stand_in, window, shape):
    torch.manual_seed(0)
    ours = MambaVision('t', window_size=window).double()
    ours.init_weights()
    official.randomise_norms(ours)
    theirs = official.OfficialBackbone('t', window_size=window).double()
    x = torch.randn(1, 3, *shape, dtype=torch.float64)
    before = official.max_relative_difference(ours, theirs, x)
    assert min(before[2:]) > 1e-2  # different random weights: the check sees it
    copied = official.copy_weights(ours, theirs)
    assert len(copied) == len(theirs.state_dict()) == len(ours.state_dict())
    diffs = official.max_relative_difference(ours, theirs, x)
    assert len(diffs) == 4 and max(diffs) < 1e-12, diffs
    # the levels keep their downsample (the state dict's names) after each call
    assert all(level.downsample is not None for level in theirs.levels[:3]) and theirs.levels[3].downsample is None


def test_copy_weights_from_nvidias_classifier_and_its_errors(stand_in):
    classifier = official.build_official('small', (8, 8, 4, 2))
    ours = MambaVision('s', window_size=(8, 8, 4, 2))
    copied = official.copy_weights(classifier, ours)  # norm.* and head.* of the classifier, outnorm* of ours: left
    assert not any(key.startswith(('norm.', 'head.', 'outnorm')) for key in copied)
    assert torch.equal(ours.levels[2].blocks[0].mixer.A_log, classifier.levels[2].blocks[0].mixer.A_log)
    with pytest.raises(ValueError, match=r'levels\.2\.blocks\.8\.'):  # T2 has 11 stage-3 blocks, T 8
        official.copy_weights(MambaVision('t'), MambaVision('t2'))
    with pytest.raises(ValueError, match='allowed: .*tiny'):
        official.OfficialBackbone('huge')
    with pytest.raises(ValueError, match='no whole-map windows'):
        official.OfficialBackbone('t', window_size=(8, 8, None, None))


def test_compile_official_adds_nvidias_compiled_rows_beside_its_eager_ones(stand_in, monkeypatch):
    """--compile-official: a row of NVIDIA's model under torch.compile in the cls and backbone parts (a reference:
    the ratios stay against NVIDIA's eager row), its backbone starting from ours' weights like the eager one."""
    compiled = []

    def fake_compile(model, **kwargs):  # records what is compiled; runs it eagerly
        compiled.append(model)
        return model

    monkeypatch.setattr(official, 'official_available', lambda: (True, ''))
    monkeypatch.setattr(benchmark_official.torch, 'compile', fake_compile)
    rows = benchmark_official.main(['--parts', 'cls', 'backbone', '--cls-archs', 't', '--img-size', '64', '--size',
                                    '64', '96', '--window', '8', '8', '4', '2', '--rounds', '1', '--runs', '1',
                                    '--no-equality-check', '--compile-official'])
    by_label = {row.label: row for row in rows}
    for part, base in (('cls', 'NVIDIA MambaVision-T to stage 4 + LayerNorm'), ('backbone', 'NVIDIA MambaVision-T')):
        eager, fast = by_label[base], by_label[base + ', torch.compile']
        assert (eager.part, eager.side, fast.part, fast.side) == (part, 'official', part, 'reference')
        assert eager.times and fast.times and not fast.skip
        ours = next(row for row in rows if row.part == part and row.side == 'ours' and row.times)
        assert benchmark_official.speed_ratio(ours, rows) == pytest.approx(eager.median_s / ours.median_s)
    assert [type(m).__name__ for m in compiled] == ['OfficialBackbone', 'OfficialBackbone']
    without = benchmark_official.parse_args(['--parts', 'backbone'])[0]
    assert without.compile_official is False


def test_registered_for_configs_and_equality_check(stand_in):
    from mmengine.registry import MODELS
    official.register_official()
    official.register_official()  # a second call does nothing
    backbone = MODELS.build(dict(type='OfficialMambaVision', arch='tiny', window_size=(8, 8, 4, 2),
                                 out_indices=(1, 3)))
    outs = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 160, 8, 8), (1, 640, 2, 2)]
    result = official.equality_check('t', (8, 8, 4, 2), (64, 96), torch.device('cpu'))
    assert result['max'] < 1e-5 and len(result['diffs']) == 4
    ok, why = official.official_available()
    assert not ok and why


def test_real_nvidia_package_matches_ours():
    """Needs NVIDIA's package (with timm, einops and a selective_scan_fn); skipped where it is not installed."""
    pytest.importorskip('mambavision.models.mamba_vision')
    for window, shape in (((8, 8, 14, 7), (224, 224)), ((8, 8, 5, 3), (96, 160))):
        result = official.equality_check('t', window, shape, torch.device('cpu'))
        assert result['max'] < 1e-5, result
