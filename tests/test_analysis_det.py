"""tools/analysis_tools/benchmark_det.py (the Cascade Mask R-CNN train-step table) and profile_det.py (where its
time goes): argument errors, the table's lines, the rows timed in turns, the loss scaler's settling, the profiler's
attribution of kineto events, on synthetic inputs; the tools themselves on CPU (slow)."""
import gc
import os
import re

import pytest
import torch

pytest.importorskip('mmdet')

import benchmark_det  # noqa: E402  (tools/analysis_tools, on pytest's pythonpath)
import profile_det  # noqa: E402
from analysis_tools_cli import run_tool, usage_error  # noqa: E402


def test_benchmark_det_model_specs():
    assert benchmark_det.parse_det_model('mambavision_s') == ('mambavision_s', None)
    assert benchmark_det.parse_det_model('mambavision_t@8,8,56,28') == ('mambavision_t', (8, 8, 56, 28))
    assert benchmark_det.parse_det_model('mambavision_b@8,8,none,None') == ('mambavision_b', (8, 8, None, None))
    assert benchmark_det.parse_det_model('mambavision_t_graphs') == ('mambavision_t_graphs', None)
    for label, config in benchmark_det.DET_MODELS.values():  # every row's config is there
        assert os.path.isfile(os.path.join(benchmark_det.REPO, config)), (label, config)
    for bad in ('swin_s', 'swin_t@8,8,8,8', 'mambavision_t@8,8,56', 'mambavision_t@8,8,0,4',
                'mambavision_t@none,8,8,8', 'mambavision_t@8,8,x,8'):
        with pytest.raises(ValueError):
            benchmark_det.parse_det_model(bad)


@pytest.mark.parametrize('compile_, graphs', [(dict(mode='reduce-overhead'), True),
                                              (dict(options={'triton.cudagraphs': True}), True),
                                              (True, False), (dict(mode='max-autotune-no-cudagraphs'), False),
                                              (False, False)])
def test_replays_graphs_reads_the_backbones_compile_mode(compile_, graphs):
    """A graph-mode row's peak memory must count its warm-up (where the graphs' pool is allocated)."""
    from types import SimpleNamespace

    from mmmambavision.models import MambaVision
    detector = SimpleNamespace(backbone=MambaVision(arch='tiny', compile=compile_))
    assert benchmark_det.replays_graphs(detector) is graphs


def test_benchmark_det_rounds_default_and_errors():
    assert benchmark_det.DET_DEFAULTS['cuda']['rounds'] > 1 and benchmark_det.DET_DEFAULTS['cpu']['rounds'] == 1
    assert benchmark_det.parse_args(['--det-rounds', '4'])[0].det_rounds == 4


def test_benchmark_det_table_gives_no_ratio_to_rows_with_skipped_optimiser_steps():
    rows = [('swin_t', 'Swin-T', 27.5, 300.0, 5.6, 0, 80.0, 50.0),
            ('mambavision_t', 'T', 31.2, 200.0, 5.0, 10, 60.0, 6.0),
            ('mambavision_t', 'T whole', 31.2, 150.0, 4.0, 0, 40.0, 6.5),
            ('mambavision_b', 'B', None, None, 'OOM', 0, None, None)]
    lines = benchmark_det.det_table(rows, ['n1'])
    assert lines[0].startswith('| model | backbone params (M) | step ms (median) | backbone fwd+bwd ms | ')
    assert lines[2] == '| Swin-T | 27.5 | 300 | 80 | 50 | 170 | 5.60 | 1.00x |'
    assert lines[3] == '| T | 31.2 | 200 | 60 | 6 | 134 | 5.00 | n/c (10 steps skipped) |'
    assert lines[4] == '| T whole | 31.2 | 150 | 40 | 6 | 104 | 4.00 | 2.00x |'  # rest: 150 - 40 - 6.5 = 103.5
    assert lines[5] == '| B | - | out of memory | - | - | - | - | - |'
    assert lines[6] == 'note: n1'
    assert lines[7].startswith("floor: Swin-T's step less its backbone forward+backward is 220 ms, 0.73x its step")
    # a Swin-T row that skipped steps is no reference
    rows[0] = ('swin_t', 'Swin-T', 27.5, 300.0, 5.6, 3, 80.0, 50.0)
    assert benchmark_det.det_table(rows, [])[4].endswith('| - |')
    assert not any(line.startswith('floor:') for line in benchmark_det.det_table(rows, []))


