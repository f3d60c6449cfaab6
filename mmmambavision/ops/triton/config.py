"""Kernel settings: the per-shape defaults, the public overrides, and the launch config that results.

``launch_config(batch, dim, channels_per_group, length, dstate)`` returns the ``LaunchConfig`` a call at that
shape launches with: the defaults below, with the settings of the innermost ``kernel_settings(...)`` block on
top. ``kernel_launch_args(config, part, length)`` turns it into one kernel's constexprs and launch options.

Settings (``KernelSettings``; None: the per-shape default):

=========== ======================================================================================================
BLOCK_D     channels per program, a power of 2 dividing the channels per group
BLOCK_T     steps per chunk of the forward (and of the sequential backward), a power of 2
BWD_T       steps per program of the chunk-parallel backward, a power of 2 up to BLOCK_T; 0: the sequential backward
bwd_warps   warps per program of the chunk-parallel backward
UNROLL      states per iteration of the loop over the states, 1 to d_state
num_warps   warps per program
num_stages  software pipelining stages (Triton's own default when not given)
bc          how dB/dC, shared by a group's channels, are summed over channel blocks: 'atomic' (fp32 atomics into one
            buffer), 'partial' (a buffer per channel block, summed by torch afterwards), 'store' (one program per
            group: plain stores; BLOCK_D must equal the channels per group) or 'auto' ('store' where possible, else
            'atomic')
=========== ======================================================================================================

The overrides live in a context variable: they apply to the calls made inside the ``with`` block, in this thread
(or asyncio task) only, and nested blocks add to the enclosing block's settings. ``launch_config`` caches its
result per shape and active settings, so a change takes effect at the next call.
"""
import contextvars
import dataclasses
import functools
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Tuple

import triton

BC_MODES = {'store': 0, 'atomic': 1, 'partial': 2}  # the kernels' BC_MODE constexpr
BC_CHOICES = ('auto',) + tuple(BC_MODES)


