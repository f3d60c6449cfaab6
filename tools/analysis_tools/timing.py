"""The timing of the analysis tools (benchmark.py, benchmark_det.py, profile_det.py, benchmark_scan.py,
benchmark_new_shapes.py): synchronised timing, CUDA-graph timing, host time per call, and the argparse types of their
counts (--runs, --warmup, ...).

The tools import it as a sibling module (``tools/analysis_tools`` is the script's folder when one is run, and on
pytest's pythonpath)::

    from timing import graph_times, host_time, synced_times

    seconds = synced_times(lambda: model(x), runs=30, warmup=10, device=device)  # one per timed call
    seconds = graph_times(lambda: model(x), runs=30, warmup=10)                  # CUDA: replays of one captured call
    per_call = host_time(lambda: model(x), calls=100, warmup=10, device=device)  # the host's share, unsynchronised
"""
import argparse
import time

import torch


def synced_times(step, runs, warmup, device, after=None):
    """Seconds of each of ``runs`` calls of ``step()`` after ``warmup`` untimed ones, synchronised on CUDA.

    ``after``: called after every call, outside the timed region.
    """
    times = []
    for i in range(warmup + runs):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        if after is not None:
            after()
    return times


def host_time(step, calls, warmup, device):
    """Host seconds per call of ``step()``: the mean over ``calls`` calls issued back to back without
    synchronising, after ``warmup`` untimed ones.

    On CUDA the clock stops before the final synchronisation, so this is what the host spends per call (Python,
    dispatcher, allocations, launches) while the GPU works through the queue; it includes GPU time only where the
    launch queue fills (the GPU slower than the host). On CPU it is the whole time per call."""
    for _ in range(warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    elapsed = time.perf_counter() - start
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return elapsed / calls


def graph_times(step, runs, warmup, replays=10):
    """Seconds per call of ``step()`` replayed from a CUDA graph: ``runs`` timings, each the mean of ``replays``
    back-to-back replays (no Python, dispatcher or launch time: what the GPU itself takes).

    ``step`` is run ``warmup`` (at least 3) times on a side stream first, as CUDA graph capture requires (lazy
    initialisation, autotuning and allocations happen outside the capture), then captured once. Tensors it
    allocates come from the graph's private pool and are reused by every replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(max(3, warmup)):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(warmup):
        graph.replay()
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / replays)
    del graph
    return times


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (--runs, --batch-size, ...)."""
    return _int_at_least(text, 1, 'a positive int')


def non_negative_int(text: str) -> int:
    """argparse type of a count that may be 0 (--warmup)."""
    return _int_at_least(text, 0, 'an int >= 0')


def _int_at_least(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'invalid int value: {text!r}')
    if value < least:
        raise argparse.ArgumentTypeError(f'must be {what}, got {value}')
    return value
