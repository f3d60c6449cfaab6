"""A small synthetic segmentation data set in the ADE20K directory layout, for demos and tests.

The layout is the one mmseg's ``ADE20KDataset`` reads::

    <root>/images/training/ADE_train_00000001.jpg
    <root>/annotations/training/ADE_train_00000001.png
    <root>/images/validation/ADE_val_00000001.jpg
    <root>/annotations/validation/ADE_val_00000001.png

Annotations are single-channel PNGs in ADE20K's convention: 0 means "other / ignore" and classes are 1..K,
so a config with ``reduce_zero_label=True`` maps 0 to 255 (ignored) and class k to k-1.

The scene is a Voronoi partition into a few regions plus a couple of ellipses; every region belongs to one class
and is painted with that class's colour and stripe texture (orientation and frequency differ per class), with
per-region colour jitter and pixel noise. Region borders are drawn dark and labelled 0. The task is learnable from
local appearance (colour and texture survive mmseg's photometric distortion reasonably well), so a short training
run reaches a mIoU far above chance.

Usage::

    python -m mmmambavision.testing.ade20k_demo data/synthade --num-train 64 --num-val 16
"""
import argparse
import os
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

# The first classes of ADE20K, spelled exactly as in mmseg's ADE20KDataset.METAINFO (note the trailing space of
# 'bed '), so the demo config can keep type='ADE20KDataset' and restrict it to these classes through metainfo.
DEMO_CLASSES: Tuple[str, ...] = ('wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed ')

# One well-separated base colour (RGB) per class.
_CLASS_COLOURS = np.array([
    [200, 60, 60], [60, 170, 60], [70, 90, 220], [220, 200, 60],
    [170, 70, 200], [60, 200, 200], [235, 140, 40], [120, 120, 120],
], dtype=np.float32)
# Stripe texture per class: (angle in degrees, period in pixels).
_CLASS_TEXTURES = [(0, 6), (45, 9), (90, 5), (135, 8), (20, 12), (70, 4), (110, 10), (160, 7)]

SPLITS = (('training', 'ADE_train'), ('validation', 'ADE_val'))


def _render_scene(rng: np.random.Generator, width: int, height: int,
                  num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one image (H, W, 3 uint8 RGB) and its label map (H, W uint8; 0 = ignore, 1..K = classes)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    num_seeds = int(rng.integers(3, 8))
    seeds = rng.uniform([0, 0], [width, height], size=(num_seeds, 2)).astype(np.float32)
    dist = np.sqrt((xs[None] - seeds[:, 0, None, None])**2 + (ys[None] - seeds[:, 1, None, None])**2)
    order = np.sort(dist, axis=0)
    region = np.argmin(dist, axis=0)
    border = (order[1] - order[0]) < 1.5
    region_class = rng.integers(0, num_classes, size=num_seeds)
    label = region_class[region]

    # A few ellipses on top, so regions are not all convex polygons.
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        ax, ay = rng.uniform(0.08, 0.3) * width, rng.uniform(0.08, 0.3) * height
        inside = ((xs - cx) / ax)**2 + ((ys - cy) / ay)**2
        label = np.where(inside <= 1.0, rng.integers(0, num_classes), label)
        border |= np.abs(np.sqrt(inside) - 1.0) * min(ax, ay) < 0.75

    image = np.zeros((height, width, 3), dtype=np.float32)
    for cls in np.unique(label):
        mask = label == cls
        angle, period = _CLASS_TEXTURES[cls % len(_CLASS_TEXTURES)]
        theta = np.deg2rad(angle + rng.uniform(-10, 10))
        phase = rng.uniform(0, 2 * np.pi)
        stripes = np.sin(2 * np.pi * (xs * np.cos(theta) + ys * np.sin(theta)) / period + phase)
        colour = _CLASS_COLOURS[cls % len(_CLASS_COLOURS)] + rng.uniform(-25, 25, size=3)
        texture = colour[None, None] + 35.0 * stripes[..., None]
        image[mask] = texture[mask]
    image += rng.normal(0, 10, size=image.shape)
    image[border] = rng.uniform(0, 40)
    label = (label + 1).astype(np.uint8)
    label[border] = 0
    return np.clip(image, 0, 255).astype(np.uint8), label


def generate_ade20k_demo(root: str,
                         num_train: int = 64,
                         num_val: int = 16,
                         image_size: Tuple[int, int] = (128, 128),
                         num_classes: int = len(DEMO_CLASSES),
                         seed: int = 0) -> Dict[str, int]:
    """Write a synthetic data set in the ADE20K layout under ``root``.

    Args:
        root: Data set root; ``images/`` and ``annotations/`` are created below it.
        num_train: Number of training images.
        num_val: Number of validation images.
        image_size: (width, height) of every image.
        num_classes: Number of classes K (labels 1..K, 0 = ignore); at most ``len(DEMO_CLASSES)``.
        seed: Seed of the generator; the same arguments give the same files.

    Returns:
        The number of images written per split, e.g. ``{'training': 64, 'validation': 16}``.
    """
    if not 1 <= num_classes <= len(DEMO_CLASSES):
        raise ValueError(f'num_classes must be in [1, {len(DEMO_CLASSES)}], got {num_classes}')
    width, height = image_size
    rng = np.random.default_rng(seed)
    counts = {}
    for (split, prefix), count in zip(SPLITS, (num_train, num_val)):
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for index in range(1, count + 1):
            image, label = _render_scene(rng, width, height, num_classes)
            name = f'{prefix}_{index:08d}'
            Image.fromarray(image).save(osp.join(img_dir, name + '.jpg'), quality=95)
            Image.fromarray(label, mode='L').save(osp.join(ann_dir, name + '.png'))
        counts[split] = count
    return counts


def is_generated(root: str, splits: Sequence[str] = ('training', 'validation')) -> bool:
    """Whether ``root`` already holds images and annotations for every split."""
    for split in splits:
        for sub, suffix in (('images', '.jpg'), ('annotations', '.png')):
            folder = osp.join(root, sub, split)
            if not osp.isdir(folder) or not any(f.endswith(suffix) for f in os.listdir(folder)):
                return False
    return True


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description='Generate a synthetic data set in the ADE20K layout.')
    parser.add_argument('root', help='output folder (images/ and annotations/ go below it)')
    parser.add_argument('--num-train', type=int, default=64)
    parser.add_argument('--num-val', type=int, default=16)
    parser.add_argument('--size', type=int, nargs=2, default=(128, 128), metavar=('W', 'H'))
    parser.add_argument('--num-classes', type=int, default=len(DEMO_CLASSES))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    counts = generate_ade20k_demo(args.root, args.num_train, args.num_val, tuple(args.size), args.num_classes,
                                  args.seed)
    print(f'wrote {counts} to {args.root}')


if __name__ == '__main__':
    main()
