"""MambaVision backbone for OpenMMLab detection and segmentation.

Paper: Hatamizadeh & Kautz, "MambaVision: A Hybrid Mamba-Transformer Vision Backbone", CVPR 2025
(arXiv 2407.08083). Original code: https://github.com/NVlabs/MambaVision (NVIDIA Source Code License-NC; this
file is an independent implementation, nothing of it is copied). Published weights (Hugging Face hub,
nvidia/MambaVision-*-1K) are CC-BY-NC-SA-4.0: non-commercial. Module paths match those weights so that
``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads them without conversion.
"""
import copy
import functools
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from .cuda_graph import GraphCache, graph_applicable, graph_settings
from .layers import (Attention, ConvBlock, Downsample, HybridBlock, LayerNorm, PatchEmbed, WindowCrop,
                     fused_residual_norm_dtype, in_memory_format, pad_to_window, window_partition, window_reverse)
from .utils import compile_records_graphs


def _without_ddp_graph_splitting(compiled: Callable) -> Callable:
    """``compiled`` called with dynamo's DDP optimizer off. Inside a DistributedDataParallel forward dynamo splits
    a compiled graph at DDP's gradient-bucket boundaries and compiles the pieces one by one, running each on fake
    tensors to feed the next; with CUDA graphs recorded (``mode='reduce-overhead'``) that failed in the first
    training step under torchrun (torch 2.11). Unsplit, the stage is one graph, and DDP reduces its parameters'
    gradients once its backward has run. Dynamo reads the setting when it compiles, which happens inside a call."""
    @functools.wraps(compiled)
    def run(*args):
        with torch._dynamo.config.patch(optimize_ddp=False):
            return compiled(*args)
    return run


