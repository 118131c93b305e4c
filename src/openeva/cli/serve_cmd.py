"""``openeva serve``: the HTTP service (FastAPI under uvicorn) and its web page.

``--workers N`` runs N uvicorn worker processes on one port, all serving the same ``--index`` folder: each
reads the memory-mapped index and re-opens it when another made a new version live; writes are serialised
by the index's lock file. uvicorn starts such workers from an import string, so the service's settings reach
them as JSON in the environment variable :data:`openeva.serve.app.SERVE_CONFIG_ENV` (set here, read by
:func:`openeva.serve.app.app_from_environment` when a worker builds its app).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

from openeva.cli.options import add_inference_options, add_model_options, encoder_options

API_KEY_ENV = "OPENEVA_API_KEY"


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve embed / search / classify over HTTP, with a web page at /")
    add_model_options(p, required=False, model_help="CLIP model (default: the index's)")
    p.add_argument("--index", help="an index folder to search (and add to / delete from, with an API key)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1,
                   help="uvicorn worker processes serving the same index (each loads the model)")
    p.add_argument("--api-key", help=f"key for write endpoints (or ${API_KEY_ENV}); none: writes are off")
    p.add_argument("--max-batch", type=int, default=32, help="micro-batch size limit for the model")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a micro-batch waits to fill")
    p.add_argument("--no-batching", action="store_true", help="run every request alone (benchmarks)")
    p.add_argument("--max-body-mb", type=float, default=20.0)
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="per image (decompression bombs)")
    p.add_argument("--max-images", type=int, default=16, help="images per request")
    p.add_argument("--max-texts", type=int, default=64, help="texts per request")
    p.add_argument("--max-text-chars", type=int, default=1000)
    p.add_argument("--max-concurrent", type=int, default=64, help="requests in flight before 503")
    p.add_argument("--max-k", type=int, default=None, help="results per search at most (default: the index's "
                   "bound)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-request timeout")
    add_inference_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from openeva.serve.app import SERVE_CONFIG_ENV, create_app
    from openeva.serve.limits import Limits

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_pixels=args.max_pixels,
                    max_images=args.max_images, max_texts=args.max_texts, max_text_chars=args.max_text_chars,
                    max_concurrent=args.max_concurrent, timeout_s=args.timeout_s,
                    **({"max_k": args.max_k} if args.max_k is not None else {}))
    options = encoder_options(args)
    config = {"model": args.model, "pretrained": args.pretrained, "index_path": args.index,
              "api_key": args.api_key or os.environ.get(API_KEY_ENV) or None,
              "max_batch": 1 if args.no_batching else args.max_batch,
              "max_wait_ms": 0.0 if args.no_batching else args.max_wait_ms}
    serve = {"host": args.host, "port": args.port, "log_level": "info", "timeout_graceful_shutdown": 60}
    if args.workers == 1:
        app = create_app(**config, limits=limits, encoder_options=options)
        uvicorn.run(app, **serve)
        return 0
    if not args.index:
        print("note: --workers without --index: each worker answers embed/classify only", file=sys.stderr)
    options.pop("log", None)  # not JSON; each worker logs its own encoder line
    threads = max(1, (os.cpu_count() or 1) // args.workers)  # the workers share the cores instead of each taking all
    os.environ[SERVE_CONFIG_ENV] = json.dumps({**config, "limits": asdict(limits), "encoder_options": options,
                                               "torch_threads": threads})
    uvicorn.run("openeva.serve.app:app_from_environment", factory=True, workers=args.workers, **serve)
    return 0
