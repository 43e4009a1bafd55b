"""Process-level settings made once at the edge (CLI, services): Flower offline, logging."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping

import structlog

__all__ = ["FLOWER_OFFLINE_ENV", "flower_env", "configure_logging"]

# Flower must never reach the internet at run time (telemetry, update checks, and the
# `uv sync` that would install an app's dependencies on every run).
FLOWER_OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Keep Ray from rewriting CUDA_VISIBLE_DEVICES for CPU-only actors (and warning).
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def flower_env(environ: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Apply the offline settings to ``environ`` (default: this process) and return it."""
    target = os.environ if environ is None else environ
    target.update(FLOWER_OFFLINE_ENV)
    return target


def configure_logging(*, json_logs: bool | None = None, level: int = logging.INFO) -> None:
    """structlog: JSON lines for services (or when not on a terminal), console otherwise."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