@dataclasses.dataclass(frozen=True)
class KernelSettings:
    """Overrides of the per-shape launch defaults (see the module docstring); None keeps the default."""
    BLOCK_D: Optional[int] = None
    BLOCK_T: Optional[int] = None
    BWD_T: Optional[int] = None
    bwd_warps: Optional[int] = None
    UNROLL: Optional[int] = None
    num_warps: Optional[int] = None
    num_stages: Optional[int] = None
    bc: Optional[str] = None

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if field.name == 'bc':
                if value not in BC_CHOICES:
                    raise ValueError(f'bc={value!r}: one of {BC_CHOICES}')
            elif not isinstance(value, int) or isinstance(value, bool) or value < (0 if field.name == 'BWD_T' else 1):
                least = 'an int >= 0 (0: the sequential backward)' if field.name == 'BWD_T' else 'a positive int'
                raise ValueError(f'{field.name}={value!r}: {least}')

    def overrides(self) -> Dict[str, object]:
        """The settings that are given (not None), by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(KernelSettings))
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar('mmmambavision_triton_kernel_settings', default=None)


def active_settings() -> KernelSettings:
    """The settings in effect here: those of the innermost ``kernel_settings`` block, else none."""
    return _ACTIVE.get() or KernelSettings()


def active_overrides() -> Optional[KernelSettings]:
    """The settings of the innermost ``kernel_settings`` block, None outside any (cheap: a cache key per call)."""
    return _ACTIVE.get()


@contextmanager
def kernel_settings(**overrides) -> Iterator[KernelSettings]:
    """Launch the Triton scan with these settings inside the block, e.g. ``with kernel_settings(BLOCK_T=256,
    UNROLL=8): ...``. Keys: ``SETTING_NAMES``; a value of None removes an enclosing block's setting. Yields the
    settings in effect. Raises ValueError on an unknown key or a value out of range; settings that depend on the
    shape (BLOCK_D dividing the channels per group, UNROLL up to d_state, BWD_T up to BLOCK_T) are checked at the
    first call of each shape, by ``launch_config``."""
    unknown = sorted(set(overrides) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(f'unknown kernel setting(s) {unknown}; the settings are {SETTING_NAMES}')
    settings = dataclasses.replace(active_settings(), **overrides)
    token = _ACTIVE.set(settings if settings.overrides() else None)
    try:
        yield settings
    finally:
        _ACTIVE.reset(token)


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """What a call at one shape launches with (``launch_config``)."""
    BLOCK_D: int  # channels per program
    BLOCK_T: int  # steps per chunk of the forward and of the sequential backward
    BLOCK_N: int  # d_state rounded up to a power of 2: the width of the carried-state tile
    N_STATES: int  # d_state: iterations of the loop over the states
    UNROLL: int
    BWD_T: int  # steps per program of the chunk-parallel backward; 0: the sequential backward
    bwd_warps: Optional[int]  # warps per program of the chunk-parallel backward (None without it)
    num_warps: int
    num_stages: Optional[int]  # None: Triton's default
    bc: str  # 'store', 'atomic' or 'partial'
    ckpt: int  # steps between the forward's checkpoints: the backward's chunks (BWD_T, else BLOCK_T)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_block_sizes(batch: int, dim: int, channels_per_group: int, length: int) -> Tuple[int, int, int]:
    """(BLOCK_D, BLOCK_T, num_warps) for a shape.

    * BLOCK_T: the whole sequence as one chunk, up to 1024 steps (at least 16, the smallest tile Triton lays out
      well); longer sequences are walked in chunks, and a longer chunk would only hold more registers.
    * BLOCK_D: one channel per program: the backward's tile of a long chunk then fits in registers without spills,
      and there are plenty of programs. Short sequences (chunks of 64 steps or fewer) get up to 4 channels per
      program, while a program still holds at most 256 values of a tile and at least 2048 programs remain to fill
      the GPU: a program with a tile of 49 steps would leave most of its threads idle.
    * num_warps: 8 values of a tile per thread (a warp per 256 values): each thread's consecutive steps run through
      the scan sequentially before the cross-thread steps.
    """
    block_t = max(16, min(triton.next_power_of_2(length), 1024))
    block_d = 1
    while (block_d < 4 and block_d * 2 * block_t <= 256 and channels_per_group % (block_d * 2) == 0
           and batch * dim // (block_d * 2) >= 2048):
        block_d *= 2
    return block_d, block_t, max(1, block_d * block_t // 256)


def default_unroll(block_d: int, dstate: int) -> int:
    """The loop over the states at run time (1) with one channel per program: one state's code in the loop body
    takes fewer registers and instructions, which is what lets a long chunk's backward fit without spills. With
    several channels per program (short sequences, small tiles) the loop is unrolled completely (d_state)."""
    return 1 if block_d == 1 else dstate


def default_bwd_t(batch: int, dim: int, block_d: int, block_t: int, length: int) -> int:
    """The chunk-parallel backward for few long sequences (detection windows), else 0 (sequential).

    A sequential backward has one program per channel block walking every chunk in turn: with fewer than 4096
    programs a GPU is not full and each program's walk is long. The chunk-parallel one runs a program per chunk of
    BWD_T steps after a pass that computes each chunk's incoming adjoint. Chunks of 128 steps up to 4096 steps
    (more programs for moderate lengths), 512 beyond (the carry pass combines fewer chunk terms)."""
    programs = batch * dim // block_d
    if length > 512 and block_t >= 512 and programs < 4096:
        return 128 if length <= 4096 else 512
    return 0


def default_bwd_warps(block_d: int, bwd_t: int) -> int:
    """4 values of a chunk-parallel backward tile per thread: its programs are short, the GPU is filled by their
    number."""
    return max(1, block_d * bwd_t // 128)


def _power_of_2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _resolve(batch: int, dim: int, channels_per_group: int, length: int, dstate: int,
             settings: KernelSettings) -> LaunchConfig:
    block_d, block_t, num_warps = default_block_sizes(batch, dim, channels_per_group, length)
    block_d = settings.BLOCK_D if settings.BLOCK_D is not None else block_d
    block_t = settings.BLOCK_T if settings.BLOCK_T is not None else block_t
    num_warps = settings.num_warps if settings.num_warps is not None else num_warps
    if not _power_of_2(block_d) or channels_per_group % block_d:
        raise ValueError(f'BLOCK_D={block_d}: a power of 2 dividing the channels per group ({channels_per_group})')
    if not _power_of_2(block_t):
        raise ValueError(f'BLOCK_T={block_t}: a power of 2')
    unroll = settings.UNROLL if settings.UNROLL is not None else default_unroll(block_d, dstate)
    if not 1 <= unroll <= dstate:
        raise ValueError(f'UNROLL={unroll}: states unrolled per loop iteration, 1 to d_state ({dstate})')
    bwd_t = settings.BWD_T if settings.BWD_T is not None else default_bwd_t(batch, dim, block_d, block_t, length)
    if bwd_t and (not _power_of_2(bwd_t) or bwd_t > block_t):
        raise ValueError(f'BWD_T={bwd_t}: steps per backward program, a power of 2 up to BLOCK_T ({block_t}), '
                         f'or 0 for the sequential backward')
    bwd_warps = None
    if bwd_t:
        bwd_warps = settings.bwd_warps if settings.bwd_warps is not None else default_bwd_warps(block_d, bwd_t)
    bc = settings.bc or 'auto'
    if bc == 'auto':
        bc = 'store' if block_d == channels_per_group else 'atomic'
    if bc == 'store' and block_d != channels_per_group:
        raise ValueError(f"bc='store': only with BLOCK_D ({block_d}) = the channels per group "
                         f"({channels_per_group}); else 'atomic' or 'partial'")
    return LaunchConfig(BLOCK_D=block_d, BLOCK_T=block_t, BLOCK_N=triton.next_power_of_2(dstate), N_STATES=dstate,
                        UNROLL=unroll, BWD_T=bwd_t, bwd_warps=bwd_warps, num_warps=num_warps,
                        num_stages=settings.num_stages, bc=bc, ckpt=bwd_t or block_t)


def launch_config(batch: int, dim: int, channels_per_group: int, length: int, dstate: int) -> LaunchConfig:
    """The launch config of a call at this shape under the active ``kernel_settings``; ValueError (naming the
    setting and what it allows) where a setting does not fit the shape.

    Cached per shape and settings: building it is tens of microseconds of Python, as much as a kernel launch, and a
    model calls the scan with a handful of shapes."""
    return _cached_config(batch, dim, channels_per_group, length, dstate, _ACTIVE.get())


@functools.lru_cache(maxsize=256)
def _cached_config(batch: int, dim: int, channels_per_group: int, length: int, dstate: int,
                   settings: Optional[KernelSettings]) -> LaunchConfig:
    return _resolve(batch, dim, channels_per_group, length, dstate, settings or KernelSettings())


def kernel_launch_args(config: LaunchConfig, part: str, length: int) -> dict:
    """The constexpr arguments and launch options (num_warps, num_stages) of one kernel: ``part`` 'fwd' (the
    forward), 'bwd' (the backward) or 'carry' (the chunk-parallel backward's first pass, only with BWD_T), at
    sequence length ``length``. HAS_D, HAS_BIAS, SOFTPLUS, STORE_CKPT and BC_MODE depend on the call, not the
    config: the caller adds them."""
    if part == 'carry':
        if not config.BWD_T:
            raise ValueError('the carry pass runs only with the chunk-parallel backward (BWD_T > 0)')
        return dict(N_STATES=config.N_STATES, BLOCK_D=config.BLOCK_D, BLOCK_T=config.BWD_T,
                    num_warps=config.bwd_warps)
    args = dict(BLOCK_D=config.BLOCK_D, BLOCK_N=config.BLOCK_N, num_warps=config.num_warps, BLOCK_T=config.BLOCK_T,
                N_STATES=config.N_STATES, UNROLL=config.UNROLL)
    if part == 'fwd':
        args.update(CKPT_T=config.ckpt)
    elif part != 'bwd':
        raise ValueError(f"part={part!r}: one of 'fwd', 'bwd', 'carry'")
    elif config.BWD_T:
        args.update(BLOCK_T=config.BWD_T, num_warps=config.bwd_warps, SPLIT=True,
                    NC=triton.next_power_of_2(triton.cdiv(length, config.BWD_T)))
    else:
        args.update(SPLIT=False, NC=1)
    if config.num_stages is not None:
        args['num_stages'] = config.num_stages
    return args
