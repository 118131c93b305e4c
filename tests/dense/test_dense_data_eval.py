"""Readers for segmentation folders and video folders, the mIoU metric, and ``openeva eval --task segmentation /
zeroshot_video`` end to end on the random tiny test CLIP (plumbing and errors; quality is measured in
test_dense_quality.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from openeva.cli import main
from openeva.data.segmentation import SegmentationFolder, write_segmentation_folder
from openeva.data.synthetic import ShapeScenes
from openeva.metrics import confusion, iou_metrics

pytest.importorskip("av")
from openeva.data.video import VideoFolder, VideoReadError, read_frames, sample_indices, write_video  # noqa: E402


def test_shape_scenes_masks_are_true():
    ds = ShapeScenes(6, image_size=32, seed=3, min_shapes=2, max_shapes=3)
    for i in range(len(ds)):
        image, mask = ds[i]
        assert mask.shape == (32, 32) and image.size == (32, 32)
        shapes = ds.scene(i)
        present = set(np.unique(mask).tolist()) - {0}
        assert present <= {ds.classes.index(a.color) + 1 for a in shapes} and len(present) >= 1
        rgb = np.asarray(image).astype(int)
        for k in present:  # the pixels a label covers are drawn in that label's colour (bright, not the grey bg)
            assert rgb[mask == k].max(axis=1).mean() > 120
        assert rgb[mask == 0].max(axis=1).mean() < 100
    assert ShapeScenes(1, min_shapes=0, max_shapes=0).caption(0) == "an empty background"
    with pytest.raises(ValueError):
        ShapeScenes(1, label_by="size")


def test_miou_metric():
    truth = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    m, per = iou_metrics(confusion(pred, truth, 3))
    # bg: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 1/2; ignore dropped
    assert per == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["miou_fg"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["pixel_acc"] == pytest.approx(4 / 6)


def test_segmentation_folder_errors(tmp_path):
    scenes = ShapeScenes(3, image_size=32)
    root = write_segmentation_folder(tmp_path / "seg", [scenes[i] for i in range(3)], scenes.classes)
    ds = SegmentationFolder(root, classnames=scenes.classes)
    assert len(ds) == 3 and ds[0][1].shape == (32, 32)
    Image.new("L", (16, 16)).save(root / "masks" / "00001.png")  # wrong size
    with pytest.raises(ValueError, match="must match"):
        ds[1]
    Image.new("RGB", (32, 32)).save(root / "masks" / "00002.png")
    with pytest.raises(ValueError, match="single-channel"):
        ds[2]
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(root / "masks" / "00001.png")
    with pytest.raises(ValueError, match="class names"):
        ds[1]
    (root / "images" / "extra.png").write_bytes((root / "images" / "00000.png").read_bytes())
    with pytest.raises(ValueError, match="without a mask"):
        SegmentationFolder(root)
    with pytest.raises(FileNotFoundError):
        SegmentationFolder(tmp_path / "nope")
    with pytest.raises(ValueError, match="--masks"):
        SegmentationFolder(root / "images")


def test_eval_segmentation_cli(tmp_path):
    scenes = ShapeScenes(2, image_size=32)
    root = write_segmentation_folder(tmp_path / "seg", [scenes[i] for i in range(2)], scenes.classes)
    out = tmp_path / "res"
    argv = ["eval", "--model", "EVA02-test", "--task", "segmentation", "--dataset", str(root), "--output", str(out),
            "--no-progress", "--bg-threshold", "0.3", "--background", "an empty background"]
    assert main(argv) == 0
    (result,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert result["task"] == "segmentation" and result["num_samples"] == 2
    assert set(result["metrics"]) == {"miou", "miou_fg", "pixel_acc"}
    assert 0.0 <= result["metrics"]["miou"] <= 1.0
    assert list(result["per_class_iou"])[:2] == ["background", scenes.classes[0]]
    # bad inputs: clear errors, exit code 2
    (root / "classnames.txt").unlink()
    assert main(argv) == 2  # no class names
    assert main([*argv[:6], str(tmp_path / "missing"), *argv[7:]]) == 2
    assert main([*argv, "--classnames", "red", "--task", "zeroshot"]) == 2  # mixed with an image task


def _moving_shape_video(path, colour, frames=10, size=32, seed=0):
    rng = np.random.default_rng(seed)
    imgs = []
    for t in range(frames):
        a = np.full((size, size, 3), 40, np.uint8)
        x = 2 + int(t * (size - 14) / max(frames - 1, 1))
        y = int(rng.integers(4, size - 14))
        a[y:y + 10, x:x + 10] = colour
        imgs.append(Image.fromarray(a))
    return write_video(path, imgs)


def test_video_reader_and_eval_cli(tmp_path):
    assert sample_indices(12, 4) == [1, 4, 7, 10]
    assert sample_indices(2, 4) == [0, 0, 1, 1]
    root = tmp_path / "videos"
    for k, (name, colour) in enumerate([("red", (220, 40, 40)), ("blue", (50, 90, 235))]):
        for i in range(2):
            _moving_shape_video(root / name / f"{i}.mp4", colour, seed=i)
    (root / "red" / "broken.mp4").write_bytes(b"not a video" * 20)
    frames = read_frames(root / "red" / "0.mp4", 4)
    assert len(frames) == 4 and frames[0].size == (32, 32)
    assert np.asarray(frames[0])[..., 0].max() > 150  # the red square survived encoding
    with pytest.raises(VideoReadError, match="broken.mp4"):
        read_frames(root / "red" / "broken.mp4", 4)
    ds = VideoFolder(root, num_frames=3)
    assert ds.classes == ["blue", "red"] and len(ds) == 5
    assert sum(ds[i] is None for i in range(len(ds))) == 1 and len(ds.skipped) == 1
    with pytest.raises(VideoReadError):
        VideoFolder(root, on_error="raise")[[p.name for p, _ in ds.samples].index("broken.mp4")]

    out = tmp_path / "res"
    argv = ["eval", "--model", "EVA02-test", "--task", "zeroshot_video", "--dataset", str(root),
            "--output", str(out), "--num-frames", "3", "--no-progress"]
    assert main(argv) == 0
    (result,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert result["task"] == "zeroshot_video_classification"
    assert result["num_samples"] == 4 and result["num_skipped"] == 1 and result["num_frames"] == 3
    assert "acc1" in result["metrics"]
    assert main([*argv[:6], str(tmp_path / "nothing"), *argv[7:]]) == 2
    (tmp_path / "flat").mkdir()
    assert main([*argv[:6], str(tmp_path / "flat"), *argv[7:]]) == 2  # no class sub-folders


def _all_frames_then_sample(path, num_frames):
    """The reader as it was: every frame to an image, then the uniform sample (the reference for indices)."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_image() for f in container.decode(video=0)]
    return [frames[i].convert("RGB") for i in sample_indices(len(frames), num_frames)]


