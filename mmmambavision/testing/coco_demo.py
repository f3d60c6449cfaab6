"""A small synthetic instance-segmentation data set in the COCO layout, for the detection demo and tests.

The layout is the one mmdet's ``CocoDataset`` reads with ``configs/det/*``'s ``data_root``::

    <root>/annotations/instances_train2017.json
    <root>/annotations/instances_val2017.json
    <root>/train2017/000000000001.jpg
    <root>/val2017/000000100001.jpg

The annotation files carry the real COCO category table (80 categories, COCO ids 1..90 with their gaps, names and
super-categories as in ``instances_val2017.json``), so a config keeps ``type='CocoDataset'`` and
``num_classes=80`` unchanged. Objects are drawn from a few of those categories (``DEMO_CATEGORIES``); each has its
own shape and colour, with jittered size, aspect, rotation and shade, on a noisy gradient background. Every
instance is one polygon (``segmentation=[[x1, y1, x2, y2, ...]]``) and the pixels painted are exactly that polygon,
so masks, boxes and areas agree. Objects do not overlap. The task is learnable from shape and colour: a longer
training run reaches a box AP far above zero (see docs/detection.md, The CPU demo).

Usage::

    python -m mmmambavision.testing.coco_demo data/synthcoco --num-train 64 --num-val 16
"""
import argparse
import json
import math
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

# COCO 2017 categories: (id, name, supercategory), as in the official annotation files.
COCO_CATEGORIES: Tuple[Tuple[int, str, str], ...] = (
    (1, 'person', 'person'), (2, 'bicycle', 'vehicle'), (3, 'car', 'vehicle'), (4, 'motorcycle', 'vehicle'),
    (5, 'airplane', 'vehicle'), (6, 'bus', 'vehicle'), (7, 'train', 'vehicle'), (8, 'truck', 'vehicle'),
    (9, 'boat', 'vehicle'), (10, 'traffic light', 'outdoor'), (11, 'fire hydrant', 'outdoor'),
    (13, 'stop sign', 'outdoor'), (14, 'parking meter', 'outdoor'), (15, 'bench', 'outdoor'),
    (16, 'bird', 'animal'), (17, 'cat', 'animal'), (18, 'dog', 'animal'), (19, 'horse', 'animal'),
    (20, 'sheep', 'animal'), (21, 'cow', 'animal'), (22, 'elephant', 'animal'), (23, 'bear', 'animal'),
    (24, 'zebra', 'animal'), (25, 'giraffe', 'animal'), (27, 'backpack', 'accessory'),
    (28, 'umbrella', 'accessory'), (31, 'handbag', 'accessory'), (32, 'tie', 'accessory'),
    (33, 'suitcase', 'accessory'), (34, 'frisbee', 'sports'), (35, 'skis', 'sports'),
    (36, 'snowboard', 'sports'), (37, 'sports ball', 'sports'), (38, 'kite', 'sports'),
    (39, 'baseball bat', 'sports'), (40, 'baseball glove', 'sports'), (41, 'skateboard', 'sports'),
    (42, 'surfboard', 'sports'), (43, 'tennis racket', 'sports'), (44, 'bottle', 'kitchen'),
    (46, 'wine glass', 'kitchen'), (47, 'cup', 'kitchen'), (48, 'fork', 'kitchen'), (49, 'knife', 'kitchen'),
    (50, 'spoon', 'kitchen'), (51, 'bowl', 'kitchen'), (52, 'banana', 'food'), (53, 'apple', 'food'),
    (54, 'sandwich', 'food'), (55, 'orange', 'food'), (56, 'broccoli', 'food'), (57, 'carrot', 'food'),
    (58, 'hot dog', 'food'), (59, 'pizza', 'food'), (60, 'donut', 'food'), (61, 'cake', 'food'),
    (62, 'chair', 'furniture'), (63, 'couch', 'furniture'), (64, 'potted plant', 'furniture'),
    (65, 'bed', 'furniture'), (67, 'dining table', 'furniture'), (70, 'toilet', 'furniture'),
    (72, 'tv', 'electronic'), (73, 'laptop', 'electronic'), (74, 'mouse', 'electronic'),
    (75, 'remote', 'electronic'), (76, 'keyboard', 'electronic'), (77, 'cell phone', 'electronic'),
    (78, 'microwave', 'appliance'), (79, 'oven', 'appliance'), (80, 'toaster', 'appliance'),
    (81, 'sink', 'appliance'), (82, 'refrigerator', 'appliance'), (84, 'book', 'indoor'), (85, 'clock', 'indoor'),
    (86, 'vase', 'indoor'), (87, 'scissors', 'indoor'), (88, 'teddy bear', 'indoor'),
    (89, 'hair drier', 'indoor'), (90, 'toothbrush', 'indoor'),
)

