"""The Triton scan kernels compiled for an H100 (sm_90) on CPU: register layout of the scans, resource use.

The scans over time are fast only when each thread holds consecutive steps (the scan runs inside the thread, then
across threads once). Triton lays a tile out by the widest aligned memory access it is tied to; rows of length
L % 16 != 0 (196, 49: MambaVision's classification windows) start unaligned, and without the kernels' layout hint
(``_tile_layout_hint`` in mmmambavision/ops/triton/kernels.py) their tiles got one step per thread in 32-step
stripes across warps: the backward ran at about a third of its speed. Compiling needs no GPU (Triton ships the
sm_90 toolchain); skipped without Triton.
"""
import os.path as osp

import pytest

pytest.importorskip('triton')
try:
    from triton.backends.compiler import GPUTarget  # noqa: F401
    from triton.compiler import ASTSource  # noqa: F401
except ImportError:  # pragma: no cover - a Triton without these compiler entry points
    pytest.skip('this Triton has no ASTSource/GPUTarget', allow_module_level=True)

import scan_kernel_stats as stats  # noqa: E402  (tools/analysis_tools, on pytest's pythonpath)
needs_cuobjdump = pytest.mark.skipif(not osp.exists(osp.join(stats.TOOLS, 'cuobjdump')),
                                     reason="this Triton wheel ships no cuobjdump")


@pytest.mark.parametrize('part', ['fwd', 'bwd'])
def test_state_kernel_scans_hold_consecutive_steps_per_thread_at_unaligned_lengths(part):
    kernel, config, constants, num_warps = stats.launch_constants(128, 160, 196, 8, part, {})  # the default
    ttgir = stats.compile_kernel(kernel, constants, num_warps).asm['ttgir']
    layouts = stats.scan_layouts(ttgir)
    # one scan (backward: two) per state in the loop body: UNROLL states per iteration (the default: 1)
    assert len(layouts) == (1 if part == 'fwd' else 2) * config.UNROLL, layouts
    for shape, per_thread in layouts:
        assert per_thread[-1] >= 4, f'scan over a {shape} tile with sizePerThread {per_thread}: steps striped'


@pytest.mark.slow  # compiles the backward twice: several seconds without Triton's cache
@needs_cuobjdump
def test_unroll_1_loops_over_the_states_at_run_time():
    """UNROLL=1 compiles one state's code instead of d_state copies: one loop body (two scans in the backward,
    against sixteen unrolled), fewer instructions, registers, special-function ops and shuffles, and the default
    backward fits in registers without spills. Only relations and the default's spill count are asserted:
    absolute counts move with the Triton version (the fully unrolled backward reaches the 255-register limit and
    spills with some)."""
    usage, scans = {}, {}
    for unroll in (8, 1):
        kernel, config, constants, num_warps = stats.launch_constants(128, 160, 196, 8, 'bwd', dict(UNROLL=unroll))
        assert config.UNROLL == unroll
        compiled = stats.compile_kernel(kernel, constants, num_warps)
        usage[unroll] = stats.resource_usage(compiled)
        scans[unroll] = len(stats.scan_layouts(compiled.asm['ttgir']))
    assert scans == {8: 16, 1: 2}
    for key in ('registers', 'instructions', 'mufu', 'shfl'):
        assert 0 < usage[1][key] < usage[8][key], (key, usage)
    assert usage[1]['spill'] == 0 and usage[1]['spill'] <= usage[8]['spill'], usage


@needs_cuobjdump
def test_tool_prints_a_row_per_kernel(capsys, monkeypatch):
    monkeypatch.setattr('sys.argv', ['scan_kernel_stats.py', '--shapes', '2x16x49', '--tuning', 'BLOCK_T=64'])
    stats.main()
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].split()[:3] == ['shape', 'part', 'config'] and len(rows) == 3
    for row, part in zip(rows[1:], ('fwd', 'bwd')):
        fields = row.split()
        assert fields[:2] == ['2x16x49', part] and 'BLOCK_T=64' in row
        assert 0 < int(fields[-11]) <= 255  # registers per thread