class _WrongHeaderAV:
    """PyAV whose containers claim ``frames`` frames in the stream header (real files decode as they are)."""

    def __init__(self, frames):
        import av

        self.av, self.frames = av, frames

    def open(self, path):
        outer = self

        class Container:
            def __init__(self):
                self.c = outer.av.open(path)
                stream = type("Stream", (), {"frames": outer.frames})()
                self.streams = type("Streams", (), {"video": [stream]})()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.c.close()

            def decode(self, **kw):
                return self.c.decode(**kw)

        return Container()


@pytest.mark.parametrize("ext", ["mp4", "mkv"])  # mp4 has a frame count in its header, mkv none (0)
def test_video_reader_converts_only_the_sampled_frames(tmp_path, monkeypatch, ext):
    import openeva.data.video as video

    path = _moving_shape_video(tmp_path / f"clip.{ext}", (220, 40, 40), frames=23)
    converted = []
    to_image = video._to_image
    monkeypatch.setattr(video, "_to_image", lambda frame: converted.append(1) or to_image(frame))
    for t in (1, 4, 8, 30):  # 30 > 23 frames: indices repeat
        converted.clear()
        got = read_frames(path, t)
        want = _all_frames_then_sample(path, t)
        assert len(got) == t and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want))
        assert len(converted) == len(set(sample_indices(23, t)))  # not all 23 frames
    for claim in (10, 40):  # a header that says too few / too many frames: the decoded count decides
        monkeypatch.setattr(video, "require_av", lambda claim=claim: _WrongHeaderAV(claim))
        got = read_frames(path, 4)
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, _all_frames_then_sample(path, 4)))


def test_video_folder_skips_files_that_vanish_or_break_after_listing(tmp_path):
    root = tmp_path / "videos"
    for i in range(4):
        _moving_shape_video(root / "red" / f"{i}.mp4", (220, 40, 40), seed=i)
    ds = VideoFolder(root, num_frames=2)
    strict = VideoFolder(root, num_frames=2, on_error="raise")
    assert len(ds) == 4
    (root / "red" / "0.mp4").unlink()  # removed after listing
    (root / "red" / "1.mp4").unlink()
    (root / "red" / "1.mp4").mkdir()  # replaced by something that is not a file
    (root / "red" / "2.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)  # truncated / corrupt
    items = [ds[i] for i in range(len(ds))]
    assert [x is None for x in items] == [True, True, True, False]
    assert ds.skipped == [str(root / "red" / f"{i}.mp4") for i in range(3)]
    for i in range(3):
        with pytest.raises(VideoReadError, match=f"{i}.mp4"):
            strict[i]
