"""The selective scan as Triton kernels, forward and backward: the GPU backend that needs no compilation.

Parts:

* ``kernels.py`` -- the ``@triton.jit`` kernels (forward, backward, and the first pass of the chunk-parallel
  backward) and the jit helpers they share. A program owns a tile of channels × a chunk of steps and loops over
  the d_state states, one associative scan over time per state.
* ``config.py`` -- the launch settings: the per-shape defaults (and why each is the default), the public overrides
  ``KernelSettings`` / ``kernel_settings(...)``, their validation, and ``launch_config`` / ``kernel_launch_args``,
  which give the config a call at a shape launches with and one kernel's constexprs and launch options.
* ``launch.py`` -- ``DirectLauncher``: from the second launch of a specialisation on, kernels are launched through
  the compiled kernel's launcher rather than ``kernel[grid]``, which keeps the host time per call low; it falls
  back to ``kernel[grid]`` wherever Triton's objects are not as expected.
* ``function.py`` -- the autograd Function and ``selective_scan_triton``, the backend entry point used by
  ``mmmambavision.ops.selective_scan`` (which decides the backend and normalises the inputs).

Choosing settings, e.g. to measure a variant::

    from mmmambavision.ops.triton import kernel_settings, launch_config
    with kernel_settings(BLOCK_T=256, UNROLL=8):
        y = selective_scan(..., backend='triton')             # launched with these settings
        config = launch_config(batch, dim, dim, length, dstate)  # what it launched with
"""
from . import kernels
from .config import (BC_MODES, SETTING_NAMES, KernelSettings, LaunchConfig, active_settings, default_block_sizes,
                     kernel_launch_args, kernel_settings, launch_config)
from .function import TritonSelectiveScan, selective_scan_triton, use_kernels
from .launch import DirectLauncher, direct_entry, launcher

__all__ = ['kernels', 'BC_MODES', 'SETTING_NAMES', 'KernelSettings', 'LaunchConfig', 'active_settings',
           'default_block_sizes', 'kernel_launch_args', 'kernel_settings', 'launch_config', 'TritonSelectiveScan',
           'selective_scan_triton', 'use_kernels', 'DirectLauncher', 'direct_entry', 'launcher']
