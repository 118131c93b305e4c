"""Fixtures for the serve tests: a saved tiny CLIP, a folder of rendered shapes with bad files among them."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch

from openeva.data.synthetic import ShapesDataset


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """EVA02-test with fixed random weights, saved as an openeva checkpoint directory (a stable model identity)."""
    import openeva

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("clip") / "EVA02-test-seed0"
    openeva.save_model(openeva.create_model("EVA02-test"), out)
    return str(out)


@pytest.fixture(scope="session")
def other_clip_dir(tmp_path_factory):
    import openeva

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("clip") / "EVA02-E-test-seed1"
    openeva.save_model(openeva.create_model("EVA02-E-test"), out)
    return str(out)


def render_folder(root, n: int, size: int = 40, seed: int = 0, bad: bool = True):
    """``n`` captioned shape images (half in a sub-folder); with ``bad``: a corrupt JPEG, a truncated PNG and
    a non-image file. Returns the folder."""
    ds = ShapesDataset(n, image_size=size, seed=seed, split="all")
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, caption, attrs = ds.render(i)
        folder = root / "sub" if i % 2 else root
        image.save(folder / f"{i:04d}_{attrs.color}_{attrs.shape}.png")
        (folder / f"{i:04d}_{attrs.color}_{attrs.shape}.txt").write_text(caption)
    if bad:
        (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
        buf = io.BytesIO()
        ds.render(0)[0].save(buf, format="PNG")
        (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        (root / "notes.md").write_text("not an image")
    return root


def write_tar_shards(root, n: int, per_shard: int, size: int = 32):
    ds = ShapesDataset(n, image_size=size, seed=3, split="all")
    root.mkdir(parents=True, exist_ok=True)
    for s in range(0, n, per_shard):
        with tarfile.open(root / f"shard-{s // per_shard:03d}.tar", "w") as tar:
            for i in range(s, min(s + per_shard, n)):
                image, caption, _ = ds.render(i)
                buf = io.BytesIO()
                image.save(buf, format="JPEG")
                for name, data in ((f"{i:05d}.jpg", buf.getvalue()), (f"{i:05d}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    return render_folder(tmp_path_factory.mktemp("shapes") / "photos", 24)


@pytest.fixture(scope="session")
def make_folder():
    return render_folder


@pytest.fixture(scope="session")
def make_shards():
    return write_tar_shards


@pytest.fixture(scope="session")
def build_index():
    """``build_index(images_folder, root, encoder) -> index folder``: embed the folder, index its vectors."""

    def build(images, root, encoder):
        from openeva.index import Index
        from openeva.serve import embed

        embed(images, out=root / "emb", encoder=encoder, progress=False)
        Index.build([root / "emb"], root / "index")
        return root / "index"

    return build
