"""The Triton backend's launch path on CPU: the per-shape defaults, the public settings (``kernel_settings``) and
their validation, the launch-config cache, and the direct launches (``DirectLauncher``): the cache key, the
argument order handed to the compiled kernel's launcher, and the fall-backs. On a GPU,
tests/test_selective_scan_gpu.py compares the direct launches with JITFunction's own, bit for bit."""
import threading
import types

import pytest
import torch

pytest.importorskip('triton')
from mmmambavision.ops.triton import (DirectLauncher, KernelSettings, active_settings, direct_entry,  # noqa: E402
                                      kernel_launch_args, kernel_settings, kernels, launch_config)

KERNELS = [kernels.state_fwd_kernel, kernels.state_bwd_kernel, kernels.state_carry_kernel]


# --- defaults and settings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('shape,expected', [
    # classification windows: one 256-step chunk, one channel per program, the loop over states at run time
    ((128, 160, 196), dict(BLOCK_D=1, BLOCK_T=256, num_warps=1, UNROLL=1, BWD_T=0, bc='atomic', ckpt=256)),
    # short rows: 4 channels per program (64-step chunks), the loop over states unrolled
    ((128, 320, 49), dict(BLOCK_D=4, BLOCK_T=64, num_warps=1, UNROLL=8, BWD_T=0, bc='atomic', ckpt=64)),
    # detection windows: 1024-step chunks, the chunk-parallel backward (128-step chunks up to 4096 steps, 512 beyond)
    ((2, 160, 12544), dict(BLOCK_D=1, BLOCK_T=1024, num_warps=4, UNROLL=1, BWD_T=512, bwd_warps=4, ckpt=512)),
    ((2, 320, 3136), dict(BLOCK_D=1, BLOCK_T=1024, num_warps=4, UNROLL=1, BWD_T=128, bwd_warps=1, ckpt=128)),
    ((2, 4, 1), dict(BLOCK_D=1, BLOCK_T=16, num_warps=1, UNROLL=1, BWD_T=0, bc='atomic')),
    # one channel per group: plain stores of dB/dC
    ((2, 4, 49), dict(BLOCK_D=1, BLOCK_T=64, bc='store')),
], ids=['128x160x196', '128x320x49', '2x160x12544', '2x320x3136', '2x4x1', '2x4x49-grouped'])
def test_defaults_per_shape(shape, expected):
    batch, dim, length = shape
    cpg = 1 if expected.get('bc') == 'store' else dim
    config = launch_config(batch, dim, cpg, length, 8)
    assert {k: getattr(config, k) for k in expected} == expected
    assert config.BLOCK_N == 8 and config.N_STATES == 8 and config.num_stages is None


def test_kernel_launch_args_per_part():
    config = launch_config(2, 320, 320, 3136, 8)  # the chunk-parallel backward
    fwd = kernel_launch_args(config, 'fwd', 3136)
    assert fwd == dict(BLOCK_D=1, BLOCK_N=8, num_warps=4, BLOCK_T=1024, N_STATES=8, UNROLL=1, CKPT_T=128)
    bwd = kernel_launch_args(config, 'bwd', 3136)
    assert bwd == dict(BLOCK_D=1, BLOCK_N=8, num_warps=1, BLOCK_T=128, N_STATES=8, UNROLL=1, SPLIT=True, NC=32)
    assert kernel_launch_args(config, 'carry', 3136) == dict(N_STATES=8, BLOCK_D=1, BLOCK_T=128, num_warps=1)
    sequential = launch_config(128, 160, 160, 196, 8)
    assert kernel_launch_args(sequential, 'bwd', 196) == dict(BLOCK_D=1, BLOCK_N=8, num_warps=1, BLOCK_T=256,
                                                              N_STATES=8, UNROLL=1, SPLIT=False, NC=1)
    with pytest.raises(ValueError, match='BWD_T'):
        kernel_launch_args(sequential, 'carry', 196)
    with pytest.raises(ValueError, match="part='x'"):
        kernel_launch_args(sequential, 'x', 196)
    with kernel_settings(num_stages=2):
        assert kernel_launch_args(launch_config(128, 160, 160, 196, 8), 'fwd', 196)['num_stages'] == 2


