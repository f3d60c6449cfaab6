"""NVIDIA's own MambaVision (the pip package ``mambavision``) as a detection / segmentation backbone, for benchmarks
and equality checks beside ours (benchmark_official.py).

Nothing of NVIDIA's code is copied here: this module imports their package at run time (it needs mamba-ssm's CUDA
scan and timm) and only calls its public model builders and modules. NVIDIA's classifier is turned into a
four-output backbone the way their detection and segmentation code does it: the stem, then every level with its
own padding and windowing, each stage's map taken before its downsample, through a LayerNorm over channels
(``outnorm{i}``), NCHW. Its parameter names are those of our ``MambaVision``, so weights copy both ways::

    from official import OfficialBackbone, copy_weights, max_relative_difference
    from mmmambavision import MambaVision

    ours = MambaVision('tiny', window_size=(8, 8, 112, 56))
    theirs = OfficialBackbone('tiny', window_size=(8, 8, 112, 56))
    copy_weights(ours, theirs)
    print(max_relative_difference(ours, theirs, torch.randn(1, 3, 224, 320)))  # one number per stage output

``register_official()`` registers ``OfficialBackbone`` in mmengine's root ``MODELS`` as ``'OfficialMambaVision'``
(arch=..., window_size=..., out_indices=...), so a det / seg config's ``model.backbone`` can be swapped to it.
"""
import contextlib
import importlib
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule

OFFICIAL_MODULE = 'mambavision.models.mamba_vision'
# our arch name -> NVIDIA's builder in OFFICIAL_MODULE
OFFICIAL_BUILDERS = {'tiny': 'mamba_vision_T', 'tiny2': 'mamba_vision_T2', 'small': 'mamba_vision_S',
                     'base': 'mamba_vision_B', 'large': 'mamba_vision_L', 'large2': 'mamba_vision_L2'}
# state-dict keys that belong to one side only: NVIDIA's classifier ends (final BatchNorm, head) and the
# backbone's output norms; every other parameter and buffer must be shared
ONE_SIDED_KEYS = re.compile(r'^(norm|head|outnorm\d)\.')
REGISTRY_NAME = 'OfficialMambaVision'


def official_available() -> Tuple[bool, str]:
    """(True, '') when NVIDIA's model can run here: its package and mamba-ssm's compiled scan import and CUDA is
    available; otherwise (False, the reason)."""
    try:
        importlib.import_module(OFFICIAL_MODULE)
    except Exception as error:  # ImportError, or an extension that does not load
        return False, f'{OFFICIAL_MODULE} does not import ({type(error).__name__}: {error})'
    try:
        importlib.import_module('selective_scan_cuda')
    except Exception as error:
        return False, f"mamba-ssm's selective_scan_cuda does not import ({type(error).__name__}: {error})"
    if not torch.cuda.is_available():
        return False, 'no CUDA device (mamba-ssm\'s scan runs on CUDA only)'
    return True, ''


def resolve_arch(arch: str) -> str:
    """Our arch name for ``arch`` (``'t'`` -> ``'tiny'``, ...); ValueError naming the allowed values otherwise."""
    from mmmambavision import MambaVision
    name = MambaVision.arch_aliases.get(str(arch).lower(), str(arch).lower())
    if name not in OFFICIAL_BUILDERS:
        allowed = sorted(OFFICIAL_BUILDERS) + sorted(a for a, n in MambaVision.arch_aliases.items()
                                                     if n in OFFICIAL_BUILDERS)
        raise ValueError(f'arch {arch!r} has no NVIDIA model; allowed: {", ".join(allowed)}')
    return name


def check_window(window_size: Sequence) -> List[int]:
    """Four positive ints (NVIDIA's levels have no whole-map mode: every stage is padded to its window)."""
    window = list(window_size)
    if len(window) != 4 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in window):
        raise ValueError('window_size of the NVIDIA model must be four positive ints (it has no whole-map '
                         f'windows: None is ours only), got {tuple(window_size)!r}')
    return window


