"""Video classification data: class sub-folders of video files, decoded with PyAV, T frames sampled uniformly.

    videos/archery/clip001.mp4  videos/bowling/clip007.avi  ...

PyAV (``pip install av``, the ``video`` extra) is imported when a video is first read, so the rest of openeva
needs no FFmpeg. Frame sampling follows EVA-CLIP's / CLIP_benchmark's video protocol: T indices spread
uniformly over the clip (the centre of each of T equal segments); a clip shorter than T repeats frames.
Only the T sampled frames are converted to pictures: the frame count comes from the container's stream header
and is checked while decoding (one pass, one decoded frame held at a time); where the header has no count or a
wrong one, a counting pass without conversion comes first, so a long HD clip never sits in memory as images.
An unreadable or empty video raises :class:`VideoReadError` naming the file; the dataset reader turns that, and
a file that vanished or cannot be opened after the folder was listed, into a skip that is counted and listed
(``skipped``), or an error with ``on_error="raise"``.
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


def _to_image(frame) -> Image.Image:
    """A decoded PyAV frame -> RGB PIL image (the costly step: a 1080p frame is 6 MB as RGB)."""
    return frame.to_image().convert("RGB")


def _decode(av, path: Path, num_frames: int, wanted: set[int] | None = None,
            stop_after: int | None = None) -> tuple[dict[int, Image.Image], int]:
    """One decoding pass, one decoded frame held at a time: (the frames at ``wanted`` as images, the number of
    frames decoded). ``wanted=None``: the indices the stream header's frame count selects (none when the header
    has no count). Stops after frame ``stop_after`` when given."""
    picked: dict[int, Image.Image] = {}
    count = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            if wanted is None:
                header = int(container.streams.video[0].frames or 0)  # 0: the container does not say
                wanted = set(sample_indices(header, num_frames)) if header > 0 else set()
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    picked[i] = _to_image(frame)
                count = i + 1
                if stop_after is not None and i >= stop_after:
                    break
    except VideoReadError:
        raise
    except Exception as e:  # PyAV raises many FFmpeg error types (InvalidDataError, EOFError, FileNotFoundError...)
        raise VideoReadError(f"cannot decode video {path}: {e}") from e
    return picked, count


def read_frames(path: str | Path, num_frames: int) -> list[Image.Image]:
    """Decode ``path`` and return ``num_frames`` uniformly sampled RGB frames.

    The indices are ``sample_indices(n, num_frames)`` over the n frames that decode (not the header's claim);
    only the frames at those indices are converted to images. Raises ``FileNotFoundError`` for a path that is
    not a file, :class:`VideoReadError` for one that cannot be opened or decoded (or vanishes while read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    av = require_av()
    picked, count = _decode(av, path, num_frames)  # usually the only pass: the header's count was right
    if count == 0:
        raise VideoReadError(f"{path}: the video has no decodable frames")
    indices = sample_indices(count, num_frames)
    missing = set(indices) - set(picked)
    if missing:  # no count in the header, or a wrong one: convert the right frames in a second pass
        more, _ = _decode(av, path, num_frames, wanted=missing, stop_after=max(missing))
        picked.update(more)
        if missing - set(more):
            raise VideoReadError(f"{path}: frames {sorted(missing - set(more))[:5]} did not decode a second time")
    return [picked[i] for i in indices]


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
        except (VideoReadError, OSError) as e:  # OSError: removed, or unreadable, since the folder was listed
            if self.on_error == "raise":
                if isinstance(e, VideoReadError):
                    raise
                raise VideoReadError(f"cannot read video {path}: {e}") from e
            self.skipped.append(str(path))
            return None