def test_settings_apply_inside_the_block_nest_and_the_cache_follows_them():
    """The launch config is computed once per shape and settings; a change takes effect at the next call."""
    first = launch_config(2, 8, 8, 50, 8)
    assert launch_config(2, 8, 8, 50, 8) is first and first.BLOCK_T == 64 and active_settings() == KernelSettings()
    with kernel_settings(BLOCK_T=16, BLOCK_D=2) as settings:
        assert settings == active_settings() == KernelSettings(BLOCK_T=16, BLOCK_D=2)
        inner = launch_config(2, 8, 8, 50, 8)
        assert (inner.BLOCK_T, inner.BLOCK_D, inner.ckpt) == (16, 2, 16)
        with kernel_settings(BWD_T=8, BLOCK_D=None):  # adds to the enclosing block; None: back to the default
            nested = launch_config(2, 8, 8, 50, 8)
            assert (nested.BLOCK_T, nested.BLOCK_D, nested.BWD_T, nested.ckpt) == (16, first.BLOCK_D, 8, 8)
        assert launch_config(2, 8, 8, 50, 8) is inner
    assert launch_config(2, 8, 8, 50, 8) is first and active_settings() == KernelSettings()


def test_settings_are_local_to_the_thread():
    seen = []
    with kernel_settings(BLOCK_T=16):
        thread = threading.Thread(target=lambda: seen.append(launch_config(2, 8, 8, 50, 8).BLOCK_T))
        thread.start()
        thread.join()
        assert launch_config(2, 8, 8, 50, 8).BLOCK_T == 16
    assert seen == [64]


@pytest.mark.parametrize('key,values', [
    ('BLOCK_D', (3, 16)),  # a power of 2 dividing the channels per group (8)
    ('BLOCK_T', (24,)),  # a power of 2
    ('UNROLL', (9,)),  # states unrolled per iteration: 1 to d_state
    ('BWD_T', (3, 32)),  # a power of 2 up to BLOCK_T (16 here)
    ('bc', ('store',)),  # only with one program per group
])
def test_settings_that_do_not_fit_the_shape_are_refused_naming_the_setting(key, values):
    for bad in values:
        with kernel_settings(**dict(dict(BLOCK_T=16, BLOCK_D=2), **{key: bad})):
            with pytest.raises(ValueError, match=key):
                launch_config(2, 8, 8, 50, 8)


@pytest.mark.parametrize('overrides,match', [
    (dict(kernel='seq'), r"unknown kernel setting\(s\) \['kernel'\].*BLOCK_D"),
    (dict(SEGS=4, STEPS=2), r"\['SEGS', 'STEPS'\]"),
    (dict(UNROLL=0), 'UNROLL=0: a positive int'),
    (dict(num_warps=2.0), 'num_warps=2.0'),
    (dict(BWD_T=-1), 'BWD_T=-1'),
    (dict(bc='sum'), r"bc='sum': one of \('auto', 'store', 'atomic', 'partial'\)"),
])
def test_unknown_settings_and_bad_values_are_refused_at_once(overrides, match):
    with pytest.raises(ValueError, match=match):
        with kernel_settings(**overrides):
            pass
    assert active_settings() == KernelSettings()


# --- direct launches ---------------------------------------------------------------------------------------------

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
def fake_launcher():
    driver = types.SimpleNamespace(active=types.SimpleNamespace(get_current_device=lambda: 0,
                                                                 get_current_stream=lambda device: 1234))
    hooks = types.SimpleNamespace(runtime=types.SimpleNamespace(launch_enter_hook='enter', launch_exit_hook='exit'))
    return DirectLauncher(driver=driver, knobs=hooks, jit_type=FakeJIT)


@pytest.mark.parametrize('kernel', KERNELS, ids=lambda k: k.__name__)
def test_every_kernel_takes_its_runtime_arguments_first(kernel):
    """The direct launch appends the constexprs after the runtime arguments: every kernel must be written so."""
    flags = [p.is_constexpr for p in kernel.params]
    first = flags.index(True)
    assert not any(flags[:first]) and all(flags[first:]), [p.name for p in kernel.params]
    options = {p.name: i for i, p in enumerate(kernel.params) if p.is_constexpr}
    entry = direct_entry(kernel, FakeCompiled(), first, dict(options, num_warps=4))
    assert entry is not False
    assert entry[4] == tuple(options.values())  # the constexprs' values in signature order


def test_direct_entry_refuses_what_it_cannot_launch():
    params = [param('x_ptr', False), param('BLOCK', True), param('y_ptr', False)]
    assert direct_entry(FakeJIT(params), FakeCompiled(), 1, {'BLOCK': 4}) is False  # runtime after
    params = [param('x_ptr', False), param('BLOCK', True)]
    assert direct_entry(FakeJIT(params), object(), 1, {'BLOCK': 4}) is False  # no launcher
    assert direct_entry(FakeJIT(params), FakeCompiled(), 1, {}) is False  # a constexpr not given
    params.append(param('STEPS', True, default=8))
    assert direct_entry(FakeJIT(params), FakeCompiled(), 1, {'BLOCK': 4})[4] == (4, 8)  # default


