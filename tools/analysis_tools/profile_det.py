"""Where the Cascade Mask R-CNN training step's time goes: benchmark_det.py's table, then every row's step under
torch.profiler (up to 5 steps right after its timed ones): GPU busy and idle time, the host's synchronising CUDA
calls, and the host and GPU ms of each part of the detector (preprocessing, backbone, neck, RPN head, RoI head,
backward, optimiser). The detectors, the batch and the timing are benchmark_det.py's, and so are the arguments
(all but --det-optim).

    python tools/analysis_tools/profile_det.py --det-models swin_t mambavision_t
    python tools/analysis_tools/profile_det.py --det-models swin_t mambavision_t@8,8,none,none mambavision_t
    python tools/analysis_tools/profile_det.py --det-models mambavision_t@8,8,8,4 --det-size 64 96 --warmup 0 --runs 1

A GPU kernel counts for the part during whose host range it was launched (kineto's correlation ids), so the
backward's kernels, launched from autograd's thread, count for the backward. Two more columns: the selective scan's
share (host time inside its autograd Function's forward and backward - part of the backbone's and the backward's
time - and the GPU time of the kernels launched there), and Python's garbage collector (ms and collections per step,
from ``gc.callbacks``): a step that allocates many Python objects pays for collections of everything alive.
"""
import gc
import statistics
import time
from typing import List, Optional, Sequence

import torch

import benchmark_det
from timing import synced_times

PROFILE_STEPS = 5  # most profiled steps per row (fewer when --runs is lower)
DET_PHASES = ('preprocess', 'backbone', 'neck', 'rpn_head', 'roi_head', 'backward', 'optimiser')
# what the step's own code blocks in (.item(), nonzero, copies to the host); not cudaDeviceSynchronize, which is
# torch.cuda.synchronize: the harness's between steps (synced_times), not the detector's
SYNC_CALLS = ('cudaStreamSynchronize', 'cudaEventSynchronize', 'cudaMemcpy')
GPU_WORK = ('kernel', 'gpu_memcpy', 'gpu_memset')  # kineto activity types run by the GPU
# the selective scan's autograd Functions, as the profiler names their forward and backward ranges
SCAN_FUNCTIONS = ('CudaSelectiveScan', 'TritonSelectiveScan', 'ChunkedSelectiveScan')
SCAN_RANGES = SCAN_FUNCTIONS + tuple(f'{name}Backward' for name in SCAN_FUNCTIONS)
LAUNCHES = ('cuda_runtime', 'cuda_driver')  # host calls into CUDA (cudaLaunchKernel, cuLaunchKernelEx, ...)


def attribute_det_events(events, steps: int):
    """Per-step totals of a profiled run from its events, (name, kineto activity type, start_ns, duration_ns,
    correlation id).

    Phases are the host ranges named ``det::<phase>``; a GPU kernel/copy counts for the phase during whose host range
    it was launched (the CPU runtime call with the same correlation id; its own start where none is recorded), as
    the backward's kernels are launched from autograd's thread while the main thread waits inside its range.
    Other events (operators, GPU-side annotations) are not counted, but for the selective scan: ``phases['scan']``
    is the host time inside its autograd Functions' forward and backward ranges (operators named in SCAN_RANGES,
    within the backbone's and the backward's time) and the GPU time of what was launched inside them. Returns
    {phase: (host ms, GPU ms)}, GPU ms of all kernels and copies, host ms blocked in synchronising CUDA calls (those
    of SYNC_CALLS) and how many there were, each per step."""
    launches, ranges, gpu, scans = {}, [], [], []
    blocked_ns, syncs = 0, 0
    for name, activity, start, duration, correlation in events:
        if activity in GPU_WORK:
            gpu.append((start, duration, correlation))
        elif activity == 'user_annotation' and name.startswith('det::'):
            ranges.append((start, start + duration, name[5:]))
        elif activity == 'cpu_op' and name in SCAN_RANGES:
            scans.append((start, start + duration))
        elif activity in LAUNCHES:
            launches.setdefault(correlation, start)
            if name in SYNC_CALLS:
                blocked_ns += duration
                syncs += 1
    phases = {phase: [0, 0] for phase in DET_PHASES}
    for start, end, phase in ranges:
        phases.setdefault(phase, [0, 0])[0] += end - start
    phases['scan'] = [sum(end - start for start, end in scans), 0]
    gpu_ns = 0
    for start, duration, correlation in gpu:
        gpu_ns += duration
        launched = launches.get(correlation, start)
        phase = next((p for s, e, p in ranges if s <= launched < e), None)
        if phase is not None:
            phases[phase][1] += duration
        if any(s <= launched < e for s, e in scans):
            phases['scan'][1] += duration
    per_step = 1e6 * steps
    return ({phase: (host / per_step, device / per_step) for phase, (host, device) in phases.items()},
            gpu_ns / per_step, blocked_ns / per_step, syncs / steps)


