"""What a command measured about its own run, for `termlm eval`.

`termlm eval` runs the real command (`classify`, `extract`, `translate`, `qa`) in a
child process with ``TERMLM_RUN_STATS=FILE``; the command then writes, as one JSON
object in FILE, the model it loaded, the load time, and the records, seconds and
tokens of its run. Without the variable, :func:`record` does nothing.
"""

from __future__ import annotations

import json
import os
from typing import Any

ENV = "TERMLM_RUN_STATS"


def record(**values: Any) -> None:
    """Merge ``values`` into the stats file (rewritten whole, atomically, each time)."""
    path = os.environ.get(ENV)
    if not path:
        return
    data: dict[str, Any] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            loaded = json.load(fh)
        if isinstance(loaded, dict):
            data = loaded
    except (OSError, ValueError):
        pass
    data.update(values)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except OSError:
        pass  # the stats are a courtesy to eval; the command's own work goes on
