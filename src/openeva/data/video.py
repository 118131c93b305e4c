"""Video classification data: class sub-folders of video files, decoded with PyAV, T frames sampled uniformly.

    videos/archery/clip001.mp4  videos/bowling/clip007.avi  ...

PyAV (``pip install av``, the ``video`` extra) is imported when a video is first read, so the rest of openeva
needs no FFmpeg. Frame sampling follows EVA-CLIP's / CLIP_benchmark's video protocol: T indices spread
uniformly over the clip (the centre of each of T equal segments); a clip shorter than T repeats frames.
An unreadable or empty video raises :class:`VideoReadError` naming the file; the dataset reader turns that
into a skip that is counted and listed (``skipped``), or an error with ``on_error="raise"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")


class VideoReadError(ValueError):
    """A video file that cannot be decoded (corrupt, empty, no video stream)."""


def require_av():
    try:
        import av
    except ImportError:
        raise ImportError("reading videos needs PyAV: pip install av (or pip install 'openeva[video]')") from None
    return av


def sample_indices(num_frames_in_video: int, num_frames: int) -> list[int]:
    """T frame indices at the centres of T equal segments of the clip (repeats when the clip is shorter)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_frames_in_video < 1:
        raise ValueError("a video needs at least one frame")
    seg = num_frames_in_video / num_frames
    return [min(int(seg * (i + 0.5)), num_frames_in_video - 1) for i in range(num_frames)]


def read_frames(path: str | Path, num_frames: int) -> list[Image.Image]:
    """Decode ``path`` and return ``num_frames`` uniformly sampled RGB frames."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    av = require_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            frames = [f.to_image() for f in container.decode(video=0)]  # small clips: decode once, then sample
    except VideoReadError:
        raise
    except Exception as e:  # PyAV raises many FFmpeg error types (InvalidDataError, EOFError, ...)
        raise VideoReadError(f"cannot decode video {path}: {e}") from e
    if not frames:
        raise VideoReadError(f"{path}: the video has no decodable frames")
    return [frames[i].convert("RGB") for i in sample_indices(len(frames), num_frames)]


def write_video(path: str | Path, frames: list[Image.Image], fps: int = 8, codec: str = "mpeg4") -> Path:
    """Encode RGB frames to a video file (tests and examples; ``mpeg4`` ships with every PyAV wheel)."""
    av = require_av()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = frames[0].size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(img.convert("RGB")), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class VideoFolder:
    """``root/<class>/<video>``: ``ds[i] -> (list of T PIL frames, class index)``.

    ``classes`` are the sorted sub-folder names (or ``classnames`` to fix order and names: every sub-folder
    must be one of them). ``on_error="skip"`` (default) makes ``ds[i]`` return None for an unreadable video
    and records it in ``skipped``; ``"raise"`` raises :class:`VideoReadError`.
    """

    def __init__(self, root: str | Path, num_frames: int = 8, classnames: list[str] | None = None,
                 on_error: str = "skip", name: str | None = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"video dataset folder not found: {root}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not folders:
            raise ValueError(f"{root} has no class sub-folders (expected {root}/<class name>/<video files>)")
        if classnames is not None:
            unknown = sorted(set(folders) - set(classnames))
            if unknown:
                raise ValueError(f"sub-folders {unknown[:10]} of {root} are not among the class names given")
            self.classes = list(classnames)
        else:
            self.classes = folders
        self.samples: list[tuple[Path, int]] = []
        for c in folders:
            for p in sorted((root / c).iterdir()):
                if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
                    self.samples.append((p, self.classes.index(c)))
        if not self.samples:
            raise ValueError(f"no video files found under {root} (extensions {', '.join(VIDEO_EXTENSIONS)})")
        self.num_frames, self.on_error = num_frames, on_error
        self.name = name or root.name
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, index: int) -> tuple[list[Image.Image], int] | None:
        path, label = self.samples[index]
        try:
            return read_frames(path, self.num_frames), label
        except VideoReadError:
            if self.on_error == "raise":
                raise
            self.skipped.append(str(path))
            return None
