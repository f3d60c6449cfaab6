"""Every test starts from the same random state.

torch 2.13 seeds its default generator from the operating system in each new process (older releases started every
process from one fixed seed), so a test that draws inputs without its own generator would get different inputs in
each run and a tolerance it passes once could fail on the next. Seeding here makes each test's inputs the same in
every run and independent of the tests run before it."""
import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _fixed_random_state():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _forget_visualizers():
    """mmengine keeps every visualizer in a process-wide registry by name, and mmdet's / mmseg's configs and
    inferencers all name theirs 'visualizer': one left behind by a seg inferencer test would be handed to a later
    det runner (DetVisualizationHook then calls SegLocalVisualizer.add_datasample). Each test forgets the
    visualizers it created, as separate processes would."""
    try:
        from mmengine.visualization import Visualizer
    except ImportError:  # pragma: no cover - mmengine is always installed here
        yield
        return

    def classes():
        found, todo = [], [Visualizer]
        while todo:
            cls = todo.pop()
            found.append(cls)
            todo.extend(cls.__subclasses__())
        return found

    before = {cls: set(cls._instance_dict) for cls in classes()}
    yield
    for cls in classes():
        for name in [n for n in cls._instance_dict if n not in before.get(cls, ())]:
            del cls._instance_dict[name]
