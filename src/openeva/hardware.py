"""Kept for code written against earlier releases: precision and device now live in ``openeva.runtime``."""

from openeva.runtime import (  # noqa: F401
    PRECISION_CHOICES,
    cpu_capability,
    describe_precision,
    resolve_device,
    resolve_precision,
)
