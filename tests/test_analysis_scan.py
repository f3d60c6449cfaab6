"""tools/analysis_tools/benchmark_scan.py on CPU: the table, --host-time, the Triton sweep's candidates."""
import pytest

from analysis_tools_cli import run_tool


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


def test_benchmark_scan_sweep_tries_the_chunk_parallel_backward_on_long_sequences():
    pytest.importorskip('triton')
    import benchmark_scan
    long = benchmark_scan.tune_candidates((2, 160, 12544), 8, 'quick')
    split = [c for c in long if c['BWD_T']]
    assert {c['BWD_T'] for c in split} == {128, 256, 512, 1024}
    assert any(c['BWD_T'] == 0 for c in long)  # the sequential backward beside them
    short = benchmark_scan.tune_candidates((128, 320, 49), 8, 'quick')
    assert short and not any(c.get('BWD_T') for c in short)  # shorter than any backward chunk: nothing to split
