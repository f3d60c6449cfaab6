"""The timing loop of the benchmark tools (``tools/benchmark.py``, ``tools/benchmark_scan.py``)."""
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