def test_interleave_det_times_the_rows_in_turns_and_counts_skipped_steps():
    calls = []

    class Scaler:
        def __init__(self, skip_at):
            self.scale, self.skip_at, self.steps = 1024., skip_at, 0

        def get_scale(self):
            return self.scale

    class Detector:
        def __init__(self, name, skip_at=()):
            self.name, self.scaler = name, Scaler(skip_at)

        def train_step(self, data, optim_wrapper):
            assert optim_wrapper.loss_scaler is self.scaler and data == {'batch': 1}
            calls.append(self.name)
            self.scaler.steps += 1
            if self.scaler.steps in self.scaler.skip_at:
                self.scaler.scale /= 2

    class Wrapper:
        def __init__(self, detector):
            self.loss_scaler = detector.scaler

    rows = [Detector('a'), Detector('b', skip_at=(3, 7)), Detector('c')]
    result = benchmark_det.interleave_det([(d, Wrapper(d)) for d in rows], {'batch': 1}, runs=2, rounds=3,
                                      device=torch.device('cpu'))
    # each turn: one untimed step then 2 timed; rounds in order a b c, then c b a, then a b c
    assert calls == ['a'] * 3 + ['b'] * 3 + ['c'] * 3 + ['c'] * 3 + ['b'] * 3 + ['a'] * 3 + ['a'] * 3 + ['b'] * 3 + \
        ['c'] * 3
    # b's steps 1, 4, 7 are untimed (the switch): its skip at step 3 counts, the one at step 7 does not
    assert [skipped for _, skipped in result] == [0, 1, 0]
    assert all(ms >= 0 for ms, _ in result)


def test_settle_loss_scaler_steps_until_two_steps_are_taken():
    class Scaler:  # halves its scale on each of the first `overflows` steps (what GradScaler does on inf grads)
        def __init__(self, overflows):
            self.scale, self.overflows = 65536., overflows

        def get_scale(self):
            return self.scale

        def step(self):
            if self.overflows:
                self.overflows -= 1
                self.scale /= 2

    for overflows, calls in [(0, 2), (1, 3), (5, 7)]:
        scaler = Scaler(overflows)
        assert benchmark_det.settle_loss_scaler(scaler.step, scaler, limit=60) == calls
        assert scaler.overflows == 0
    scaler = Scaler(100)
    assert benchmark_det.settle_loss_scaler(scaler.step, scaler, limit=10) == 10 and scaler.overflows == 90