def build_official(arch: str, window_size: Sequence[int] = (8, 8, 14, 7), **kwargs) -> nn.Module:
    """NVIDIA's classifier (``mamba_vision_T`` / ``_S`` / ``_B`` ...), random weights (``pretrained=False``).

    ``kwargs`` go to NVIDIA's builder (e.g. ``drop_path_rate``)."""
    name = resolve_arch(arch)
    module = importlib.import_module(OFFICIAL_MODULE)
    builder = getattr(module, OFFICIAL_BUILDERS[name])
    return builder(pretrained=False, window_size=check_window(window_size), **kwargs)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map; returns a contiguous NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


@contextlib.contextmanager
def _without_downsample(level: nn.Module):
    """The level with its downsample taken out (NVIDIA's level then returns its map as it is), put back after."""
    downsample = level._modules.get('downsample')
    level._modules['downsample'] = None
    try:
        yield downsample
    finally:
        level._modules['downsample'] = downsample


class OfficialBackbone(BaseModule):
    """NVIDIA's MambaVision classifier as a backbone: four NCHW maps at strides 4, 8, 16, 32 (``out_indices``).

    The classifier's ``patch_embed`` and ``levels`` are this module's own (their parameter names are ours); its
    final BatchNorm, pooling and head are dropped. Each level runs as NVIDIA wrote it (its padding, window
    partition and blocks) with its downsample taken out; the downsample is applied here after the stage's map is
    kept, and the kept map goes through ``outnorm{i}`` (a LayerNorm over channels).

    Args:
        arch: 'tiny', 'tiny2', 'small', 'base', 'large', 'large2' (or t, t2, s, b, l, l2).
        window_size: four positive ints, one per stage (stages 1-2 are convolutional and ignore theirs).
        out_indices: stages to output, each in 0..3.
        drop_path_rate: stochastic depth; None keeps NVIDIA's default for the arch.
        init_cfg: mmengine init config (None: NVIDIA's initialisation).
    """

    def __init__(self, arch: str = 'tiny', window_size: Sequence[int] = (8, 8, 14, 7),
                 out_indices: Sequence[int] = (0, 1, 2, 3), drop_path_rate: Optional[float] = None,
                 init_cfg: Optional[dict] = None):
        from mmmambavision import MambaVision
        super().__init__(init_cfg=init_cfg)
        out_indices = (out_indices, ) if isinstance(out_indices, int) else tuple(out_indices)
        if not out_indices or any(not isinstance(i, int) or not 0 <= i <= 3 for i in out_indices):
            raise ValueError(f'out_indices must be a non-empty sequence of ints in 0..3, got {out_indices!r}')
        kwargs = {} if drop_path_rate is None else dict(drop_path_rate=drop_path_rate)
        classifier = build_official(arch, window_size, **kwargs)
        self.arch = resolve_arch(arch)
        self.window_size = tuple(window_size)
        self.out_indices = out_indices
        self.patch_embed = classifier.patch_embed
        self.levels = classifier.levels
        dim = MambaVision.arch_settings[self.arch]['dim']
        self.num_features = tuple(dim * 2 ** i for i in range(4))
        for i in out_indices:
            self.add_module(f'outnorm{i}', ChannelLayerNorm(self.num_features[i]))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.patch_embed(x)
        outs = []
        last = max(self.out_indices)
        for i, level in enumerate(self.levels):
            with _without_downsample(level) as downsample:
                x = level(x)
            if i in self.out_indices:
                outs.append(getattr(self, f'outnorm{i}')(x))
            if i == last:
                break
            x = downsample(x)
        return tuple(outs)


def register_official() -> None:
    """Register ``OfficialBackbone`` in mmengine's root ``MODELS`` as 'OfficialMambaVision' (once; later calls do
    nothing). mmdet's and mmseg's registries find it through their parent, as they find ``MambaVision``."""
    from mmengine.registry import MODELS
    if MODELS.get(REGISTRY_NAME) is None:
        MODELS.register_module(name=REGISTRY_NAME, module=OfficialBackbone)


