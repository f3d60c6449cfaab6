"""tools/analysis_tools/benchmark.py (classification throughput: arguments, the timing on CPU) and timing.py."""
import time

import pytest
import torch

import benchmark  # tools/analysis_tools, on pytest's pythonpath
from analysis_tools_cli import usage_error
from timing import host_time


def test_benchmark_cudnn_benchmark_is_on_unless_switched_off():
    assert benchmark.parse_args([])[0].cudnn_benchmark is True
    assert benchmark.parse_args(['--no-cudnn-benchmark'])[0].cudnn_benchmark is False


@pytest.mark.parametrize('args, message', [
    # the detection train step has its own tools (benchmark_det.py, profile_det.py)
    (['--det-optim'], 'unrecognized arguments: --det-optim'),
    (['--det-profile'], 'unrecognized arguments: --det-profile'),
    (['--det-size', '64', '96'], 'unrecognized arguments: --det-size'),
    (['--det-rounds', '2'], 'unrecognized arguments: --det-rounds'),
    (['--det'], 'unrecognized arguments: --det'),
    (['--runs', '0'], 'argument --runs: must be a positive int, got 0'),
    (['--batch-size', '0'], 'argument --batch-size: must be a positive int, got 0'),
    (['--img-size', '-1'], 'argument --img-size: must be a positive int, got -1'),
    (['--warmup', '-1'], 'argument --warmup: must be an int >= 0, got -1'),
    (['--runs', 'x'], "argument --runs: invalid int value: 'x'"),
])
def test_benchmark_bad_arguments_exit_with_a_message(args, message, capsys):
    assert message in usage_error(benchmark.parse_args, args, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal without a CUDA device')
def test_benchmark_cuda_graph_needs_cuda(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--cuda-graph'])
    assert 'argument --cuda-graph: needs a CUDA device' in capsys.readouterr().err


def test_measure_gives_images_per_second_on_cpu():
    model = torch.nn.Conv2d(3, 4, 3).eval()
    assert benchmark.measure(model, torch.randn(2, 3, 16, 16), runs=2, warmup=1, device=torch.device('cpu')) > 0


def test_host_time_is_the_mean_time_per_call_without_synchronising():
    calls = []

    def step():
        calls.append(time.perf_counter())
        time.sleep(0.005)
    seconds = host_time(step, calls=4, warmup=2, device=torch.device('cpu'))
    assert len(calls) == 6  # warm-up calls run, untimed
    assert 0.005 <= seconds < 0.5