def test_det_profile_attributes_gpu_work_to_the_part_that_launched_it():
    ms = 1_000_000  # ns
    events = [  # two steps: (name, kineto activity type, start ns, duration ns, correlation id)
        ('det::backbone', 'user_annotation', 0, 10 * ms, 0),
        ('cudaLaunchKernel', 'cuda_runtime', 1 * ms, 10_000, 7),
        ('cuLaunchKernelEx', 'cuda_driver', 2 * ms, 10_000, 8),  # a Triton launch
        ('det::backward', 'user_annotation', 20 * ms, 30 * ms, 0),
        ('cudaLaunchKernel', 'cuda_runtime', 25 * ms, 10_000, 9),  # from autograd's thread, inside the range
        ('cudaStreamSynchronize', 'cuda_runtime', 40 * ms, 6 * ms, 10),
        ('aten::mm', 'cpu_op', 1 * ms, 2 * ms, 7),  # same id as a kernel, another id space: not a launch
        ('gemm', 'kernel', 9 * ms, 4 * ms, 7),  # runs after its launcher's range ended: still the backbone's
        ('scan', 'kernel', 12 * ms, 2 * ms, 8),
        ('gemm_bwd', 'kernel', 26 * ms, 8 * ms, 9),
        ('copy', 'gpu_memcpy', 15 * ms, 1 * ms, 99),  # no launch recorded: placed by its own start, no range
        ('det::backbone', 'gpu_user_annotation', 9 * ms, 10 * ms, 0),  # not work: not counted
        ('cudaMemcpy', 'cuda_runtime', 55 * ms, 2 * ms, 11),
        ('cudaDeviceSynchronize', 'cuda_runtime', 60 * ms, 9 * ms, 12),  # the harness's, between steps: not counted
        # the scan's autograd Function: its forward holds the Triton launch, its backward the backward's kernel
        ('TritonSelectiveScan', 'cpu_op', int(1.5 * ms), 1 * ms, 0),
        ('autograd::engine::evaluate_function: TritonSelectiveScanBackward', 'cpu_op', 24 * ms, 3 * ms, 0),
        ('TritonSelectiveScanBackward', 'cpu_op', 24 * ms, 2 * ms, 0),
        ('selective_scan_helper', 'cpu_op', 30 * ms, 2 * ms, 0),  # another name: not the scan's
    ]
    phases, gpu, blocked, syncs = profile_det.attribute_det_events(events, steps=2)
    assert phases['backbone'] == (5.0, 3.0) and phases['backward'] == (15.0, 4.0)
    assert phases['neck'] == (0, 0) and set(profile_det.DET_PHASES) <= set(phases)
    assert gpu == 7.5 and blocked == 4.0 and syncs == 1.0
    assert phases['scan'] == (1.5, 5.0)  # host (1 + 2) ms, GPU (2 + 8) ms, over two steps
    without_scan = [event for event in events if 'SelectiveScan' not in event[0]]
    assert profile_det.attribute_det_events(without_scan, steps=2)[0]['scan'] == (0, 0)


def test_gc_clock_counts_collections_inside_the_block_only():
    with profile_det.GcClock() as clock:
        assert clock in gc.callbacks
        gc.collect()
        gc.collect(0)
    assert clock not in gc.callbacks
    assert clock.collections[2] >= 1 and clock.collections[0] >= 1 and clock.ms > 0
    before = list(clock.collections)
    gc.collect()
    assert clock.collections == before


def test_kineto_activity_without_activity_type_as_in_older_torch():
    """torch < 2.12 has no _KinetoEvent.activity_type (the device's 2.11): rebuilt from device, name, annotation."""
    from torch.profiler import ProfilerActivity, profile, record_function

    class Old:  # an older torch's event: no activity_type (and, with annotations=False, no is_user_annotation)
        def __init__(self, name, device, correlation=0, annotation=None):
            self._name, self._device, self._correlation, self._annotation = name, device, correlation, annotation

        def name(self):
            return self._name

        def device_type(self):
            return self._device

        def correlation_id(self):
            return self._correlation

        def __getattr__(self, attr):
            if attr == 'is_user_annotation' and self._annotation is not None:
                return lambda: self._annotation
            raise AttributeError(attr)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function('det::backbone'):
            torch.ones(8, 8).mm(torch.ones(8, 8))
    events = list(prof.profiler.kineto_results.events())
    if hasattr(events[0], 'activity_type'):  # this torch names them: the rebuilt type must agree
        for event in events:
            for annotation in (event.is_user_annotation(), None):
                old = Old(event.name(), event.device_type(), event.correlation_id(), annotation)
                assert profile_det.kineto_activity(old) == event.activity_type(), event.name()
    cpu, gpu = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    cases = [(Old('det::roi_head', gpu, 0, True), 'gpu_user_annotation'),
             (Old('det::roi_head', gpu, 0), 'gpu_user_annotation'),
             (Old('Optimizer.step#AdamW.step', gpu, 0), 'gpu_user_annotation'),  # no correlation id: no work
             (Old('void at::native::vectorized_elementwise_kernel<4>', gpu, 12, False), 'kernel'),
             (Old('_scan_fwd_kernel', gpu, 13), 'kernel'),
             (Old('Memcpy HtoD (Pageable -> Device)', gpu, 14, False), 'gpu_memcpy'),
             (Old('Memset (Device)', gpu, 15), 'gpu_memset'),
             (Old('cudaLaunchKernel', cpu, 12, False), 'cuda_runtime'),
             (Old('cudaStreamSynchronize', cpu, 16), 'cuda_runtime'),
             (Old('cuLaunchKernelEx', cpu, 13, False), 'cuda_driver'),
             (Old('det::backward', cpu, 0), 'user_annotation'),
             (Old('aten::mm', cpu, 3, False), 'cpu_op')]
    for event, expected in cases:
        assert profile_det.kineto_activity(event) == expected, event.name()


