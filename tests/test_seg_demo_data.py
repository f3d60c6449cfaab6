"""The synthetic ADE20K-layout generator: layout, label convention, determinism."""
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from mmmambavision.testing.ade20k_demo import DEMO_CLASSES, generate_ade20k_demo, is_generated


def listing(root):
    return sorted(osp.relpath(osp.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_writes_the_ade20k_layout(tmp_path):
    assert not is_generated(str(tmp_path))
    counts = generate_ade20k_demo(str(tmp_path), num_train=3, num_val=2, image_size=(48, 32))
    assert counts == {'training': 3, 'validation': 2}
    assert is_generated(str(tmp_path))
    files = listing(str(tmp_path))
    assert 'images/training/ADE_train_00000003.jpg' in files
    assert 'annotations/training/ADE_train_00000003.png' in files
    assert 'images/validation/ADE_val_00000002.jpg' in files
    assert 'annotations/validation/ADE_val_00000002.png' in files
    assert len(files) == 10
    image = Image.open(tmp_path / 'images/training/ADE_train_00000001.jpg')
    label = Image.open(tmp_path / 'annotations/training/ADE_train_00000001.png')
    assert image.mode == 'RGB' and image.size == (48, 32)
    assert label.mode == 'L' and label.size == (48, 32)


def test_labels_use_zero_as_ignore_and_one_to_k_as_classes(tmp_path):
    generate_ade20k_demo(str(tmp_path), num_train=8, num_val=0, image_size=(64, 64))
    labels = np.stack([np.array(Image.open(tmp_path / 'annotations/training' / f))
                       for f in sorted(os.listdir(tmp_path / 'annotations/training'))])
    values = set(np.unique(labels).tolist())
    assert 0 in values  # region borders
    assert values <= set(range(len(DEMO_CLASSES) + 1))
    assert len(values - {0}) >= 4
    assert (labels == 0).mean() < 0.2


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    for name, seed in (('a', 0), ('b', 0), ('c', 1)):
        generate_ade20k_demo(str(tmp_path / name), num_train=1, num_val=0, image_size=(32, 32), seed=seed)
    read = lambda name: np.array(Image.open(tmp_path / name / 'annotations/training/ADE_train_00000001.png'))
    assert (read('a') == read('b')).all()
    assert not (read('a') == read('c')).all()


def test_rejects_more_classes_than_it_can_name(tmp_path):
    with pytest.raises(ValueError, match='num_classes'):
        generate_ade20k_demo(str(tmp_path), num_classes=len(DEMO_CLASSES) + 1)
