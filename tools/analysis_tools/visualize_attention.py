"""Where MambaVision's window attention looks from one point of an image, and where each stage's activations are.

    python tools/analysis_tools/visualize_attention.py photo.jpg --arch tiny --out attention.png
    python tools/analysis_tools/visualize_attention.py photo.jpg --arch tiny --checkpoint \\
        checkpoints/mambavision_tiny_1k.pth.tar --stage 4 --point 250 180 --out attention.png
    python tools/analysis_tools/visualize_attention.py photo.jpg --config configs/det/cascade_mambavision_t_3x.py \\
        --checkpoint work_dirs/cascade_mambavision_t_3x/epoch_36.pth --out attention.png

One PNG: the image with the query point, then one panel per self-attention block of the chosen stage (stage 3 or 4,
counted from 1 as in the paper: the model's ``levels[2]`` / ``levels[3]``) and the mean activation energy of the
four stage outputs.

* Attention panels: the attention weights of the query token - the stage's feature-map cell under the point - to
  every token of its window, averaged over the heads, for each attention block of the stage. Tokens are mapped
  back window -> feature map -> image: the window's place in the zero-padded map, the padding cropped (the share
  of the weight that fell on padding tokens, the window's and the input's, is in the title), each token drawn as
  the stride x stride square of input pixels it sits on (nearest upsampling), the model input's own padding
  cropped, then scaled to the original image. Everything outside the query's window is left blank: the query
  attends to nothing there.
* Energy panels: for each stage output (before its output LayerNorm, which would flatten it), the mean over
  channels of the squared activations at every position, min-max scaled to [0, 1] over the image.

The weights are the model's own: the tool turns on the ``record_weights`` flag of the stage's ``Attention``
modules (:func:`mmmambavision.models.layers.record_attention`), which makes them compute
``softmax(q k^T / sqrt(head_dim))`` explicitly, use it for their output and keep it; nothing is recomputed here.

Input: the image is read with PIL (EXIF orientation applied) as RGB and resized with its aspect ratio kept
(bilinear). ``--arch``: shorter side 224 (``--scale``), ImageNet mean and std, the classification windows
(8, 8, 14, 7) unless ``--window-size``. ``--config``: the backbone of the config (its arch and windows; its
``init_cfg`` is not used), the keep-ratio ``Resize`` scale of its test pipeline, its data preprocessor's mean, std
and channel order, and zero padding to its ``pad_size_divisor`` (mmdet), as its test pipeline and preprocessor
would give one image. Without ``--checkpoint`` the weights are random (seeded): the figure then shows an untrained
model and says so. ``--checkpoint`` reads an ImageNet file or an mmdet / mmseg checkpoint (``backbone.`` keys,
detected) through :func:`mmmambavision.checkpoint.load_pretrained`.

Default stage 3: its map is twice as fine as stage 4's (stride 16 against 32), its windows hold four times as many
tokens at the classification windows (14 x 14 against 7 x 7) and it has more attention blocks (T: 4 against 2).
"""
import argparse
import math
import os
import os.path as osp
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mmmambavision.utils import window_side

ARCHS = ('tiny', 'tiny2', 'small', 'base', 'large', 'large2', 't', 't2', 's', 'b', 'l', 'l2')
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
DEFAULT_SHORT_SIDE = 224
ENERGY_STAGES = (1, 2, 3, 4)
# Figure layout in pixels (at --dpi): width of an image panel, room for a panel's title / colour bar, the figure title.
PANEL_PX, TITLE_PX, COLORBAR_PX, SUPTITLE_PX = 300, 60, 80, 50
HOW_TO_READ = ('How to read\n\n'
               'Attention: how much the query token\n(cyan cell) attends to each token of\nits window, per block, '
               'averaged over\nthe heads. Blank: other windows.\nThe colour bar gives the weights.\n\n'
               'Energy: where each stage output is\nlarge (mean of squared activations\nover channels, '
               'before the output\nLayerNorm).\n\nOne square = one token (nearest\nupsampling from the feature map).')


def log(message: str) -> None:
    print(f'[visualize_attention] {message}', flush=True)