def test_profile_table_lines_and_the_warning_when_cuda_recorded_no_kernels():
    profiler = profile_det.RowProfiler()
    phases = {phase: (1.0, 0.0) for phase in profile_det.DET_PHASES}
    profiler.profiles.append(('T', (phases, 0.0, 0.5, 2.0, 10.0)))  # (phases, GPU ms, blocked ms, syncs, wall ms)
    profiler.steps, profiler.cuda = 5, True
    lines = profiler.report()
    assert lines[0] == '\ntorch.profiler, 5 steps per model after the timed ones, per step:'
    assert lines[1].startswith('| model | step ms (profiled) | GPU busy ms | GPU idle ms | syncs / step | ')
    assert lines[3] == '| T | 10 | 0 | 10 | 2 | 0 | ' + ' | '.join(['1.0 / 0.0'] * 7) + ' | - | - |'
    assert lines[-1].startswith('warning: the profiler recorded no GPU kernels')
    with_scan = dict(phases, scan=(0.25, 0.5))
    profiler.profiles.append(('B', (with_scan, 0.0, 0.5, 2.0, 10.0, (1.25, 3.0))))  # + (GC ms, collections)
    assert profiler.report()[4].endswith(' | 1.0 / 0.0 | 0.2 / 0.5 | 1.2 (3.0) |')
    profiler.cuda = False  # on CPU there are none to record
    assert not profiler.report()[-1].startswith('warning')


@pytest.mark.parametrize('tool, args, message', [
    (benchmark_det, ['--det-size', '0', '96'], 'argument --det-size'),
    (benchmark_det, ['--det-size', '64'], 'argument --det-size'),
    (benchmark_det, ['--det-size', '64', 'wide'], 'argument --det-size'),
    (benchmark_det, ['--det-models', 'resnet50'],
     'allowed: mambavision_t, mambavision_s, mambavision_b, mambavision_t_graphs, swin_t'),
    (benchmark_det, ['--det-models', 'swin_t', '--det-window', '8', '8', '56', '28'], 'argument --det-window'),
    (benchmark_det, ['--det-window', '8', 'none', '8', '8'], 'argument --det-window'),
    (benchmark_det, ['--det-rounds', '0'], 'argument --det-rounds: must be a positive int'),
    (benchmark_det, ['--det-optim', '--det-rounds', '2'], 'argument --det-rounds: not with --det-optim'),
    # classification options belong to benchmark.py; --det and --det-profile are the scripts' names now
    (benchmark_det, ['--channels-last'], 'unrecognized arguments: --channels-last'),
    (benchmark_det, ['--fuse-conv-bn'], 'unrecognized arguments: --fuse-conv-bn'),
    (benchmark_det, ['--det'], 'ambiguous option: --det could match --det-models'),
    (benchmark_det, ['--det-profile'], 'unrecognized arguments: --det-profile'),
    (profile_det, ['--det-optim'], 'unrecognized arguments: --det-optim'),  # it profiles the whole train step
    (profile_det, ['--det-rounds', '0'], 'argument --det-rounds: must be a positive int'),
    (profile_det, ['--det-models', 'resnet50'],
     'allowed: mambavision_t, mambavision_s, mambavision_b, mambavision_t_graphs, swin_t'),
])
def test_det_tools_bad_arguments_exit_with_a_message(tool, args, message, capsys):
    """Every error comes before any detector is built."""
    assert message in usage_error(tool.main, args, capsys)


