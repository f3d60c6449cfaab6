"""Kernel launches with little host time: through the compiled kernel's launcher once it is known.

``kernel[grid](*args, **options)`` (``JITFunction.run``) binds and specialises every argument and builds a cache
key before the launch itself, several times the host time of the driver call; the scan's backward launches two or
three kernels per call, and eager inference is bound by host time per call. ``DirectLauncher`` keeps the compiled
kernel that the first ``kernel[grid]`` call returns, under everything Triton specialises on (each tensor's dtype
and 16-byte alignment, every other argument's value, the constexprs and launch options, the grid, the device), and
from the second call on calls its launcher as ``JITFunction.run`` would - but without building the launch metadata
and passing the launch hooks where no hook is registered (Triton builds them at every launch).

It relies on Triton internals (``CompiledKernel.run``/``function``/``packed_metadata``/``launch_metadata``,
``triton.knobs``, ``JITFunction.params``), so every step falls back to ``kernel[grid]`` when they are not as
expected: a Triton without them, a kernel whose constexprs do not all come after its runtime parameters, stand-ins
for kernels (tests) and the interpreter's kernels (``TRITON_INTERPRET=1``), which are not ``JITFunction``s.
"""
from typing import Optional

from torch import Tensor

try:
    from triton import knobs as _knobs
    from triton.runtime.driver import driver as _driver
    from triton.runtime.jit import JITFunction as _JITFunction
except ImportError:  # pragma: no cover - Triton before 3.4: every launch through kernel[grid]
    _knobs = _driver = _JITFunction = None


def direct_entry(kernel, compiled, n_args: int, options: dict):
    """What a direct launch of ``compiled`` needs: its launcher, function handle, packed metadata, launch-metadata
    method, and the values of the parameters after the ``n_args`` runtime ones (the constexprs, in signature order:
    ``JITFunction.run`` passes every parameter to the launcher, which skips the constexprs). False where Triton's
    objects are not as expected, or the runtime parameters do not all come first: launches of that key then go
    through ``kernel[grid]``."""
    try:
        params = kernel.params
        if any(p.is_constexpr for p in params[:n_args]) or not all(p.is_constexpr for p in params[n_args:]):
            return False
        tail = []
        for p in params[n_args:]:
            if p.name in options:
                tail.append(options[p.name])
            elif p.has_default:
                tail.append(p.default)
            else:
                return False
        return compiled.run, compiled.function, compiled.packed_metadata, compiled.launch_metadata, tuple(tail)
    except AttributeError:
        return False


def _idle(hook) -> bool:
    """Whether a launch hook would do nothing: None, or a chain of hooks that is empty (Triton >= 3.5 keeps a
    ``HookChain`` there, never None, and builds the launch metadata for it at every launch; the launcher skips a
    None hook)."""
    if hook is None:
        return True
    calls = getattr(hook, 'calls', None)
    return isinstance(calls, list) and not calls


class DirectLauncher:
    """``launcher(kernel, grid, args, options)`` does ``kernel[grid](*args, **options)``: ``args`` the runtime
    parameters in order (tensors and ints), ``options`` the constexprs and launch options (num_warps,
    num_stages). From the second call with the same specialisation on it calls the compiled kernel's launcher.

    Args:
        enabled: False sends every launch through ``kernel[grid]`` (tests compare the two ways).
        driver, knobs, jit_type: Triton's active-driver object, ``triton.knobs`` and ``JITFunction`` (the
            defaults); tests pass stand-ins. Without them every launch goes through ``kernel[grid]``.
        cache_size: compiled entries kept; past it the cache starts over (only ever new shapes or layouts fill it).
    """

    def __init__(self, enabled: bool = True, driver=None, knobs=None, jit_type: Optional[type] = None,
                 cache_size: int = 512):
        self.enabled = enabled
        self.driver = driver if driver is not None else _driver
        self.knobs = knobs if knobs is not None else _knobs
        self.jit_type = jit_type if jit_type is not None else _JITFunction
        self.cache_size = cache_size
        self.cache: dict = {}  # key -> direct_entry(...) (False: this key goes through kernel[grid])

    def clear(self) -> None:
        self.cache.clear()

    def __call__(self, kernel, grid: tuple, args: tuple, options: dict) -> None:
        if not self.enabled or self.jit_type is None or self.driver is None or type(kernel) is not self.jit_type:
            kernel[grid](*args, **options)
            return
        driver = self.driver.active
        device = driver.get_current_device()
        key = (kernel, grid, device, tuple(options.items()),
               tuple([(a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, Tensor) else a for a in args]))
        entry = self.cache.get(key)
        if entry is None:
            compiled = kernel[grid](*args, **options)
            if len(self.cache) >= self.cache_size:
                self.cache.clear()
            self.cache[key] = direct_entry(kernel, compiled, len(args), options)
            return
        if entry is False:
            kernel[grid](*args, **options)
            return
        run, function, metadata, launch_metadata, tail = entry
        stream = driver.get_current_stream(device)
        values = args + tail
        hooks = self.knobs.runtime
        enter, leave = hooks.launch_enter_hook, hooks.launch_exit_hook
        if _idle(enter) and _idle(leave):  # no hook to call: no launch metadata to build for one
            enter = leave = info = None
        else:
            info = launch_metadata(grid, stream, *values)
        run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, stream, function, metadata,
            info, enter, leave, *values)


# the launcher the scan uses
launcher = DirectLauncher()