def _phase_ranges(model, optim_wrapper):
    """Wraps the detector's parts and the optimiser wrapper's backward/step in ``det::<phase>`` profiler ranges;
    returns a function that removes them."""
    from torch.profiler import record_function

    def ranged(method, label):
        def call(*args, **kwargs):
            with record_function(f'det::{label}'):
                return method(*args, **kwargs)
        return call

    # what mmdet's TwoStageDetector.loss calls (the heads through their loss methods, not forward), and the
    # optimiser wrapper's backward and step (update_params); instance attributes over the class's methods
    wrapped = [(model.data_preprocessor, 'forward', 'preprocess'), (model.backbone, 'forward', 'backbone'),
               (model.neck, 'forward', 'neck'), (model.rpn_head, 'loss_and_predict', 'rpn_head'),
               (model.roi_head, 'loss', 'roi_head'), (optim_wrapper, 'backward', 'backward'),
               (optim_wrapper, 'step', 'optimiser')]
    for owner, method, label in wrapped:
        setattr(owner, method, ranged(getattr(owner, method), label))

    def remove():
        for owner, method, _ in wrapped:
            delattr(owner, method)
    return remove


def kineto_activity(event) -> str:
    """kineto's activity type of a profiler event ('kernel', 'gpu_memcpy', 'cuda_runtime', 'user_annotation', ...).
    torch >= 2.12 names it (``_KinetoEvent.activity_type``); older torch (e.g. 2.11) does not, so
    it is rebuilt from what they expose: on the GPU, annotations (``is_user_annotation``; where that is missing too,
    the det:: ranges and events without a correlation id), copies ('Memcpy ...'), memsets ('Memset ...') and
    kernels; on the host, annotations, CUDA runtime (cuda*) and driver (cu*) calls, and operators."""
    if hasattr(event, 'activity_type'):
        return event.activity_type()
    name, on_gpu = event.name(), event.device_type() == torch.autograd.DeviceType.CUDA
    if hasattr(event, 'is_user_annotation'):
        annotation = event.is_user_annotation()
    else:
        annotation = name.startswith('det::') or (on_gpu and not event.correlation_id())
    if on_gpu:
        return ('gpu_user_annotation' if annotation else 'gpu_memcpy' if name.startswith('Memcpy') else
                'gpu_memset' if name.startswith('Memset') else 'kernel')
    return ('user_annotation' if annotation else 'cuda_runtime' if name.startswith('cuda') else
            'cuda_driver' if name.startswith('cu') else 'cpu_op')


class GcClock:
    """Time and count Python's garbage collections while inside the block (``gc.callbacks``): ``ms`` and
    ``collections`` (per generation) after it."""

    def __init__(self):
        self.ms, self.collections, self._start = 0.0, [0, 0, 0], None

    def __call__(self, phase: str, info: dict) -> None:
        if phase == 'start':
            self._start = time.perf_counter()
        elif self._start is not None:
            self.ms += 1000 * (time.perf_counter() - self._start)
            generation = info.get('generation', 0)
            if 0 <= generation < len(self.collections):
                self.collections[generation] += 1
            self._start = None

    def __enter__(self):
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)