def test_launch_goes_through_the_launcher_from_the_second_call_on(fake_launcher):
    launch = fake_launcher
    kernel = FakeJIT([param('x_ptr', False), param('n', False), param('BLOCK', True), param('FLAG', True)])
    x = torch.zeros(64)
    options = dict(BLOCK=16, FLAG=True, num_warps=2)
    launch(kernel, (3, 5), (x, 7), options)
    assert len(kernel.jit_calls) == 1 and kernel.compiled.launches == []  # compiled (here: looked up) and launched
    launch(kernel, (3, 5), (x, 7), options)
    assert len(kernel.jit_calls) == 1
    [call] = kernel.compiled.launches
    assert call[:6] == (3, 5, 1, 1234, 'function', 'metadata')
    assert call[6] == ('launch metadata', (3, 5), 1234, 4)
    assert call[7:9] == ('enter', 'exit')
    assert call[9] is x and call[10:] == (7, 16, True)
    # anything Triton specialises on is a new key, so a new kernel[grid] call: an unaligned pointer (4 bytes in),
    # another int, another constexpr, another dtype, another grid
    for args, opts, grid in (((x[1:], 7), options, (3, 5)), ((x, 8), options, (3, 5)),
                             ((x, 7), dict(options, BLOCK=32), (3, 5)), ((x.half(), 7), options, (3, 5)),
                             ((x, 7), options, (3, 5, 2))):
        calls = len(kernel.jit_calls)
        launch(kernel, grid, args, opts)
        assert len(kernel.jit_calls) == calls + 1
    # the same specialisation with other data: the launcher, with the new pointer
    y = torch.ones(64)
    launch(kernel, (3, 5), (y, 7), options)
    assert kernel.compiled.launches[-1][9] is y and len(kernel.compiled.launches) == 2
    assert len(launch.cache) == 6
    launch.clear()
    launch(kernel, (3, 5), (y, 7), options)
    assert len(kernel.compiled.launches) == 2  # compiled again first


def test_launch_skips_the_metadata_when_no_hook_is_registered():
    """Triton >= 3.5 keeps an empty HookChain as each launch hook (never None) and builds the launch metadata for it
    at every launch: with no hook registered the direct launch passes None for all three, else what Triton would."""
    class Chain:  # as triton.knobs.HookChain
        def __init__(self, calls):
            self.calls = calls

    driver = types.SimpleNamespace(active=types.SimpleNamespace(get_current_device=lambda: 0,
                                                                 get_current_stream=lambda device: 99))
    x = torch.zeros(8)
    for enter, leave, expect_metadata in ((None, None, False), (Chain([]), Chain([]), False),
                                          (Chain([print]), Chain([]), True), (None, Chain([print]), True),
                                          ('enter', None, True)):
        hooks = types.SimpleNamespace(runtime=types.SimpleNamespace(launch_enter_hook=enter, launch_exit_hook=leave))
        launch = DirectLauncher(driver=driver, knobs=hooks, jit_type=FakeJIT)
        kernel = FakeJIT([param('x_ptr', False), param('BLOCK', True)])
        for _ in range(2):
            launch(kernel, (2, ), (x, ), dict(BLOCK=4))
        [call] = kernel.compiled.launches
        if expect_metadata:
            assert call[6:9] == (('launch metadata', (2, ), 99, 2), enter, leave)
        else:
            assert call[6:9] == (None, None, None)
        assert call[9] is x and call[10:] == (4, )


def test_launch_falls_back_to_kernel_getitem(fake_launcher):
    kernel = FakeJIT([param('x_ptr', False), param('BLOCK', True), param('y_ptr', False)])  # not launchable
    x = torch.zeros(4)
    for _ in range(3):
        fake_launcher(kernel, (1, 1), (x,), dict(BLOCK=4))
    assert len(kernel.jit_calls) == 3 and kernel.compiled.launches == []
    kernel = FakeJIT([param('x_ptr', False), param('BLOCK', True)])
    fake_launcher.enabled = False  # switched off
    for _ in range(3):
        fake_launcher(kernel, (1, 1), (x,), dict(BLOCK=4))
    assert len(kernel.jit_calls) == 3 and kernel.compiled.launches == []
    no_triton = DirectLauncher(driver=None, knobs=None, jit_type=None)  # as without triton.knobs (Triton < 3.4)
    no_triton.jit_type = no_triton.driver = None
    for _ in range(2):
        no_triton(kernel, (1, 1), (x,), dict(BLOCK=4))
    assert len(kernel.jit_calls) == 5 and kernel.compiled.launches == []


def test_stand_ins_for_kernels_are_called_through_getitem(fake_launcher):
    calls = []

    class Spy:  # not a JITFunction (the interpreter's kernels and the tests' spies are not either)
        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((grid, args, kwargs))
    for _ in range(2):
        fake_launcher(Spy(), (2, 2), (1, 2), dict(BLOCK=8))
    assert calls == [((2, 2), (1, 2), dict(BLOCK=8))] * 2
