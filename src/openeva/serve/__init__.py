"""Use an encoder: embed a collection, index it (FAISS), search it, classify it, serve it over HTTP.

``embed(src, model, out)`` (resumable vector shards), ``Index`` (build / add / search / save / load),
``classify(src, model, labels=...)``; ``openeva.serve.app.create_app`` is the HTTP service.
"""

from openeva.serve.classify import classify
from openeva.serve.embed import embed, load_embeddings
from openeva.serve.encoder import Encoder, TorchClipEncoder, load_encoder
from openeva.index import Index

__all__ = ["Encoder", "Index", "TorchClipEncoder", "classify", "embed", "load_embeddings", "load_encoder"]