def profile_det(model, optim_wrapper, data: dict, steps: int, device: torch.device):
    """``attribute_det_events`` of ``steps`` train steps under torch.profiler (after the timed ones: warm), the
    wall ms per step of the profiled steps (synchronised like the timed ones), and the garbage collector's ms and
    collections per step during them."""
    from torch.profiler import ProfilerActivity, profile

    remove = _phase_ranges(model, optim_wrapper)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    try:
        with profile(activities=activities) as prof, GcClock() as collector:
            times = synced_times(lambda: model.train_step(data, optim_wrapper), steps, 0, device)
        wall = 1000 * statistics.mean(times)
    finally:
        remove()
    events = [(e.name(), kineto_activity(e), e.start_ns(), e.duration_ns(), e.correlation_id())
              for e in prof.profiler.kineto_results.events()]
    return attribute_det_events(events, steps) + (wall, (collector.ms / steps, sum(collector.collections) / steps))


def det_profile_table(profiles) -> List[str]:
    """The profile table's lines: profiles is [(label, (phases, gpu ms, blocked ms, syncs, wall ms[, (gc ms,
    gc collections)]))]; phases may hold 'scan' (the selective scan's host / GPU ms)."""
    head = ' | '.join(f'{phase} host / GPU ms' for phase in DET_PHASES)
    lines = [f'| model | step ms (profiled) | GPU busy ms | GPU idle ms | syncs / step | host blocked in syncs ms | '
             f'{head} | selective scan host / GPU ms | GC ms (collections) |',
             '|---|' + '---:|' * (7 + len(DET_PHASES))]
    for label, (phases, gpu, blocked, syncs, wall, *rest) in profiles:
        cells = ' | '.join(f'{phases[p][0]:.1f} / {phases[p][1]:.1f}' for p in DET_PHASES)
        scan = f'{phases["scan"][0]:.1f} / {phases["scan"][1]:.1f}' if 'scan' in phases else '-'
        collector = f'{rest[0][0]:.1f} ({rest[0][1]:.1f})' if rest else '-'
        lines.append(f'| {label} | {wall:.0f} | {gpu:.0f} | {max(wall - gpu, 0):.0f} | {syncs:.0f} | {blocked:.0f} | '
                     f'{cells} | {scan} | {collector} |')
    return lines + ['GPU busy: kernels and copies summed over the step; GPU idle = step - busy (where the GPU waits '
                    'for the host). host: time inside the part on the host (the backward\'s includes the GPU work '
                    'it waits for); GPU: kernels launched inside it. preprocess..roi_head: forward + losses. '
                    'selective scan: inside its autograd Function\'s forward and backward (part of backbone and '
                    'backward). GC: Python\'s garbage collections during the profiled steps.']


class RowProfiler:
    """benchmark_det.run_det's ``after_row``: profiles each row's step right after its timed steps."""

    def __init__(self):
        self.profiles, self.steps, self.cuda = [], 0, False

    def __call__(self, label, model, optim_wrapper, data: dict, runs: int, device: torch.device) -> None:
        self.steps, self.cuda = min(runs, PROFILE_STEPS), device.type == 'cuda'
        self.profiles.append((label, profile_det(model, optim_wrapper, data, self.steps, device)))

    def report(self) -> List[str]:
        lines = [f'\ntorch.profiler, {self.steps} steps per model after the timed ones, per step:']
        lines += det_profile_table(self.profiles)
        if self.cuda and not any(profile[1] for _, profile in self.profiles):
            lines.append('warning: the profiler recorded no GPU kernels (CUPTI unavailable to torch.profiler?): the '
                         'GPU columns are empty, not zero')
        return lines


def main(argv: Optional[Sequence[str]] = None) -> None:
    args, parser = benchmark_det.parse_args(argv, doc=__doc__, optim=False)
    profiler = RowProfiler()
    benchmark_det.run_det(args, parser, after_row=profiler)
    if profiler.profiles:
        print('\n'.join(profiler.report()))


if __name__ == '__main__':
    main()