# ----------------------------------------------------------------------------------------------------- geometry
def keep_ratio_size(height: int, width: int, scale: Sequence[int]) -> Tuple[int, int]:
    """(height, width) after a keep-ratio resize: one value is the shorter side; two values (A, B) fit the image
    in max(A, B) on its long side and min(A, B) on its short side (mmcv's ``Resize(keep_ratio=True)``)."""
    if len(scale) == 1:
        factor = scale[0] / min(height, width)
    else:
        factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def stage_map_size(input_hw: Tuple[int, int], stage: int) -> Tuple[int, int]:
    """Feature-map size of a stage (1..4) for an input of ``input_hw``: every stride-2 3x3 convolution (padding 1)
    halves rounding up, so the stride-s map is ceil(H / s) x ceil(W / s)."""
    stride = 2 ** (stage + 1)
    return math.ceil(input_hw[0] / stride), math.ceil(input_hw[1] / stride)


def window_geometry(map_hw: Tuple[int, int], window_size: Optional[int]) -> Tuple[int, int, int, int]:
    """(window height, window width, windows per row, padded map height) of a stage, as the model cuts it: windows
    of ``window_size`` in row-major order over the map zero-padded right and bottom; ``None``: the whole map, no
    padding."""
    height, width = map_hw
    if window_size is None:
        return height, width, 1, height
    return window_size, window_size, math.ceil(width / window_size), math.ceil(height / window_size) * window_size


