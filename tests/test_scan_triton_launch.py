"""The Triton backend's direct launches (``scan_triton._launch``), on CPU: the cache key, the argument order handed
to the compiled kernel's launcher, and the fall-backs. On a GPU, tests/test_selective_scan_gpu.py compares the
direct launches with JITFunction's own, bit for bit."""
import types

import pytest
import torch

pytest.importorskip('triton')
from mmmambavision.ops import scan_triton  # noqa: E402

KERNELS = [getattr(scan_triton, f'_{family}_{part}_kernel') for family in scan_triton.KERNELS
           for part in ('fwd', 'bwd')] + [scan_triton._state_carry_kernel]


def param(name, constexpr, default=None):
    return types.SimpleNamespace(name=name, is_constexpr=constexpr, has_default=default is not None,
                                 default=default)


class FakeCompiled:
    """Stands in for Triton's CompiledKernel: records what its launcher gets."""

    def __init__(self):
        self.function, self.packed_metadata, self.launches = 'function', 'metadata', []

    def run(self, *args):
        self.launches.append(args)

    def launch_metadata(self, grid, stream, *values):
        return ('launch metadata', grid, stream, len(values))


class FakeJIT:
    """Stands in for a JITFunction: ``kernel[grid](...)`` records the call and returns the compiled kernel."""

    def __init__(self, params):
        self.params, self.compiled, self.jit_calls = params, FakeCompiled(), []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.jit_calls.append((grid, args, kwargs))
            return self.compiled
        return launch


@pytest.fixture
def fake_triton(monkeypatch):
    driver = types.SimpleNamespace(active=types.SimpleNamespace(get_current_device=lambda: 0,
                                                                 get_current_stream=lambda device: 1234))
    hooks = types.SimpleNamespace(runtime=types.SimpleNamespace(launch_enter_hook='enter', launch_exit_hook='exit'))
    monkeypatch.setattr(scan_triton, '_driver', driver)
    monkeypatch.setattr(scan_triton, '_knobs', hooks)
    monkeypatch.setattr(scan_triton, '_JITFunction', FakeJIT)
    monkeypatch.setattr(scan_triton, 'DIRECT_LAUNCH', True)
    monkeypatch.setattr(scan_triton, '_COMPILED', {})


@pytest.mark.parametrize('kernel', KERNELS, ids=lambda k: k.__name__)
def test_every_kernel_takes_its_runtime_arguments_first(kernel):
    """The direct launch appends the constexprs after the runtime arguments: every kernel must be written so."""
    flags = [p.is_constexpr for p in kernel.params]
    first = flags.index(True)
    assert not any(flags[:first]) and all(flags[first:]), [p.name for p in kernel.params]
    options = {p.name: i for i, p in enumerate(kernel.params) if p.is_constexpr}
    entry = scan_triton._direct_entry(kernel, FakeCompiled(), first, dict(options, num_warps=4))
    assert entry is not False
    assert entry[4] == tuple(options.values())  # the constexprs' values in signature order


def test_direct_entry_refuses_what_it_cannot_launch():
    params = [param('x_ptr', False), param('BLOCK', True), param('y_ptr', False)]
    assert scan_triton._direct_entry(FakeJIT(params), FakeCompiled(), 1, {'BLOCK': 4}) is False  # runtime after
    params = [param('x_ptr', False), param('BLOCK', True)]
    assert scan_triton._direct_entry(FakeJIT(params), object(), 1, {'BLOCK': 4}) is False  # no launcher
    assert scan_triton._direct_entry(FakeJIT(params), FakeCompiled(), 1, {}) is False  # a constexpr not given
    params.append(param('STEPS', True, default=8))
    assert scan_triton._direct_entry(FakeJIT(params), FakeCompiled(), 1, {'BLOCK': 4})[4] == (4, 8)  # default


def test_launch_goes_through_the_launcher_from_the_second_call_on(fake_triton):
    kernel = FakeJIT([param('x_ptr', False), param('n', False), param('BLOCK', True), param('FLAG', True)])
    x = torch.zeros(64)
    options = dict(BLOCK=16, FLAG=True, num_warps=2)
    scan_triton._launch(kernel, (3, 5), (x, 7), options)
    assert len(kernel.jit_calls) == 1 and kernel.compiled.launches == []  # compiled (here: looked up) and launched
    scan_triton._launch(kernel, (3, 5), (x, 7), options)
    assert len(kernel.jit_calls) == 1
    [launch] = kernel.compiled.launches
    assert launch[:6] == (3, 5, 1, 1234, 'function', 'metadata')
    assert launch[6] == ('launch metadata', (3, 5), 1234, 4)
    assert launch[7:9] == ('enter', 'exit')
    assert launch[9] is x and launch[10:] == (7, 16, True)
    # anything Triton specialises on is a new key, so a new kernel[grid] call: an unaligned pointer (4 bytes in),
    # another int, another constexpr, another dtype, another grid
    for args, opts, grid in (((x[1:], 7), options, (3, 5)), ((x, 8), options, (3, 5)),
                             ((x, 7), dict(options, BLOCK=32), (3, 5)), ((x.half(), 7), options, (3, 5)),
                             ((x, 7), options, (3, 5, 2))):
        calls = len(kernel.jit_calls)
        scan_triton._launch(kernel, grid, args, opts)
        assert len(kernel.jit_calls) == calls + 1
    # the same specialisation with other data: the launcher, with the new pointer
    y = torch.ones(64)
    scan_triton._launch(kernel, (3, 5), (y, 7), options)
    assert kernel.compiled.launches[-1][9] is y and len(kernel.compiled.launches) == 2


def test_launch_falls_back_to_kernel_getitem(fake_triton, monkeypatch):
    kernel = FakeJIT([param('x_ptr', False), param('BLOCK', True), param('y_ptr', False)])  # not launchable
    x = torch.zeros(4)
    for _ in range(3):
        scan_triton._launch(kernel, (1, 1), (x,), dict(BLOCK=4))
    assert len(kernel.jit_calls) == 3 and kernel.compiled.launches == []
    kernel = FakeJIT([param('x_ptr', False), param('BLOCK', True)])
    monkeypatch.setattr(scan_triton, 'DIRECT_LAUNCH', False)  # switched off
    for _ in range(3):
        scan_triton._launch(kernel, (1, 1), (x,), dict(BLOCK=4))
    assert len(kernel.jit_calls) == 3 and kernel.compiled.launches == []


def test_stand_ins_for_kernels_are_called_through_getitem(fake_triton):
    calls = []

    class Spy:  # not a JITFunction (the interpreter's kernels and the tests' spies are not either)
        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((grid, args, kwargs))
    for _ in range(2):
        scan_triton._launch(Spy(), (2, 2), (1, 2), dict(BLOCK=8))
    assert calls == [((2, 2), (1, 2), dict(BLOCK=8))] * 2
