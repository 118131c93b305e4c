"""Fixtures for evaluation tests (fakes live in evalfakes.py, a name no other test folder uses)."""

import numpy as np
import pytest
import torchvision.transforms as T
from evalfakes import NAMES, solid_image


@pytest.fixture
def preprocess():
    return T.Compose([T.Resize((8, 8)), T.ToTensor()])


@pytest.fixture
def make_folder(tmp_path):
    """Build ``root/<name>/<i>.png`` with ``per_class`` images per class; returns the root."""

    def build(root_name="ds", names=NAMES[:4], per_class=3, jitter=0, seed=0):
        rng = np.random.default_rng(seed)
        root = tmp_path / root_name
        for k, name in enumerate(names):
            (root / name).mkdir(parents=True)
            for i in range(per_class):
                solid_image(NAMES.index(name) if name in NAMES else k, jitter=jitter, rng=rng).save(
                    root / name / f"{i}.png")
        return root

    return build
