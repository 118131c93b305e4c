"""``openeva serve``: the HTTP service (FastAPI under uvicorn) and its web page."""

from __future__ import annotations

import os

from openeva.cli.options import add_inference_options, add_model_options, encoder_options

API_KEY_ENV = "OPENEVA_API_KEY"


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve embed / search / classify over HTTP, with a web page at /")
    add_model_options(p, required=False, model_help="CLIP model (default: the index's)")
    p.add_argument("--index", help="an index folder to search (and add to, with an API key)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
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
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-request timeout")
    add_inference_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from openeva.serve.app import create_app
    from openeva.serve.limits import Limits

    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_pixels=args.max_pixels,
                    max_images=args.max_images, max_texts=args.max_texts, max_text_chars=args.max_text_chars,
                    max_concurrent=args.max_concurrent, timeout_s=args.timeout_s)
    app = create_app(model=args.model, pretrained=args.pretrained, index_path=args.index,
                     api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, limits=limits,
                     max_batch=1 if args.no_batching else args.max_batch,
                     max_wait_ms=0.0 if args.no_batching else args.max_wait_ms,
                     encoder_options=encoder_options(args))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=60)
    return 0