class MambaVisionLevel(nn.Module):
    """One stage: conv blocks (stages 1-2) or windowed hybrid blocks (stages 3-4), then an optional downsample.

    Hybrid stages pad the map once to a multiple of the window, run every block on the same window sequences
    (the last ``depth // 2`` blocks use attention) and crop back. ``window_size=None``: one sequence per image,
    the whole map in row-major order, no padding.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, conv: bool, window_size: Optional[int],
                 downsample: bool, drop_path: Sequence[float], mlp_ratio: float = 4.,
                 layer_scale: Optional[float] = None, layer_scale_conv: Optional[float] = None,
                 with_cp: bool = False):
        super().__init__()
        self.conv = conv
        self.window_size = window_size
        self.with_cp = with_cp
        if conv:
            self.blocks = nn.ModuleList(
                ConvBlock(dim, drop_path=drop_path[i], layer_scale=layer_scale_conv) for i in range(depth))
        else:
            first_attention = depth - depth // 2
            self.blocks = nn.ModuleList(
                HybridBlock(dim, num_heads, use_attention=i >= first_attention, mlp_ratio=mlp_ratio,
                            drop_path=drop_path[i], layer_scale=layer_scale) for i in range(depth))
        self.downsample = Downsample(dim) if downsample else None
        # the last block computes only the tokens the stage outputs (exact; off only to compare against)
        self.crop_last_block = True
        self.compile_options: Optional[dict] = None  # torch.compile keyword arguments for the hybrid blocks
        self._compiled_blocks: Dict[int, Callable] = {}

    def _run_blocks(self, x: torch.Tensor, crop: Optional[WindowCrop] = None) -> torch.Tensor:
        """Every block; with ``crop`` the last one returns only the cropped tokens."""
        last = len(self.blocks) - 1 if crop is not None else len(self.blocks)
        if last > 0:
            x = self._blocks_until(x, last)
        if crop is not None:
            x = self._run_block(self.blocks[-1], x, crop)
        return x

    def _blocks_until(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        if self.compile_options is not None:
            return self._compiled(stop)(x)
        return self._plain_blocks(x, stop)

    def _plain_blocks(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        dtype = None if self.conv else fused_residual_norm_dtype(x)
        if dtype is not None and all(b.norm1.weight is not None and b.norm2.weight is not None
                                     for b in self.blocks[:stop]):
            return self._fused_blocks(x, stop, dtype)
        for block in self.blocks[:stop]:
            x = self._run_block(block, x)
        return x

    def _fused_blocks(self, x: torch.Tensor, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Half-precision inference: every residual addition but the last runs together with the LayerNorm after
        it (the block's second, the next block's first) as one kernel."""
        h = self.blocks[0].norm1(x)
        for i in range(stop):
            next_norm = self.blocks[i + 1].norm1 if i + 1 < stop else None
            x, h = self.blocks[i].forward_fused(x, h, next_norm, dtype)
        return x

    def _run_block(self, block: nn.Module, x: torch.Tensor, crop: Optional[WindowCrop] = None) -> torch.Tensor:
        args = (x, ) if crop is None else (x, crop)
        if self.with_cp and x.requires_grad:
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _compiled(self, stop: int):
        """``torch.compile`` of the first ``stop`` blocks (made on first use)."""
        compiled = self._compiled_blocks.get(stop)
        if compiled is None:
            compiled = torch.compile(functools.partial(self._plain_blocks, stop=stop), **self.compile_options)
            if compile_records_graphs(self.compile_options):
                compiled = _without_ddp_graph_splitting(compiled)
            self._compiled_blocks[stop] = compiled
        return compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the stage output before the downsample."""
        if self.conv:
            return self._run_blocks(x)
        if self.window_size is None:
            batch, channels, height, width = x.shape
            channels_last = x.is_contiguous(memory_format=torch.channels_last)
            # (B, L, C) contiguous: a transposed view would carry its strides through every block's ops
            # (a channels_last map is already laid out so: nothing is copied then)
            x = self._run_blocks(x.flatten(2).transpose(1, 2).contiguous())
            x = x.transpose(1, 2).reshape(batch, channels, height, width)
            # back in the input's memory format: a channels_last-strided map handed to an NCHW detector makes its
            # neck mix layouts (strided elementwise ops, slower convolution algorithms)
            return in_memory_format(x, channels_last)
        height, width = x.shape[-2:]
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        window = self.window_size
        x = pad_to_window(x, window)
        padded_h, padded_w = x.shape[-2:]
        x = window_partition(x, window)
        crop = self._crop(height, width, padded_h, padded_w)
        if crop is None:
            x = self._run_blocks(x)
            x = window_reverse(x, window, padded_h, padded_w, channels_last=channels_last)
            if padded_h != height or padded_w != width:
                x = x[:, :, :height, :width]
            return in_memory_format(x, channels_last)
        # Only the image's tokens leave the stage, so the last block computes only theirs: its attention asks
        # queries for them alone (every token still gives keys and values) and its MLP runs on their rows. The
        # kept rectangle is the same in every window: the image part of a window along an axis with one window,
        # the whole window along an axis with several (then the crop below cuts the padding).
        x = self._run_blocks(x, crop)
        rows, cols = padded_h // window, padded_w // window
        batch, channels = x.shape[0] // (rows * cols), x.shape[-1]
        x = x.reshape(batch, rows, cols, crop.height, crop.width, channels).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(batch, rows * crop.height, cols * crop.width, channels)[:, :height, :width]
        return in_memory_format(x.permute(0, 3, 1, 2), channels_last)

    def _crop(self, height: int, width: int, padded_h: int, padded_w: int) -> Optional[WindowCrop]:
        """The rectangle of each window that the stage output keeps, None when that is the whole window."""
        window = self.window_size
        keep_h = height if padded_h == window else window
        keep_w = width if padded_w == window else window
        if (keep_h, keep_w) == (window, window) or not self.crop_last_block:
            return None
        return WindowCrop(window, keep_h, keep_w)


class LayerNorm2d(LayerNorm):
    """LayerNorm over the channels of an NCHW map (a channels_last input gives a channels_last output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        return in_memory_format(super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), channels_last)