# The categories that appear in the images: name -> (shape, base RGB colour, aspect ratio range (w / h)).
DEMO_CATEGORIES: Dict[str, Tuple[str, Tuple[int, int, int], Tuple[float, float]]] = {
    'person': ('ellipse', (220, 50, 50), (0.45, 0.6)),
    'car': ('rectangle', (40, 80, 220), (1.6, 2.2)),
    'stop sign': ('octagon', (40, 180, 60), (1.0, 1.0)),
    'sports ball': ('ellipse', (240, 210, 40), (1.0, 1.0)),
    'kite': ('diamond', (200, 60, 200), (0.7, 0.9)),
    'pizza': ('triangle', (40, 200, 210), (1.0, 1.2)),
}

SPLITS = ('train2017', 'val2017')


def _shape_outline(shape: str, num_points: int = 24) -> np.ndarray:
    """Unit outline of a shape, centred at 0 with half-extent 1, as (N, 2) x/y points."""
    if shape == 'ellipse':
        angles = np.linspace(0, 2 * math.pi, num_points, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == 'rectangle':
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if shape == 'diamond':
        return np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], dtype=np.float64)
    if shape == 'triangle':
        return np.array([[0, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if shape == 'octagon':
        angles = np.linspace(0, 2 * math.pi, 8, endpoint=False) + math.pi / 8
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    raise ValueError(f'unknown shape {shape!r}')


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A low-saturation gradient with pixel noise, (H, W, 3) float in 0..255."""
    corners = rng.uniform(70, 170, size=(2, 2, 3))
    ys = np.linspace(0, 1, height)[:, None, None]
    xs = np.linspace(0, 1, width)[None, :, None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    image = top * (1 - ys) + bottom * ys
    grey = image.mean(axis=2, keepdims=True)
    image = 0.6 * grey + 0.4 * image  # desaturate so that object colours stand out
    return image + rng.normal(0, 8, size=image.shape)


def _place_polygon(rng: np.random.Generator, shape: str, aspect_range: Tuple[float, float], height: int,
                   width: int, size_range: Tuple[float, float]) -> np.ndarray:
    """A randomly sized, rotated and placed polygon (N, 2) lying inside the image."""
    outline = _shape_outline(shape)
    size = rng.uniform(*size_range) * min(height, width)
    aspect = rng.uniform(*aspect_range)
    half_w, half_h = size * math.sqrt(aspect) / 2, size / math.sqrt(aspect) / 2
    angle = rng.uniform(-0.35, 0.35) if shape != 'ellipse' or aspect != 1.0 else 0.0
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = (outline * [half_w, half_h]) @ rotation.T
    lo, hi = points.min(axis=0), points.max(axis=0)
    centre_x = rng.uniform(-lo[0] + 1, width - 1 - hi[0])
    centre_y = rng.uniform(-lo[1] + 1, height - 1 - hi[1])
    return points + [centre_x, centre_y]


def _boxes_overlap(box: Sequence[float], others: List[Sequence[float]], margin: float = 2.) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < ox1 + margin and ox0 < x1 + margin and y0 < oy1 + margin and oy0 < y1 + margin
               for ox0, oy0, ox1, oy1 in others)


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def render_image(rng: np.random.Generator, height: int, width: int, max_objects: int = 4,
                 size_range: Tuple[float, float] = (0.22, 0.45),
                 categories: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, List[dict]]:
    """One synthetic image (H, W, 3 uint8) and its instances: dicts with ``category``, ``polygon`` (N, 2)."""
    names = list(categories if categories is not None else DEMO_CATEGORIES)
    image = _background(rng, height, width)
    instances, boxes = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        name = names[int(rng.integers(len(names)))]
        shape, colour, aspect_range = DEMO_CATEGORIES[name]
        for _attempt in range(20):
            polygon = _place_polygon(rng, shape, aspect_range, height, width, size_range)
            box = (*polygon.min(axis=0), *polygon.max(axis=0))
            if not _boxes_overlap(box, boxes):
                break
        else:
            continue
        mask_image = Image.new('L', (width, height), 0)
        ImageDraw.Draw(mask_image).polygon([tuple(p) for p in polygon], fill=1)
        mask = np.asarray(mask_image, dtype=bool)
        if mask.sum() < 16:
            continue
        shade = np.clip(np.array(colour, np.float64) + rng.normal(0, 12, size=3), 0, 255)
        image[mask] = shade + rng.normal(0, 8, size=(int(mask.sum()), 3))
        boxes.append(box)
        instances.append(dict(category=name, polygon=polygon))
    return np.clip(image, 0, 255).astype(np.uint8), instances


def _annotation(ann_id: int, image_id: int, category_id: int, polygon: np.ndarray) -> dict:
    x0, y0 = polygon.min(axis=0)
    x1, y1 = polygon.max(axis=0)
    return dict(
        id=ann_id, image_id=image_id, category_id=category_id, iscrowd=0,
        segmentation=[[round(float(v), 2) for v in polygon.reshape(-1)]],
        area=round(_polygon_area(polygon), 2),
        bbox=[round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)])


def generate_split(root: str, split: str, num_images: int, image_size: Tuple[int, int], seed: int,
                   first_image_id: int, **render_kwargs) -> str:
    """Write one split's images and annotation file; returns the annotation file path."""
    height, width = image_size
    rng = np.random.default_rng(seed)
    image_dir = osp.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    name_to_id = {name: cat_id for cat_id, name, _ in COCO_CATEGORIES}
    images, annotations = [], []
    for index in range(num_images):
        image_id = first_image_id + index
        file_name = f'{image_id:012d}.jpg'
        pixels, instances = render_image(rng, height, width, **render_kwargs)
        Image.fromarray(pixels).save(osp.join(image_dir, file_name), quality=95)
        images.append(dict(id=image_id, file_name=file_name, height=height, width=width))
        for instance in instances:
            annotations.append(_annotation(len(annotations) + 1, image_id, name_to_id[instance['category']],
                                           instance['polygon']))
    ann_file = osp.join(root, 'annotations', f'instances_{split}.json')
    content = dict(
        info=dict(description='mmmambavision synthetic COCO-layout demo data', version='1.0'),
        licenses=[], images=images, annotations=annotations,
        categories=[dict(id=i, name=n, supercategory=s) for i, n, s in COCO_CATEGORIES])
    tmp_file = ann_file + '.tmp'
    with open(tmp_file, 'w') as f:
        json.dump(content, f)
    os.replace(tmp_file, ann_file)  # the annotation file appears last: its presence means the split is complete
    return ann_file


def generate_coco_demo(root: str, num_train: int = 64, num_val: int = 16, image_size: Tuple[int, int] = (128, 160),
                       seed: int = 0, **render_kwargs) -> Dict[str, str]:
    """Generate the synthetic data set under ``root``; returns ``{split: annotation file}``.

    Args:
        root: output folder (the config's ``data_root``).
        num_train: images in ``train2017``.
        num_val: images in ``val2017``.
        image_size: (height, width) of every image.
        seed: random seed; the same arguments give the same files.
        **render_kwargs: passed to :func:`render_image` (``max_objects``, ``size_range``, ``categories``).
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be >= 1, got {num_train}, {num_val}')
    return {
        'train2017': generate_split(root, 'train2017', num_train, image_size, seed, 1, **render_kwargs),
        'val2017': generate_split(root, 'val2017', num_val, image_size, seed + 1, 100001, **render_kwargs),
    }


def is_generated(root: str) -> bool:
    """Whether both annotation files exist under ``root`` (they are written after the images)."""
    return all(osp.isfile(osp.join(root, 'annotations', f'instances_{split}.json')) for split in SPLITS)


def config_options(root: str) -> Dict[str, str]:
    """``--cfg-options`` pointing a COCO-layout config (train / val / test loaders and evaluators) at ``root``."""
    root = root.rstrip('/') + '/'
    options = {f'{loader}.dataset.data_root': root
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    for evaluator in ('val_evaluator', 'test_evaluator'):
        options[f'{evaluator}.ann_file'] = root + 'annotations/instances_val2017.json'
    return options


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description='Generate a synthetic COCO-layout instance segmentation set.')
    parser.add_argument('root', help='output folder, e.g. data/synthcoco')
    parser.add_argument('--num-train', type=int, default=64)
    parser.add_argument('--num-val', type=int, default=16)
    parser.add_argument('--height', type=int, default=128)
    parser.add_argument('--width', type=int, default=160)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    files = generate_coco_demo(args.root, args.num_train, args.num_val, (args.height, args.width), args.seed)
    for split, ann_file in files.items():
        print(f'{split}: {ann_file}')


if __name__ == '__main__':
    main()