def copy_weights(src: nn.Module, dst: nn.Module) -> List[str]:
    """Load ``src``'s state dict into ``dst`` (ours <-> NVIDIA's: the same names for the stem and the levels).

    Keys of one side only are allowed where they are NVIDIA's classifier ends or the output norms (``norm.*``,
    ``head.*``, ``outnorm{i}.*``); any other key of ``dst`` that ``src`` lacks, or a shared tensor that did not
    arrive, raises ValueError with the names. Returns the shared keys that were copied."""
    source = src.state_dict()
    target = dst.state_dict()
    missing = [k for k in target if k not in source and not ONE_SIDED_KEYS.match(k)]
    unexpected = [k for k in source if k not in target and not ONE_SIDED_KEYS.match(k)]
    if missing or unexpected:
        raise ValueError(f'weights do not correspond: {len(missing)} keys of the destination are not in the source '
                         f'({", ".join(missing[:20])}{" ..." if len(missing) > 20 else ""}); {len(unexpected)} keys '
                         f'of the source are not in the destination ({", ".join(unexpected[:20])}'
                         f'{" ..." if len(unexpected) > 20 else ""})')
    shared = [k for k in target if k in source]
    result = dst.load_state_dict({k: source[k] for k in shared}, strict=False)
    not_copied = [k for k in shared if k in result.missing_keys]
    after = dst.state_dict()
    not_copied += [k for k in shared if k not in not_copied
                   and not torch.equal(after[k].cpu(), source[k].to(after[k].dtype).cpu())]
    if not_copied:
        raise ValueError(f'{len(not_copied)} shared tensors were not copied: {", ".join(not_copied[:20])}')
    return shared


@contextlib.contextmanager
def exact_fp32():
    """fp32 without TF32 in matmuls and cuDNN convolutions (restored after): an equality check must not compare
    two different TF32 roundings."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def max_relative_difference(ours: nn.Module, official: nn.Module, x: torch.Tensor) -> List[float]:
    """Per output of the two backbones on ``x`` (eval, no autocast, no TF32, no autograd; in the dtype of ``x`` and
    the modules, fp32 for the benchmark's check): max |ours - official| over max |official|. Both modules are left
    in eval mode."""
    ours.eval()
    official.eval()
    with torch.no_grad(), exact_fp32():
        a = ours(x)
        b = official(x)
    if len(a) != len(b):
        raise ValueError(f'the two backbones give {len(a)} and {len(b)} outputs')
    diffs = []
    for out_a, out_b in zip(a, b):
        if out_a.shape != out_b.shape:
            raise ValueError(f'output shapes differ: {tuple(out_a.shape)} vs {tuple(out_b.shape)}')
        diffs.append(((out_a.float() - out_b.float()).abs().max() / out_b.float().abs().max().clamp_min(1e-30)).item())
    return diffs


def randomise_norms(model: nn.Module) -> None:
    """Random affine parameters and running statistics in every BatchNorm / LayerNorm (from torch's generator):
    at their initial values (1, 0, mean 0, variance 1) a check would not see them."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                if module.weight is not None:
                    module.weight.copy_(1 + 0.2 * torch.randn_like(module.weight))
                    module.bias.copy_(0.1 * torch.randn_like(module.bias))
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.copy_(0.1 * torch.randn_like(module.running_mean))
                    module.running_var.copy_(1 + 0.2 * torch.rand_like(module.running_var))


def equality_check(arch: str, window_size: Sequence[int], shape: Tuple[int, int], device: torch.device,
                   batch: int = 1, seed: int = 0) -> Dict[str, object]:
    """Ours and NVIDIA's backbone with the same random weights (ours copied into NVIDIA's) on the same random input
    of ``batch`` x 3 x ``shape``: {'arch', 'window_size', 'shape', 'diffs' (one per stage), 'max'}."""
    from mmmambavision import MambaVision
    torch.manual_seed(seed)
    ours = MambaVision(arch, window_size=tuple(window_size)).to(device)
    ours.init_weights()
    randomise_norms(ours)
    official = OfficialBackbone(arch, window_size=window_size).to(device)
    copy_weights(ours, official)
    x = torch.randn(batch, 3, *shape, device=device)
    diffs = max_relative_difference(ours, official, x)
    return dict(arch=resolve_arch(arch), window_size=tuple(window_size), shape=tuple(shape), diffs=diffs,
                max=max(diffs))
