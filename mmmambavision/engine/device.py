"""Running configs written for GPUs on a machine without CUDA."""
from typing import Optional

from mmengine.config import Config
from mmengine.device import get_device

_AMP_ONLY_KEYS = ('loss_scale', 'dtype', 'use_fsdp')


def fall_back_to_fp32(cfg: Config, device: Optional[str] = None) -> Optional[str]:
    """Replace ``AmpOptimWrapper`` by ``OptimWrapper`` when no accelerator is present.

    mmengine's ``AmpOptimWrapper`` asserts CUDA (or NPU / MLU); on CPU the same config trains in fp32.

    Args:
        cfg: the run's config, changed in place.
        device: the device the run will use; ``None`` asks mmengine (``'cpu'`` when there is no accelerator).

    Returns:
        The warning to log once (``None`` when nothing changed).
    """
    device = get_device() if device is None else device
    optim_wrapper = cfg.get('optim_wrapper')
    if device != 'cpu' or not optim_wrapper:
        return None
    wrapper_type = optim_wrapper.get('type', 'OptimWrapper')
    name = wrapper_type if isinstance(wrapper_type, str) else getattr(wrapper_type, '__name__', '')
    if name.split('.')[-1] != 'AmpOptimWrapper':
        return None
    optim_wrapper['type'] = 'OptimWrapper'
    dropped = [key for key in _AMP_ONLY_KEYS if optim_wrapper.pop(key, None) is not None]
    return ('No CUDA device: mixed precision (AmpOptimWrapper) is not available on CPU, training in fp32 with '
            'OptimWrapper instead' + (f' (ignoring {", ".join(dropped)})' if dropped else '') + '.')


def check_launcher(launcher: str, device: Optional[str] = None) -> None:
    """Refuse a distributed launch without accelerators: mmengine's launchers set a CUDA device per process."""
    device = get_device() if device is None else device
    if launcher != 'none' and device == 'cpu':
        raise RuntimeError(
            f'--launcher {launcher} starts one process per GPU, but no CUDA device is visible. On a CPU machine '
            'run the tool directly (python tools/train.py CONFIG ...), without --launcher or dist_train.sh.')
