"""Exporting models for other runtimes: ONNX graphs (``export_onnx``) and an ONNX Runtime wrapper (``OnnxClip``)."""

from openeva.export.onnx import export_onnx
from openeva.export.runtime import OnnxClip

__all__ = ["OnnxClip", "export_onnx"]