@pytest.mark.slow
def test_profile_det_runs_on_cpu_and_prints_both_tables():
    """benchmark_det's table, then the profile of each row's step; profile_det.py runs benchmark_det's timing."""
    proc = run_tool('tools/analysis_tools/profile_det.py', '--det-models', 'mambavision_t@8,8,8,4', '--det-size', '64',
                    '96', '--warmup', '0', '--runs', '1', timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert 'fp32 (no CUDA' in out and 'batch 2 x 64x96' in out
    assert ('| model | backbone params (M) | step ms (median) | backbone fwd+bwd ms | optimiser step ms | rest ms | '
            'peak GiB | speed vs Swin-T (Swin-T ms / ms) |') in out
    row = next(line for line in out.splitlines() if line.startswith('| MambaVision-T (window 8,8,8,4) |'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    assert float(cells[1]) == pytest.approx(31.2, abs=0.05)
    step, backbone, optim, rest = (float(cell) for cell in cells[2:6])
    assert step > 0 and backbone > 0 and optim > 0
    assert rest == pytest.approx(step - backbone - optim, abs=1.5)  # rounding of the printed cells
    assert cells[6] == '-' and cells[7] == '-'  # CPU: no peak memory; no Swin-T row to compare with
    assert 'init_weights' not in out  # mmengine's per-parameter init report stays out of the table
    # the profile: every part of the detector was inside its range, on the host; no GPU here
    profiled = out.split('torch.profiler, 1 steps per model')[1]
    row = next(line for line in profiled.splitlines() if line.startswith('| MambaVision-T (window 8,8,8,4) |'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    wall, gpu, idle, syncs, blocked = (float(cell) for cell in cells[1:6])
    parts = [tuple(float(v) for v in cell.split(' / ')) for cell in cells[6:-2]]
    assert len(parts) == len(profile_det.DET_PHASES) and gpu == 0 and syncs == 0 and idle == wall
    scan_host, scan_gpu = (float(v) for v in cells[-2].split(' / '))  # CPU: the torch backend's Function
    assert 0 < scan_host < parts[1][0] + parts[5][0] and scan_gpu == 0  # within backbone + backward
    assert re.fullmatch(r'\d+\.\d \(\d+\.\d\)', cells[-1])
    assert all(host > 0 and device == 0 for host, device in parts[1:])  # backbone ... optimiser
    assert wall * 0.9 < sum(host for host, _ in parts) <= wall + 1  # the parts are most of the step, not more


@pytest.mark.slow
def test_benchmark_det_optim_times_both_constructors_on_cpu():
    proc = run_tool('tools/analysis_tools/benchmark_det.py', '--det-optim', '--det-models', 'mambavision_t@8,8,8,4',
                    '--warmup', '0', '--runs', '1', timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith('| MambaVision-T (window 8,8,8,4) |'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    tensors, groups, ms, default_groups, default_ms = int(cells[1]), int(cells[2]), float(cells[3]), \
        int(cells[4]), float(cells[5])
    assert tensors > 300 and groups <= 4 and default_groups == tensors  # one group per parameter by default
    assert ms > 0 and default_ms > 0
