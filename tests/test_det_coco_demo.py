"""The synthetic COCO-layout generator: the real category table, consistent polygons, boxes and areas."""
import json
import os.path as osp

import numpy as np
import pytest

from mmmambavision.testing.coco_demo import (COCO_CATEGORIES, DEMO_CATEGORIES, config_options,
                                              generate_coco_demo, is_generated)


def test_category_table_is_mmdets_coco_table():
    mmdet_datasets = pytest.importorskip('mmdet.datasets')
    assert tuple(name for _, name, _ in COCO_CATEGORIES) == mmdet_datasets.CocoDataset.METAINFO['classes']
    ids = [cat_id for cat_id, _, _ in COCO_CATEGORIES]
    assert len(ids) == 80 and ids[0] == 1 and ids[-1] == 90 and 12 not in ids and ids == sorted(ids)
    assert set(DEMO_CATEGORIES) <= {name for _, name, _ in COCO_CATEGORIES}


def test_generated_split_is_a_coco_instance_file(tmp_path):
    coco_module = pytest.importorskip('pycocotools.coco')
    root = str(tmp_path / 'synthcoco')
    assert not is_generated(root)
    files = generate_coco_demo(root, num_train=6, num_val=3, image_size=(96, 128), seed=1)
    assert is_generated(root)
    coco = coco_module.COCO(files['val2017'])
    assert len(coco.getImgIds()) == 3 and len(coco.getCatIds()) == 80
    with open(files['train2017']) as f:
        content = json.load(f)
    assert all(osp.isfile(osp.join(root, 'train2017', image['file_name'])) for image in content['images'])
    coco = coco_module.COCO(files['train2017'])
    assert coco.getAnnIds()
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann['bbox']
        assert abs(xs.min() - x) <= 1.5 and abs(ys.min() - y) <= 1.5
        assert abs(xs.max() + 1 - (x + w)) <= 1.5 and abs(ys.max() + 1 - (y + h)) <= 1.5
        assert abs(mask.sum() - ann['area']) <= 0.05 * ann['area'] + 4
        assert ann['iscrowd'] == 0 and len(ann['segmentation'][0]) >= 6


def test_generation_is_deterministic(tmp_path):
    a = generate_coco_demo(str(tmp_path / 'a'), num_train=2, num_val=1, seed=5)
    b = generate_coco_demo(str(tmp_path / 'b'), num_train=2, num_val=1, seed=5)
    assert open(a['train2017']).read() == open(b['train2017']).read()


def test_config_options_point_every_loader_at_the_root():
    options = config_options('/data/x')
    assert options['test_dataloader.dataset.data_root'] == '/data/x/'
    assert options['val_evaluator.ann_file'] == '/data/x/annotations/instances_val2017.json'