_ARCH_FIELDS = {'dim', 'in_dim', 'depths', 'num_heads', 'mlp_ratio', 'layer_scale', 'layer_scale_conv',
                'drop_path_rate'}
_ARCH_REQUIRED = {'dim', 'in_dim', 'depths', 'num_heads'}


@MODELS.register_module()
class MambaVision(BaseModule):
    """MambaVision backbone emitting four NCHW maps at strides 4, 8, 16, 32 (widths dim x 1, 2, 4, 8).

    Each output is the stage's feature before its downsample, through a LayerNorm over channels
    (``outnorm{i}``), as in the published detection and segmentation models.

    Args:
        arch: one of ``'tiny' 'tiny2' 'small' 'base' 'large' 'large2'`` (aliases ``t t2 s b l l2``) or a dict
            with ``dim``, ``in_dim``, ``depths`` (4 ints), ``num_heads`` (4 ints) and optionally ``mlp_ratio``,
            ``layer_scale``, ``layer_scale_conv``, ``drop_path_rate``.
        in_channels: input channels.
        out_indices: stages to output, each in 0..3.
        window_size: window side per stage (four entries; stages 1-2 are convolutional and ignore theirs).
            Classification used (8, 8, 14, 7), the published detection runs (8, 8, 112, 56), segmentation
            (8, 8, 64, 32). No weight depends on it, but outputs do (padding is not masked). ``None`` for stage 3
            or 4 runs that stage over the whole map as one sequence without padding: at COCO scale the published
            112 / 56 windows are mostly padding (an 84x50 stage-3 map in 112x112), so ``(8, 8, None, None)`` is
            much cheaper, but it is a different model from the published one (whose padding tokens take part in
            the scan and the attention).
        drop_path_rate: stochastic depth, linear over all blocks; ``None`` means the arch's published value.
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem and stages 0..k-1 (with their downsample
            and output norm).
        norm_eval: keep BatchNorm layers in eval mode during training.
        with_cp: gradient checkpointing per block.
        compile: ``torch.compile`` the blocks of the hybrid stages 3-4: ``True``, or a dict of ``torch.compile``
            keyword arguments (e.g. ``dict(mode='max-autotune-no-cudagraphs')``) with one key of its own,
            ``stages``: the stages (0-3) whose blocks are compiled, default ``(2, 3)``; ``(0, 1, 2, 3)`` adds the
            convolutional stages, whose input shapes change with every image size (one more compile when a
            second size comes, then shape-generic code). Inductor fuses the LayerNorms, residuals, GELUs and
            layout copies around the matmuls, attention and the scan (a custom op it traces through, no graph
            break). Compilation costs seconds to minutes at the first forward and again for each new shape of the
            window sequences (fixed at detection and segmentation scale, where the windows are). Outputs equal the
            eager ones to float rounding. Off by default.
        cuda_graph: inference (eval mode, no autograd, CUDA) replayed from CUDA graphs, one per input shape
            (and dtype, memory format, autocast state): ``True``, or ``dict(max_shapes=N)`` for graphs of up to N
            shapes (default 4; inputs of further shapes run eagerly). At batch 1 the eager forward is bound by
            the host launching its kernels (mmseg's sliding-window test, a detector's test); a replay launches
            them all at once. Each new shape costs three forwards (two warm-up, one captured) and keeps the
            graph's activation memory. Outputs are the eager ones (the same kernels), returned as new tensors.
            Training, autograd, CPU and ``torch.compile`` / tracing are unaffected. Off by default.
        init_cfg: mmengine init config, e.g. ``dict(type='Pretrained', checkpoint='checkpoints/x.pth.tar')``.
    """

    arch_settings: Dict[str, dict] = {
        'tiny': dict(dim=80, in_dim=32, depths=(1, 3, 8, 4), num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
        'tiny2': dict(dim=80, in_dim=32, depths=(1, 3, 11, 4), num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
        'small': dict(dim=96, in_dim=64, depths=(3, 3, 7, 5), num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
        'base': dict(dim=128, in_dim=64, depths=(3, 3, 10, 5), num_heads=(2, 4, 8, 16), layer_scale=1e-5,
                     drop_path_rate=0.3),
        'large': dict(dim=196, in_dim=64, depths=(3, 3, 10, 5), num_heads=(4, 8, 16, 32), layer_scale=1e-5,
                      drop_path_rate=0.3),
        'large2': dict(dim=196, in_dim=64, depths=(3, 3, 12, 5), num_heads=(4, 8, 16, 32), layer_scale=1e-5,
                       drop_path_rate=0.3),
    }
    arch_aliases = {'t': 'tiny', 't2': 'tiny2', 's': 'small', 'b': 'base', 'l': 'large', 'l2': 'large2'}

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 window_size: Sequence[int] = (8, 8, 14, 7),
                 drop_path_rate: Optional[float] = None,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 compile: Union[bool, dict] = False,
                 cuda_graph: Union[bool, dict] = False,
                 init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        arch = self._resolve_arch(arch)
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        out_indices = tuple(out_indices)
        if not out_indices or any(not isinstance(i, int) or not 0 <= i <= 3 for i in out_indices):
            raise ValueError(f'out_indices must be a non-empty sequence of ints in 0..3, got {out_indices!r}')
        window_size = tuple(window_size) if isinstance(window_size, (list, tuple)) else window_size
        if (not isinstance(window_size, tuple) or len(window_size) != 4
                or any(w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1)
                       for w in window_size)
                or any(w is None for w in window_size[:2])):
            raise ValueError('window_size must be four entries (one per stage), each a positive int, or None for '
                             f'stage 3 / 4 (the whole map as one window, no padding); got {window_size!r}')
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
            raise ValueError(f'frozen_stages must be an int in -1..4, got {frozen_stages!r}')
        compile_options, compile_stages = self._compile_settings(compile)
        max_graphs = graph_settings(cuda_graph)
        if drop_path_rate is None:
            drop_path_rate = arch.get('drop_path_rate', 0.)
        if not 0. <= drop_path_rate < 1.:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate!r}')

        self.arch = arch
        self.in_channels = in_channels
        self.out_indices = out_indices
        self.window_size = window_size
        self.drop_path_rate = drop_path_rate
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        dim, depths = arch['dim'], tuple(arch['depths'])
        self.num_features = tuple(dim * 2 ** i for i in range(4))
        self.patch_embed = PatchEmbed(in_channels, arch['in_dim'], dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.levels = nn.ModuleList()
        for i in range(4):
            level = MambaVisionLevel(
                dim=self.num_features[i], depth=depths[i], num_heads=arch['num_heads'][i], conv=i < 2,
                window_size=window_size[i], downsample=i < 3,
                drop_path=rates[sum(depths[:i]):sum(depths[:i + 1])], mlp_ratio=arch.get('mlp_ratio', 4.),
                layer_scale=arch.get('layer_scale'), layer_scale_conv=arch.get('layer_scale_conv'), with_cp=with_cp)
            level.compile_options = compile_options if i in compile_stages else None
            self.levels.append(level)
        for i in out_indices:
            self.add_module(f'outnorm{i}', LayerNorm2d(self.num_features[i]))
        self._freeze_stages()
        self._graphs = GraphCache(max_graphs) if max_graphs is not None else None
        self._graph_tensors: Optional[Tuple[torch.Tensor, ...]] = None  # parameters and buffers, listed on use

    @classmethod
    def _resolve_arch(cls, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            name = cls.arch_aliases.get(arch.lower(), arch.lower())
            if name not in cls.arch_settings:
                valid = sorted(cls.arch_settings) + sorted(cls.arch_aliases)
                raise ValueError(f'arch {arch!r} is not a MambaVision size; valid: {", ".join(valid)}')
            return copy.deepcopy(cls.arch_settings[name])
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')
        missing = _ARCH_REQUIRED - set(arch)
        unknown = set(arch) - _ARCH_FIELDS
        if missing or unknown:
            raise ValueError(f'arch dict: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}; '
                             f'allowed: {sorted(_ARCH_FIELDS)}')
        for key in ('depths', 'num_heads'):
            if len(arch[key]) != 4:
                raise ValueError(f'arch[{key!r}] must have 4 entries, got {arch[key]!r}')
        return copy.deepcopy(dict(arch))

    @staticmethod
    def _compile_settings(compile: Union[bool, dict]) -> Tuple[Optional[dict], Tuple[int, ...]]:
        """(torch.compile keyword arguments or None, the stages to compile) from the ``compile`` argument."""
        if isinstance(compile, bool):
            return ({} if compile else None), (2, 3)
        if not isinstance(compile, dict):
            raise TypeError(f'compile must be a bool or a dict of torch.compile keyword arguments (plus '
                            f"'stages'), got {compile!r}")
        options = dict(compile)
        stages = options.pop('stages', (2, 3))
        stages = (stages, ) if isinstance(stages, int) else stages
        if (not isinstance(stages, (list, tuple)) or not stages
                or any(isinstance(s, bool) or s not in (0, 1, 2, 3) for s in stages)):
            raise ValueError(f"compile['stages'] must be stage indices in 0..3, got {compile.get('stages')!r}")
        return options, tuple(stages)

    def _freeze_stages(self) -> None:
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        for i in range(max(self.frozen_stages, 0)):
            frozen.append(self.levels[i])
            if hasattr(self, f'outnorm{i}'):
                frozen.append(getattr(self, f'outnorm{i}'))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        # ``model.eval()`` lists the parameters afresh for the CUDA graphs (modules replaced since, e.g. by
        # folding BatchNorm into convolutions, are seen); their tensors' addresses and versions are checked per call
        self._graph_tensors = None
        if mode and self._graphs is not None:  # their memory is training's now; the next validation captures anew
            self._graphs.clear()
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def _apply(self, fn, *args, **kwargs):
        result = super()._apply(fn, *args, **kwargs)
        self._graph_tensors = None  # .to() / .cuda() / .half() may have made new parameters
        return result

    def init_weights(self) -> None:
        pretrained = self._pretrained_cfg()
        if pretrained is None and self.init_cfg is not None:
            super().init_weights()
            return
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.endswith('dt_proj'):
                nn.init.trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if pretrained is not None:
            from ..checkpoint import load_pretrained
            load_pretrained(self, pretrained['checkpoint'], prefix=pretrained.get('prefix'),
                            map_location=pretrained.get('map_location', 'cpu'))
        self._is_init = True

    def _pretrained_cfg(self) -> Optional[dict]:
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        for cfg in cfgs:
            if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
                if not cfg.get('checkpoint'):
                    raise ValueError("init_cfg type='Pretrained' needs a 'checkpoint' path")
                return cfg
        return None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if x.dim() != 4:
            raise ValueError(f'MambaVision expects input x of shape (N, C, H, W), got {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'input x has {x.shape[1]} channels but in_channels={self.in_channels}')
        if self._graphs is not None and not self.training and graph_applicable(x):
            if self._graph_tensors is None:
                self._graph_tensors = tuple(self.parameters()) + tuple(self.buffers())
                self._attentions = [m for m in self.modules() if isinstance(m, Attention)]
            if not any(m.record_weights for m in self._attentions):  # recording runs Python per call
                return self._graphs(self, self._forward, x, self._graph_tensors)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        # The stages run channels_last whatever the input's layout (cuDNN's convolutions and BatchNorm take NHWC
        # natively, and a window is then a view of the map); the outputs come back in the input's layout.
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        x = self.patch_embed(in_memory_format(x, True))
        outs = []
        last = max(self.out_indices)
        for i, level in enumerate(self.levels):
            x = level(x)
            if i in self.out_indices:
                outs.append(in_memory_format(getattr(self, f'outnorm{i}')(x), channels_last))
            if i == last:
                break
            x = level.downsample(x)
        return tuple(outs)
