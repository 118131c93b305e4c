"""Run an exported openeva model with ONNX Runtime: ``OnnxClip(dir).encode_image / encode_text``.

The same calls as the PyTorch model (numpy or torch in, torch out, ``normalize=``), so a service can swap one for
the other. Token ids are cast to the graph's int32; images must be preprocessed as ``manifest["preprocess"]`` says
(``openeva.factory.image_transforms`` builds that transform from the manifest's config).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class OnnxClip:
    """An exported model directory (``openeva export onnx``) on ONNX Runtime's CPU provider."""

    def __init__(self, model_dir: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeError("running an exported model needs `pip install openeva[onnx]` (onnxruntime)") from e
        self.dir = Path(model_dir)
        manifest = self.dir / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{self.dir} is not an exported openeva model (no manifest.json)")
        self.manifest = json.loads(manifest.read_text())
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self._sessions = {name: ort.InferenceSession(str(self.dir / g["file"]), opts,
                                                     providers=["CPUExecutionProvider"])
                          for name, g in self.manifest["graphs"].items()}

    @property
    def has_text(self) -> bool:
        return "text" in self._sessions

    @property
    def context_length(self) -> int | None:
        return self.manifest["graphs"].get("text", {}).get("context_length")

    def _run(self, graph: str, x, dtype) -> torch.Tensor:
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        g = self.manifest["graphs"][graph]
        return torch.from_numpy(self._sessions[graph].run(None, {g["input"]: arr.astype(dtype, copy=False)})[0])

    def encode_image(self, images, normalize: bool = False) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, E)."""
        out = self._run("image", images, np.float32)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, tokens, normalize: bool = False) -> torch.Tensor:
        """(B, L) token ids (any integer dtype) -> (B, E)."""
        if not self.has_text:
            raise ValueError(f"{self.dir} holds no text tower (a backbone export)")
        out = self._run("text", tokens, np.int32)
        return F.normalize(out, dim=-1) if normalize else out

    def __call__(self, images) -> torch.Tensor:
        return self.encode_image(images)
