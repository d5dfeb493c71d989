"""What the tests share about the environment they run under."""

from __future__ import annotations

import os


def extra_buffers_setting() -> str:
    """The suite runs under TERMLM_CPU_EXTRA_BUFFERS (CI: auto, then off, where no AMX);
    engines the tests build directly get the same setting as the CLI would."""
    return os.environ.get("TERMLM_CPU_EXTRA_BUFFERS") or "auto"
