"""One ``termlm bench`` configuration, as a child: ``python -m termlm.evaluate.bench_probe JSON``.

The JSON holds a :class:`~termlm.engine.speed.SpeedTest` (and ``verbose``). The child
measures it and prints one JSON object; its load time and peak RSS are its own. If
llama.cpp crashes, only this child dies and the bench reports the signal.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


def main(argv: list[str]) -> int:
    from termlm.engine.speed import SpeedTest, measure_speed
    from termlm.errors import TermlmError

    args: dict[str, Any] = json.loads(argv[1])
    if args.pop("verbose", False):
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s",
                            stream=sys.stderr)
    try:
        result: dict[str, Any] = {"ok": True, **measure_speed(SpeedTest.from_dict(args)).to_dict()}
    except TermlmError as exc:
        result = {"ok": False, "error": exc.message}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
