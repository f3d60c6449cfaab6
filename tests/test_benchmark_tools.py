"""tools/get_flops.py (selective scan and window attention counted, against hand counts) and tools/benchmark.py
--det (the detection train-step table on CPU, argument errors). CPU only, about a minute in all."""
import os
import os.path as osp
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip('mmdet')

from mmmambavision import MambaVision  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


def run_tool(*args, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


import benchmark  # noqa: E402  (tools/analysis_tools, on pytest's pythonpath)
import get_flops  # noqa: E402


def hand_scan(windows: int, dim: int, tokens: int, d_state: int = 8) -> int:
    """One mixer call, mamba's convention: 9*B*D*L*N + B*D*L, D = dim / 2 channels scanned, B = windows."""
    channels = dim // 2
    return 9 * windows * channels * tokens * d_state + windows * channels * tokens


# MambaVision-T: stage 3 (dim 320, depth 8) has 4 mixer blocks then 4 attention blocks, stage 4 (dim 640, depth 4)
# 2 + 2. The scan and the attention run on the padded windows: B counts windows, L is the window's token count.
CASES = {
    # 64x64, classification windows (14, 7): stage 3 is 4x4 -> one 14x14 window, stage 4 2x2 -> one 7x7 window
    'square-default-windows': ((64, 64), (8, 8, 14, 7), dict(s3=(1, 196), s4=(1, 49))),
    # 64x96, windows (4, 2): stage 3 is 4x6 -> padded 4x8, two 4x4 windows; stage 4 2x3 -> 2x4, two 2x2 windows
    'two-windows': ((64, 96), (8, 8, 4, 2), dict(s3=(2, 16), s4=(2, 4))),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_get_flops_counts_the_scan_and_attention_as_by_hand(case):
    (height, width), window, shapes = CASES[case]
    torch.manual_seed(0)
    model = MambaVision('tiny', out_indices=(3, ), window_size=window).eval()
    result = get_flops.count(model, model, torch.randn(1, 3, height, width))
    (w3, l3), (w4, l4) = shapes['s3'], shapes['s4']
    scan3, scan4 = 4 * hand_scan(w3, 320, l3), 2 * hand_scan(w4, 640, l4)
    assert result['scan'] == scan3 + scan4
    assert sorted(call[1:] for call in result['scan_calls']) == sorted(
        [(w3, 160, l3, 8)] * 4 + [(w4, 320, l4, 8)] * 2)
    parts = {name: scan for name, _, scan in result['parts']}
    assert parts['levels.2'] == scan3 and parts['levels.3'] == scan4 and parts['levels.0'] == 0
    # q.k^T and attn.v: windows * L^2 * dim each (heads x head_dim = dim)
    assert result['attention'] == 4 * 2 * w3 * l3 ** 2 * 320 + 2 * 2 * w4 * l4 ** 2 * 640
    assert result['total'] == result['mmengine'] + result['scan']
    assert result['mmengine'] > 50 * result['scan'] > 0


def test_scan_formula_is_mambas_convention():
    assert get_flops.scan_flops(2, 3, 5, 7) == 9 * 2 * 3 * 5 * 7 + 2 * 3 * 5
    assert get_flops.scan_flops(2, 3, 5, 7, with_d=False) == 9 * 2 * 3 * 5 * 7


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
def test_get_flops_bad_arguments_exit_with_a_message(args, argument):
    proc = run_tool('tools/analysis_tools/get_flops.py', *args)
    assert proc.returncode != 0
    assert argument in proc.stderr


def test_benchmark_det_model_specs():
    assert benchmark.parse_det_model('mambavision_s') == ('mambavision_s', None)
    assert benchmark.parse_det_model('mambavision_t@8,8,56,28') == ('mambavision_t', (8, 8, 56, 28))
    assert benchmark.parse_det_model('mambavision_b@8,8,none,None') == ('mambavision_b', (8, 8, None, None))
    for bad in ('swin_s', 'swin_t@8,8,8,8', 'mambavision_t@8,8,56', 'mambavision_t@8,8,0,4',
                'mambavision_t@none,8,8,8', 'mambavision_t@8,8,x,8'):
        with pytest.raises(ValueError):
            benchmark.parse_det_model(bad)


def test_benchmark_det_rounds_default_and_errors():
    assert benchmark.DET_DEFAULTS['cuda']['rounds'] > 1 and benchmark.DET_DEFAULTS['cpu']['rounds'] == 1
    assert benchmark.parse_args(['--det', '--det-rounds', '4'])[0].det_rounds == 4


def test_benchmark_cudnn_benchmark_is_on_unless_switched_off():
    assert benchmark.parse_args([])[0].cudnn_benchmark is True
    assert benchmark.parse_args(['--no-cudnn-benchmark'])[0].cudnn_benchmark is False


def test_benchmark_det_table_gives_no_ratio_to_rows_with_skipped_optimiser_steps():
    rows = [('swin_t', 'Swin-T', 27.5, 300.0, 5.6, 0, 80.0, 50.0),
            ('mambavision_t', 'T', 31.2, 200.0, 5.0, 10, 60.0, 6.0),
            ('mambavision_t', 'T whole', 31.2, 150.0, 4.0, 0, 40.0, 6.5),
            ('mambavision_b', 'B', None, None, 'OOM', 0, None, None)]
    lines = benchmark.det_table(rows, ['n1'])
    assert lines[0].startswith('| model | backbone params (M) | step ms (median) | backbone fwd+bwd ms | ')
    assert lines[2] == '| Swin-T | 27.5 | 300 | 80 | 50 | 170 | 5.60 | 1.00x |'
    assert lines[3] == '| T | 31.2 | 200 | 60 | 6 | 134 | 5.00 | n/c (10 steps skipped) |'
    assert lines[4] == '| T whole | 31.2 | 150 | 40 | 6 | 104 | 4.00 | 2.00x |'  # rest: 150 - 40 - 6.5 = 103.5
    assert lines[5] == '| B | - | out of memory | - | - | - | - | - |'
    assert lines[6] == 'note: n1'
    assert lines[7].startswith("floor: Swin-T's step less its backbone forward+backward is 220 ms, 0.73x its step")
    # a Swin-T row that skipped steps is no reference
    rows[0] = ('swin_t', 'Swin-T', 27.5, 300.0, 5.6, 3, 80.0, 50.0)
    assert benchmark.det_table(rows, [])[4].endswith('| - |')
    assert not any(line.startswith('floor:') for line in benchmark.det_table(rows, []))


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
    result = benchmark.interleave_det([(d, Wrapper(d)) for d in rows], {'batch': 1}, runs=2, rounds=3,
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
        assert benchmark.settle_loss_scaler(scaler.step, scaler, limit=60) == calls
        assert scaler.overflows == 0
    scaler = Scaler(100)
    assert benchmark.settle_loss_scaler(scaler.step, scaler, limit=10) == 10 and scaler.overflows == 90


def test_benchmark_det_runs_on_cpu_and_prints_the_table():
    proc = run_tool('tools/analysis_tools/benchmark.py', '--det', '--det-models', 'mambavision_t@8,8,8,4', '--det-size', '64', '96',
                    '--warmup', '0', '--runs', '1', '--det-profile', timeout=900)
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
    # --det-profile: every part of the detector was inside its range, on the host; no GPU here
    profiled = out.split('torch.profiler, 1 steps per model')[1]
    row = next(line for line in profiled.splitlines() if line.startswith('| MambaVision-T (window 8,8,8,4) |'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    wall, gpu, idle, syncs, blocked = (float(cell) for cell in cells[1:6])
    parts = [tuple(float(v) for v in cell.split(' / ')) for cell in cells[6:]]
    assert len(parts) == len(benchmark.DET_PHASES) and gpu == 0 and syncs == 0 and idle == wall
    assert all(host > 0 and device == 0 for host, device in parts[1:])  # backbone ... optimiser
    assert wall * 0.9 < sum(host for host, _ in parts) <= wall + 1  # the parts are most of the step, not more


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
    ]
    phases, gpu, blocked, syncs = benchmark.attribute_det_events(events, steps=2)
    assert phases['backbone'] == (5.0, 3.0) and phases['backward'] == (15.0, 4.0)
    assert phases['neck'] == (0, 0) and set(benchmark.DET_PHASES) <= set(phases)
    assert gpu == 7.5 and blocked == 4.0 and syncs == 1.0


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
                assert benchmark.kineto_activity(old) == event.activity_type(), event.name()
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
        assert benchmark.kineto_activity(event) == expected, event.name()


def test_benchmark_det_optim_times_both_constructors_on_cpu():
    proc = run_tool('tools/analysis_tools/benchmark.py', '--det', '--det-optim', '--det-models', 'mambavision_t@8,8,8,4',
                    '--warmup', '0', '--runs', '1', timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith('| MambaVision-T (window 8,8,8,4) |'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    tensors, groups, ms, default_groups, default_ms = int(cells[1]), int(cells[2]), float(cells[3]), \
        int(cells[4]), float(cells[5])
    assert tensors > 300 and groups <= 4 and default_groups == tensors  # one group per parameter by default
    assert ms > 0 and default_ms > 0


@pytest.mark.parametrize('args, message', [
    (['--det-optim'], 'argument --det-optim: only with --det'),
    (['--det-profile'], 'argument --det-profile: only with --det'),
    (['--det', '--det-optim', '--det-profile'], 'argument --det-profile: not with --det-optim'),
    (['--det', '--det-size', '0', '96'], 'argument --det-size'),
    (['--det', '--det-size', '64'], 'argument --det-size'),
    (['--det', '--det-size', '64', 'wide'], 'argument --det-size'),
    (['--det', '--det-models', 'resnet50'], 'allowed: mambavision_t, mambavision_s, mambavision_b, swin_t'),
    (['--det', '--det-models', 'swin_t', '--det-window', '8', '8', '56', '28'], 'argument --det-window'),
    (['--det-size', '64', '96'], 'only with --det'),
    (['--det', '--channels-last'], 'classification only'),
    (['--det', '--fuse-conv-bn'], 'argument --fuse-conv-bn: classification only'),
    (['--det', '--det-window', '8', 'none', '8', '8'], 'argument --det-window'),
    (['--det', '--det-rounds', '0'], 'argument --det-rounds: must be a positive int'),
    (['--det-rounds', '2'], 'argument --det-rounds: only with --det'),
    (['--det', '--det-optim', '--det-rounds', '2'], 'argument --det-rounds: not with --det-optim'),
])
def test_benchmark_bad_arguments_exit_with_a_message(args, message):
    proc = run_tool('tools/analysis_tools/benchmark.py', *args)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_benchmark_scan_cpu_table_and_cuda_graph_needs_cuda():
    """tools/benchmark_scan.py on CPU: the table with the torch backend and its float64 errors; --cuda-graph
    without a CUDA device is refused, naming the argument."""
    result = run_tool('tools/analysis_tools/benchmark_scan.py', '--device', 'cpu', '--shapes', '1x8x40', '--no-ref-loop',
                      '--repeats', '1')
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith('torch ')]
    assert len(rows) == 1 and rows[0][1] == '1×8×40' and rows[0][2] == 'fp32'
    err_y, err_grad = float(rows[0][6]), float(rows[0][7])
    assert 0 <= err_y < 1e-5 and 0 <= err_grad < 1e-5  # fp32 against float64
    refused = run_tool('tools/analysis_tools/benchmark_scan.py', '--device', 'cpu', '--cuda-graph')
    assert refused.returncode == 2 and '--cuda-graph' in refused.stderr and '--device cuda' in refused.stderr


def test_benchmark_scan_host_time_column():
    """--host-time adds the host time per forward+backward call (on CPU: the whole call) as the last column."""
    result = run_tool('tools/analysis_tools/benchmark_scan.py', '--device', 'cpu', '--shapes', '1x8x40', '--no-ref-loop',
                      '--repeats', '1', '--no-error', '--host-time')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'host f+b us' in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith('torch ')]
    assert len(rows) == 1 and float(rows[0][-1]) > 0


def test_host_time_is_the_mean_time_per_call_without_synchronising():
    from timing import host_time
    calls = []

    def step():
        calls.append(time.perf_counter())
        time.sleep(0.005)
    seconds = host_time(step, calls=4, warmup=2, device=torch.device('cpu'))
    assert len(calls) == 6  # warm-up calls run, untimed
    assert 0.005 <= seconds < 0.5


def test_benchmark_scan_sweep_tries_the_chunk_parallel_backward_on_long_sequences():
    pytest.importorskip('triton')
    import benchmark_scan
    long = benchmark_scan.tune_candidates((2, 160, 12544), 8, 'quick')
    split = [c for c in long if c['kernel'] == 'state' and c['BWD_T']]
    assert {c['BWD_T'] for c in split} == {128, 256, 512, 1024}
    assert any(c['kernel'] == 'state' and c['BWD_T'] == 0 for c in long)  # the sequential backward beside them
    short = benchmark_scan.tune_candidates((128, 320, 49), 8, 'quick')
    assert short and not any(c.get('BWD_T') for c in short)  # shorter than any backward chunk: nothing to split
