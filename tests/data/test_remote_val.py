"""``data.val`` (validation pairs during training) from a URL: a caption index or a captioned image folder in a
bucket (local moto S3 server) gives the same pairs as the same files on disk."""

import numpy as np
import pytest
from test_remote_folders import make_tree, upload

from openeva.train.config import DataConfig
from openeva.train.data import build_val_pairs


def _pairs(ds):
    return [(np.asarray(image).tobytes(), text) for image, text in (ds[i] for i in range(len(ds))) if image is not None]


def test_val_pairs_from_s3_equal_disk(tmp_path, s3):
    url = upload(s3, tmp_path, make_tree(tmp_path))
    for where in ("pairs/captions.csv", "pairs/folder"):
        remote = build_val_pairs(DataConfig(val=f"{url}/{where}", val_num_samples=4), None, None, 12, 0)
        disk = build_val_pairs(DataConfig(val=str(tmp_path / where), val_num_samples=4), None, None, 12, 0)
        assert len(remote) == len(disk) == 4 and _pairs(remote) == _pairs(disk) and _pairs(disk)
    with pytest.raises(FileNotFoundError, match="validation data not found: s3://shards/data/nothing.csv"):
        build_val_pairs(DataConfig(val=f"{url}/nothing.csv"), None, None, 12, 0)