def query_token(cell: Tuple[int, int], map_hw: Tuple[int, int], window_size: Optional[int]) -> Tuple[int, int]:
    """(window index, token index in that window) of feature-map cell (row, col) of the first image, in the order
    of the model's ``window_partition`` (windows row-major, tokens row-major within a window)."""
    win_h, win_w, per_row, _ = window_geometry(map_hw, window_size)
    row, col = cell
    return (row // win_h) * per_row + col // win_w, (row % win_h) * win_w + col % win_w


def window_weights_on_map(weights: np.ndarray, cell: Tuple[int, int], map_hw: Tuple[int, int],
                          window_size: Optional[int]) -> Tuple[np.ndarray, float]:
    """A window's weights (one per token, row-major) placed on the feature map: (map, share on padding).

    The map is NaN outside the query's window; the window's tokens that fall on the zero padding right and bottom
    of the map are cropped, and the share of the weight on them is returned.
    """
    win_h, win_w, _, _ = window_geometry(map_hw, window_size)
    weights = np.asarray(weights, dtype=np.float64).reshape(win_h, win_w)
    top, left = (cell[0] // win_h) * win_h, (cell[1] // win_w) * win_w
    bottom, right = min(top + win_h, map_hw[0]), min(left + win_w, map_hw[1])
    out = np.full(map_hw, np.nan)
    inside = weights[:bottom - top, :right - left]
    out[top:bottom, left:right] = inside
    total = weights.sum()
    return out, float((total - inside.sum()) / total) if total > 0 else 0.


def map_to_image(values: np.ndarray, stride: int, image_hw: Tuple[int, int]) -> np.ndarray:
    """A stride-``stride`` feature map upsampled to input pixels (each cell a stride x stride square, nearest) and
    cropped to ``image_hw`` (the resized image without the model input's padding)."""
    up = np.repeat(np.repeat(values, stride, axis=0), stride, axis=1)
    return up[:image_hw[0], :image_hw[1]]


# -------------------------------------------------------------------------------------------------------- input
class Prepared:
    """The image as the model gets it: ``tensor`` (1, 3, H, W), normalised and padded, and the geometry back."""

    def __init__(self, original: np.ndarray, resized_hw: Tuple[int, int], tensor, note: str):
        self.original = original  # (H0, W0, 3) uint8 RGB
        self.resized_hw = resized_hw  # the image inside the model input (before the input's padding)
        self.tensor = tensor
        self.note = note

    @property
    def original_hw(self) -> Tuple[int, int]:
        return self.original.shape[0], self.original.shape[1]

    @property
    def input_hw(self) -> Tuple[int, int]:
        return tuple(self.tensor.shape[-2:])

    def to_resized(self, x: float, y: float) -> Tuple[float, float]:
        """Original pixel coordinates (pixel centres at integers) -> resized-image coordinates."""
        (h0, w0), (h, w) = self.original_hw, self.resized_hw
        return (x + 0.5) * w / w0 - 0.5, (y + 0.5) * h / h0 - 0.5

    def to_original(self, x: float, y: float) -> Tuple[float, float]:
        (h0, w0), (h, w) = self.original_hw, self.resized_hw
        return (x + 0.5) * w0 / w - 0.5, (y + 0.5) * h0 / h - 0.5


def read_image(path: str) -> np.ndarray:
    from PIL import Image, ImageOps
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert('RGB'))


def prepare(original: np.ndarray, scale: Sequence[int], mean, std, bgr: bool, pad_divisor: int) -> Prepared:
    import torch
    from PIL import Image
    height, width = keep_ratio_size(original.shape[0], original.shape[1], scale)
    resized = np.asarray(Image.fromarray(original).resize((width, height), Image.BILINEAR), dtype=np.float32)
    if bgr:
        resized = resized[..., ::-1]
    x = (resized - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    if pad_divisor > 1:
        pad_h, pad_w = (-height) % pad_divisor, (-width) % pad_divisor
        tensor = torch.nn.functional.pad(tensor, (0, pad_w, 0, pad_h))
    note = (f'{original.shape[1]}x{original.shape[0]} -> {width}x{height}'
            + (f', padded to {tensor.shape[-1]}x{tensor.shape[-2]}' if tuple(tensor.shape[-2:]) != (height, width)
               else '') + (', BGR' if bgr else ''))
    return Prepared(original, (height, width), tensor, note)


def config_input_settings(cfg) -> Tuple[Optional[Tuple[int, ...]], tuple, tuple, bool, int]:
    """(resize scale, mean, std, BGR input, pad divisor) from a config's test pipeline and data preprocessor."""
    preprocessor = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    mean = tuple(preprocessor.get('mean') or IMAGENET_MEAN)
    std = tuple(preprocessor.get('std') or IMAGENET_STD)
    bgr = not preprocessor.get('bgr_to_rgb', False) and not preprocessor.get('rgb_to_bgr', False)
    pad_divisor = int(preprocessor.get('pad_size_divisor', 1) or 1)
    pipeline = cfg.get('test_pipeline')
    if not pipeline:
        dataset = (cfg.get('test_dataloader') or {}).get('dataset', {})
        while isinstance(dataset, dict) and 'dataset' in dataset and 'pipeline' not in dataset:
            dataset = dataset['dataset']
        pipeline = dataset.get('pipeline', []) if isinstance(dataset, dict) else []
    scale = None
    for step in pipeline or []:
        if str(step.get('type', '')).split('.')[-1] == 'Resize' and step.get('scale') and step.get('keep_ratio'):
            value = step['scale']
            scale = (int(value), ) if isinstance(value, (int, float)) else tuple(int(v) for v in value)
            break
    return scale, mean, std, bgr, pad_divisor


# -------------------------------------------------------------------------------------------------------- model
def build_model(args, parser: argparse.ArgumentParser):
    """The backbone (all four stage outputs, eval mode, seeded random weights) and its input settings."""
    import torch
    from mmmambavision import MambaVision
    if args.arch is not None:
        kwargs = dict(arch=args.arch)
        settings = ((DEFAULT_SHORT_SIDE, ), IMAGENET_MEAN, IMAGENET_STD, False, 1)
        name = f'MambaVision-{args.arch}'
    else:
        from mmengine.config import Config
        try:
            cfg = Config.fromfile(args.config)
            if args.cfg_options:
                cfg.merge_from_dict(args.cfg_options)
        except Exception as error:  # a config that does not parse: say which argument
            parser.error(f'argument --config: cannot read {args.config}: {error}')
        backbone = cfg.get('model', {}).get('backbone')
        if not backbone or str(backbone.get('type', '')).split('.')[-1] != 'MambaVision':
            parser.error(f'argument --config: {args.config} has no MambaVision backbone (model.backbone.type)')
        kwargs = {k: v for k, v in backbone.items() if k not in ('type', 'init_cfg', '_delete_', 'pretrained')}
        settings = config_input_settings(cfg)
        name = f'{osp.basename(args.config)} backbone'
    kwargs['out_indices'] = (0, 1, 2, 3)
    if args.window_size is not None:
        kwargs['window_size'] = tuple(args.window_size)
    torch.manual_seed(0)
    try:
        model = MambaVision(**kwargs)
    except (ValueError, TypeError) as error:
        message = str(error)
        argument = '--window-size' if 'window_size' in message else '--arch' if args.arch else '--config'
        parser.error(f'argument {argument}: {message}')
    model.init_weights()  # the seeded random initialisation (init_cfg is not used)
    return model.eval(), settings, name


def load_weights(model, path: str, parser: argparse.ArgumentParser) -> str:
    """Load ``path`` into the backbone with ``load_pretrained`` (prefix ``backbone.`` when the file has it); a
    file that does not fit the model is an error naming --checkpoint."""
    from mmmambavision.checkpoint import extract_state_dict, load_checkpoint_file, load_pretrained
    try:
        state_dict = extract_state_dict(load_checkpoint_file(path, 'cpu'))
    except Exception as error:
        parser.error(f'argument --checkpoint: cannot read {path}: {error}')
    prefix = 'backbone.' if any(key.startswith('backbone.') for key in state_dict) else None
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    own = model.state_dict()
    matched = [k for k in state_dict if k in own]
    wrong = [k for k in matched if tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if not matched or wrong:
        parser.error(f'argument --checkpoint: {path} does not fit this backbone ('
                     + (f'shape of {wrong[0]}: {tuple(state_dict[wrong[0]].shape)} in the file, '
                        f'{tuple(own[wrong[0]].shape)} in the model; another --arch?' if wrong
                        else 'no MambaVision parameter names') + ')')
    missing = [k for k in own if k not in state_dict and not k.startswith('outnorm')]
    load_pretrained(model, path, prefix=prefix)
    if missing:
        log(f'warning: {len(missing)} backbone tensors are not in the file and stay random, e.g. {missing[0]}')
    return f'{osp.basename(path)}' + (' (backbone.*)' if prefix else '')


def run(model, image: Prepared, stage: int, point: Tuple[float, float]) -> Dict:
    """One forward with the stage's attention recorded at the query token; the panels' data."""
    import torch
    from mmmambavision.models.layers import Attention, record_attention
    level = model.levels[stage - 1]
    map_hw = stage_map_size(image.input_hw, stage)
    stride = 2 ** (stage + 1)
    x_r, y_r = image.to_resized(*point)
    cell = (min(max(int((y_r + 0.5) // stride), 0), map_hw[0] - 1),
            min(max(int((x_r + 0.5) // stride), 0), map_hw[1] - 1))
    window, token = query_token(cell, map_hw, level.window_size)
    outputs = {}
    hooks = [model.levels[i].register_forward_hook(
        lambda module, inputs, output, i=i: outputs.__setitem__(i, output.detach())) for i in range(4)]
    try:
        with torch.no_grad(), record_attention(level, queries=[token]) as modules:
            model(image.tensor)
    finally:
        for hook in hooks:
            hook.remove()
    if tuple(outputs[stage - 1].shape[-2:]) != map_hw:  # the geometry above must be the model's
        raise RuntimeError(f'stage {stage} map is {tuple(outputs[stage - 1].shape[-2:])}, expected {map_hw}')
    win_h, win_w, _, _ = window_geometry(map_hw, level.window_size)
    blocks = []
    for index, block in enumerate(level.blocks):
        if not isinstance(block.mixer, Attention):
            continue
        weights = block.mixer.attn_weights[window, :, 0].mean(0).double().cpu().numpy()  # heads averaged
        on_map, _ = window_weights_on_map(weights, cell, map_hw, level.window_size)
        # padding: the window's tokens beyond the map and the tokens wholly on the input's own padding
        image_cells = stage_map_size(image.resized_hw, stage)
        padding_share = 1 - float(np.nansum(on_map[:image_cells[0], :image_cells[1]]) / weights.sum())
        blocks.append(dict(block=index, heads=block.mixer.num_heads, weights=weights,
                           image=map_to_image(on_map, stride, image.resized_hw), padding_share=padding_share))
    assert all(m.attn_weights is not None for m in modules)
    energies = []
    for i in range(4):
        feature = outputs[i][0].double()
        energy = map_to_image(feature.pow(2).mean(0).cpu().numpy(), 2 ** (i + 2), image.resized_hw)
        low, high = energy.min(), energy.max()
        energies.append(dict(stage=i + 1, channels=feature.shape[0], map_hw=tuple(feature.shape[-2:]),
                             image=(energy - low) / (high - low) if high > low else np.zeros_like(energy)))
    return dict(stage=stage, cell=cell, map_hw=map_hw, stride=stride, window=(win_h, win_w),
                window_size=level.window_size, token=token, window_index=window, blocks=blocks, energies=energies)


# ------------------------------------------------------------------------------------------------------ drawing
def figure_layout(num_blocks: int, image_hw: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(columns, rows of the image and attention panels, figure width px, figure height px) at 100 dpi."""
    columns = max(4, min(1 + num_blocks, 5))
    top_rows = math.ceil((1 + num_blocks) / columns)
    panel_h = round(PANEL_PX * image_hw[0] / image_hw[1])
    width = columns * (PANEL_PX + COLORBAR_PX)
    height = SUPTITLE_PX + (top_rows + 1) * (panel_h + TITLE_PX)
    return columns, top_rows, width, height


def png_size(num_blocks: int, image_hw: Tuple[int, int], dpi: float) -> Tuple[int, int]:
    """(width, height) in pixels of the PNG for this many attention blocks and image shape (height, width)."""
    _, _, width, height = figure_layout(num_blocks, image_hw)
    return int(round(width * dpi / 100)), int(round(height * dpi / 100))


def draw(result: Dict, image: Prepared, point: Tuple[float, float], title: str, out: str, dpi: float) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    h0, w0 = image.original_hw
    extent = (-0.5, w0 - 0.5, h0 - 0.5, -0.5)
    gray = image.original.astype(np.float32).mean(-1)
    columns, top_rows, width, height = figure_layout(len(result['blocks']), image.original_hw)
    width, height = png_size(len(result['blocks']), image.original_hw, dpi)
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout='constrained')
    fig.get_layout_engine().set(w_pad=0.04, h_pad=0.04, wspace=0.02, hspace=0.04)
    grid = fig.add_gridspec(top_rows + 1, columns)
    fig.suptitle(title, fontsize=10.5)
    stride, (win_h, win_w) = result['stride'], result['window']
    cell = result['cell']

    def to_original_box(top, left, bottom, right):  # feature cells -> original pixel box
        x0, y0 = image.to_original(left * stride - 0.5, top * stride - 0.5)
        x1, y1 = image.to_original(min(right * stride, image.resized_hw[1]) - 0.5,
                                   min(bottom * stride, image.resized_hw[0]) - 0.5)
        return x0, y0, x1 - x0, y1 - y0

    def mark(ax, window_box=True):
        ax.plot(*point, marker='+', color='cyan', markersize=14, markeredgewidth=2.2)
        ax.plot(*point, marker='o', color='cyan', markersize=16, markerfacecolor='none', markeredgewidth=1.2)
        if window_box:
            top, left = (cell[0] // win_h) * win_h, (cell[1] // win_w) * win_w
            bottom, right = min(top + win_h, result['map_hw'][0]), min(left + win_w, result['map_hw'][1])
            x, y, w, h = to_original_box(top, left, bottom, right)
            for color, width in (('black', 2.6), ('white', 1.3)):  # visible on light and dark backgrounds
                ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=color, linestyle='--', linewidth=width))
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_xticks([])
        ax.set_yticks([])

    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(image.original, extent=extent)
    x, y, w, h = to_original_box(cell[0], cell[1], cell[0] + 1, cell[1] + 1)
    ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor='cyan', linewidth=1.5))
    mark(ax)
    window_text = 'whole map' if result['window_size'] is None else f'{win_h}x{win_w} window'
    ax.set_title(f'query point ({point[0]:g}, {point[1]:g})\nstage-{result["stage"]} token (row {cell[0]}, col '
                 f'{cell[1]}) of {result["map_hw"][0]}x{result["map_hw"][1]}\nits window dashed', fontsize=8.5)
    for number, block in enumerate(result['blocks'], start=1):
        ax = fig.add_subplot(grid[number // columns, number % columns])
        ax.imshow(gray, cmap='gray', extent=extent, vmin=0, vmax=255)
        values = block['image']
        # min-max over the window: the colour bar gives the weights; a nearly uniform (untrained) map still shows
        # its structure
        shown = ax.imshow(np.ma.masked_invalid(values), cmap='inferno', alpha=0.75, vmin=np.nanmin(values),
                          vmax=np.nanmax(values), extent=extent, interpolation='nearest')
        mark(ax)
        padding = block['padding_share']
        ax.set_title(f'stage {result["stage"]}, block {block["block"]}: attention\n{block["heads"]} heads averaged, '
                     f'{window_text}' + (f'\n{100 * padding:.0f}% of the weight on padding' if padding >= 0.005
                                         else '\nno weight on padding' if result['window_size'] else '\n'),
                     fontsize=8.5)
        bar = fig.colorbar(shown, ax=ax, fraction=0.07, pad=0.02)
        bar.ax.tick_params(labelsize=7)
        bar.set_label(f'weight (uniform: {1 / (win_h * win_w):.2g})', fontsize=7.5)
    for i, energy in enumerate(result['energies']):
        ax = fig.add_subplot(grid[top_rows, i])
        ax.imshow(gray, cmap='gray', extent=extent, vmin=0, vmax=255)
        shown = ax.imshow(energy['image'], cmap='viridis', alpha=0.85, vmin=0, vmax=1, extent=extent,
                          interpolation='nearest')
        mark(ax, window_box=False)
        ax.set_title(f'stage {energy["stage"]} output energy\nmean x\u00b2 over {energy["channels"]} channels\n'
                     f'stride {2 ** (i + 2)}, {energy["map_hw"][0]}x{energy["map_hw"][1]} map', fontsize=8.5)
        bar = fig.colorbar(shown, ax=ax, fraction=0.07, pad=0.02)
        bar.ax.tick_params(labelsize=7)
        bar.set_label('min-max scaled', fontsize=7.5)
    free = [(r, c) for r in range(top_rows) for c in range(columns) if r * columns + c > len(result['blocks'])]
    free += [(top_rows, c) for c in range(4, columns)]
    if free:  # a key in the first empty slot
        ax = fig.add_subplot(grid[free[0]])
        ax.axis('off')
        ax.text(0, 1, HOW_TO_READ, va='top', ha='left', fontsize=8.5, transform=ax.transAxes)
    directory = osp.dirname(osp.abspath(out))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.splitlines()[1:]))
    parser.add_argument('image', metavar='IMAGE', help='an image file (anything PIL reads)')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--arch', choices=ARCHS, help='the MambaVision size (ImageNet input settings)')
    source.add_argument('--config', metavar='CFG', help='an mmdet / mmseg config with a MambaVision backbone '
                        '(its backbone, test resize and normalisation)')
    parser.add_argument('--checkpoint', metavar='CKPT', help='weights: an ImageNet file or an mmdet / mmseg '
                        'checkpoint (backbone.* keys); without it the weights are random')
    parser.add_argument('--stage', type=int, choices=(3, 4), default=3,
                        help='the hybrid stage whose attention blocks to show, 3 or 4 as in the paper (default 3)')
    parser.add_argument('--point', type=float, nargs=2, metavar=('X', 'Y'),
                        help='the query point in pixels of the original image, x right, y down (default: centre)')
    parser.add_argument('--window-size', type=window_side, nargs=4, metavar='W',
                        help='window side per stage (default: the arch\'s classification windows 8 8 14 7, or the '
                        'config\'s); "none" for stage 3 / 4: the whole map')
    parser.add_argument('--scale', type=int, nargs='+', metavar='S',
                        help='keep-ratio resize: one value = the shorter side, two = mmcv\'s (long, short) bound '
                        f'(default: {DEFAULT_SHORT_SIDE} for --arch, the test pipeline\'s Resize for --config)')
    parser.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE', default=None,
                        help='--config only: overrides, e.g. model.backbone.window_size="(8,8,56,28)"')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default=None,
                        help='where to run the forward pass (default: cuda when available, else cpu)')
    parser.add_argument('--dpi', type=float, default=100, help='resolution of the PNG (default 100)')
    parser.add_argument('--out', required=True, metavar='OUT.png', help='the PNG to write')
    args = parser.parse_args(argv)
    if not osp.isfile(args.image):
        parser.error(f'argument IMAGE: file not found: {args.image}')
    if args.config is not None and not osp.isfile(args.config):
        parser.error(f'argument --config: file not found: {args.config}')
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        parser.error(f'argument --checkpoint: file not found: {args.checkpoint}')
    if args.cfg_options and args.config is None:
        parser.error('argument --cfg-options: applies to --config only')
    if args.cfg_options:
        from mmengine.config import DictAction  # parsed here: the other errors come without importing mmengine
        namespace = argparse.Namespace()
        DictAction(option_strings=['--cfg-options'], dest='cfg_options')(parser, namespace, args.cfg_options)
        args.cfg_options = namespace.cfg_options
    if args.scale is not None and (len(args.scale) > 2 or min(args.scale) < 32):
        parser.error(f'argument --scale: one or two ints of at least 32, got {" ".join(map(str, args.scale))}')
    if not args.out.lower().endswith('.png'):
        parser.error(f'argument --out: expected a .png file name, got {args.out}')
    if not 20 <= args.dpi <= 600:
        parser.error(f'argument --dpi: expected 20..600, got {args.dpi:g}')
    return args, parser


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args, parser = parse_args(argv)
    try:
        original = read_image(args.image)
    except Exception as error:
        parser.error(f'argument IMAGE: cannot read {args.image} as an image: {error}')
    h0, w0 = original.shape[:2]
    point = tuple(args.point) if args.point is not None else ((w0 - 1) / 2, (h0 - 1) / 2)
    if not (0 <= point[0] <= w0 - 1 and 0 <= point[1] <= h0 - 1):
        parser.error(f'argument --point: ({point[0]:g}, {point[1]:g}) is outside the image; allowed: '
                     f'0 <= X <= {w0 - 1}, 0 <= Y <= {h0 - 1} (pixels of the {w0}x{h0} original)')
    start = time.perf_counter()
    log('building the model' + (f' from {args.config}' if args.config else f' MambaVision-{args.arch}'))
    model, (scale, mean, std, bgr, pad_divisor), name = build_model(args, parser)
    if args.scale is not None:
        scale = tuple(args.scale)
    if scale is None:
        parser.error(f'argument --scale: {args.config} has no keep-ratio Resize in its test pipeline; give --scale')
    if args.checkpoint:
        log(f'loading {args.checkpoint}')
        weights = load_weights(model, args.checkpoint, parser)
    else:
        weights = None
        log('note: no --checkpoint, the weights are random (seeded): the maps show an untrained model')
    import torch
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('argument --device: cuda requested but torch sees no CUDA device; allowed here: cpu')
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    image = prepare(original, scale, mean, std, bgr, pad_divisor)
    model.to(device)
    image.tensor = image.tensor.to(device)
    stage_blocks = [b for b in model.levels[args.stage - 1].blocks if type(b.mixer).__name__ == 'Attention']
    if not stage_blocks:
        parser.error(f'argument --stage: stage {args.stage} of this model has no attention block')
    log(f'forward pass on {device.type}, {image.note} '
        f'(stage {args.stage}: {len(stage_blocks)} attention blocks recorded)')
    result = run(model, image, args.stage, point)
    log('drawing')
    window_text = 'whole maps' if result['window_size'] is None else f'window {result["window_size"]}'
    title = (f'{name}, stage {args.stage} window attention from ({point[0]:g}, {point[1]:g}) and stage energies; '
             f'input {image.note}, {window_text}\n'
             + (f'weights: {weights}' if weights else 'RANDOM WEIGHTS: an untrained model (no --checkpoint), '
                'no learnt pattern to read'))
    draw(result, image, point, title, args.out, args.dpi)
    size = png_size(len(result['blocks']), image.original_hw, args.dpi)
    log(f'wrote {args.out} ({size[0]}x{size[1]} px) in {time.perf_counter() - start:.1f} s')
    result.update(out=args.out, png_size=size, point=point, random_weights=weights is None, input_note=image.note)
    return result


if __name__ == '__main__':
    main()
