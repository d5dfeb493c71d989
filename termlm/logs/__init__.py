"""The log of everything: each ``ask`` and ``chat`` exchange and each batch run, in SQLite.

The drivers call :func:`log_exchange` and :func:`log_run` (or wrap a batch run in
:class:`BatchRun`); these never fail the command: a log that cannot be written is one
warning on stderr (once per process) and the command goes on with its own exit code.
Nothing is written, not even the file, while logging is off (:mod:`termlm.logs.switch`).
Credentials never reach the database (:mod:`termlm.logs.scrub`).

This module imports no sqlite3 at import time: ``termlm --help`` stays instant.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any

from termlm.logs.switch import ENV, current, db_path

if TYPE_CHECKING:
    from termlm.config import Settings

__all__ = ["ENV", "BatchRun", "db_path", "describe_settings", "log_exchange", "log_run"]

EXCHANGE_TYPES = ("ask", "chat")


class _Warned:
    """One warning per process, however many writes fail."""

    done = False


def log_exchange(
    kind: str,
    *,
    prompt: str,
    reply: str,
    model: str | None,
    system: str | None = None,
    settings: Mapping[str, Any] | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    timings: Mapping[str, float] | None = None,
    finish_reason: str | None = None,
    interrupted: bool = False,
    session: str | None = None,
) -> int | None:
    """Log one exchange; its id, or None when logging is off or the write failed.

    ``kind``: "ask" or "chat". ``prompt``: the user message the model got (for ask, the
    rendered template with any piped input); ``system``: the system prompt, if any;
    ``reply``: the text, as far as it got. ``model``: the name the engine reports.
    ``settings``: what shaped the reply (sampling, template, engine; see
    :func:`describe_settings`), stored as JSON with credentials dropped. ``timings``:
    seconds (``load_s``, ``ttft_s``, ``total_s``, ``completion_tokens_per_s``).
    ``interrupted``: the reply was cut short by Ctrl-C. ``session``: for chat, the
    conversation's name or id, so its turns can be told apart.
    """
    if kind not in EXCHANGE_TYPES:
        raise ValueError(f"log_exchange kind must be ask or chat, not {kind!r}")
    if not current().on:
        return None
    from termlm.logs.scrub import scrub_text, scrub_value

    secrets = _secrets(settings)
    row = {
        "type": kind, "time": _now(), "model": model,
        "prompt": scrub_text(prompt, secrets),
        "system": None if system is None else scrub_text(system, secrets),
        "reply": scrub_text(reply, secrets),
        "settings": scrub_value(dict(settings or {}), secrets),
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "timings": {k: float(v) for k, v in (timings or {}).items()},
        "finish_reason": "interrupted" if interrupted and not finish_reason else finish_reason,
        "interrupted": int(interrupted),
        "session": None if session is None else scrub_text(session, secrets),
    }
    return _write(row)


def log_run(
    *,
    argv: Sequence[str],
    inputs: Sequence[str],
    output: str | None,
    counts: Mapping[str, int],
    seconds: float,
    status: str,
    model: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> int | None:
    """Log one batch run; its id, or None when logging is off or the write failed.

    ``argv``: the command line (``sys.argv``), stored scrubbed as one shell-quoted line;
    ``inputs``: the inputs as given (``-`` is stdin); ``output``: the ``-o`` file, or
    None for stdout; ``counts``: ``ok``, ``failed``, ``skipped`` and the like;
    ``seconds``: the run's wall time; ``status``: ok, partial (some records failed),
    failed or interrupted.
    """
    if not current().on:
        return None
    import shlex

    from termlm.logs.scrub import argv_secrets, scrub_argv, scrub_text, scrub_value

    secrets = sorted(set(_secrets(settings) + argv_secrets(argv)), key=len, reverse=True)
    command = shlex.join(scrub_argv(["termlm", *argv[1:]], secrets))
    row = {
        "type": "batch", "time": _now(), "model": model, "prompt": "", "reply": "",
        "settings": scrub_value(dict(settings or {}), secrets),
        "command": command, "cwd": scrub_text(os.getcwd(), secrets),
        "inputs": [scrub_text(str(i), secrets) for i in inputs] or ["-"],
        "output": None if output is None else scrub_text(str(output), secrets),
        "counts": {str(k): int(v) for k, v in counts.items()},
        "seconds": round(float(seconds), 3), "status": status,
    }
    return _write(row)


def describe_settings(settings: Settings, **extra: Any) -> dict[str, Any]:
    """What of ``settings`` belongs in a log row: the engine and how it was set up (no
    model aliases, no credentials), plus ``extra`` (template, sampling, ...)."""
    from termlm.engine.remote_http import redact_url

    data = settings.to_dict()
    for key in ("models", "task_models"):  # api_key_env: kept to find the key, then dropped
        data.pop(key, None)
    if data.get("base_url"):
        data["base_url"] = redact_url(str(data["base_url"]))
    if settings.engine != "openai":
        for key in ("base_url", "concurrency", "timeout_connect", "timeout_read",
                    "timeout_total"):
            data.pop(key, None)
    data.update(extra)
    return data


def _secrets(settings: Mapping[str, Any] | None) -> list[str]:
    """The credential texts to mask: from ``settings``, and from the settings in effect
    (config file and environment), so a driver that passes none is covered too."""
    from termlm.logs.scrub import secret_values

    found = secret_values(settings or {})
    try:
        from termlm.config import load_settings

        found += secret_values(load_settings().to_dict())
    except Exception:  # a broken config file is the command's business, not the log's
        pass
    return sorted(set(found), key=len, reverse=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _write(row: Mapping[str, Any]) -> int | None:
    path = db_path()
    try:
        import sqlite3

        from termlm.logs import db
    except ImportError as exc:  # a Python built without sqlite3
        _warn(path, exc)
        return None
    try:
        conn = db.connect(path, create=True)
        assert conn is not None
        try:
            return db.insert(conn, row)
        finally:
            conn.close()
    except (sqlite3.Error, OSError, db.LogUnreadable) as exc:
        _warn(path, exc)
        return None


def _warn(path: os.PathLike[str] | str, exc: BaseException) -> None:
    if _Warned.done:
        return
    _Warned.done = True
    reason = getattr(exc, "message", None) or getattr(exc, "strerror", None) or str(exc)
    try:
        sys.stderr.write(f"termlm: warning: not logged: {path}: {reason} "
                         f"(termlm logs off, or {ENV}=0, stops logging)\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class BatchRun:
    """Logs one batch run when its ``with`` block ends, however it ends; never raises.

    The driver calls :meth:`finish` with the run's summary once it has one; a run that
    ends before (a failed model load, an error) is logged as failed, a Ctrl-C as
    interrupted. The exception, if any, goes on unchanged."""

    def __init__(self, inputs: Sequence[str], output: str | None, *,
                 enabled: bool = True, argv: Sequence[str] | None = None) -> None:
        self.inputs = list(inputs)
        self.output = output
        self.enabled = enabled
        self.argv = list(sys.argv if argv is None else argv)
        self.model: str | None = None
        self.counts: dict[str, int] = {}
        self._tracked: Any = None
        self._start = time.monotonic()

    def finish(self, summary: Any, model: str | None = None) -> None:
        """Take the counts from a :class:`termlm.runner.Summary`."""
        self.model = model
        self.counts = _counts(summary)

    def track(self, summary: Any, model: str | None) -> None:
        """The run's :class:`termlm.runner.Summary` while it fills: a run that ends early
        (a closed pipe, an error mid-run) is logged with the counts it had reached."""
        self.model = model
        self._tracked = summary

    def __enter__(self) -> BatchRun:
        self._start = time.monotonic()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.enabled or _is_usage_error(exc):
            return  # a dry run, or a mistake on the command line: nothing ran
        try:
            counts = self.counts or (_counts(self._tracked) if self._tracked else {})
            log_run(argv=self.argv, inputs=self.inputs, output=self.output,
                    counts=counts, seconds=time.monotonic() - self._start,
                    status=run_status(exc), model=self.model)
        except Exception as error:  # the log must never change how the command ends
            _warn(db_path(), error)


def _counts(summary: Any) -> dict[str, int]:
    return {key: int(getattr(summary, key)) for key in
            ("ok", "failed", "skipped", "truncated", "prompt_tokens")
            if isinstance(getattr(summary, key, None), int)}


def _is_usage_error(exc: BaseException | None) -> bool:
    from termlm.errors import ExitCode, TermlmError

    return isinstance(exc, TermlmError) and exc.exit_code == ExitCode.USAGE


def run_status(exc: BaseException | None) -> str:
    """ok, partial, failed or interrupted, from how a run's block ended."""
    from termlm.errors import ExitCode, TermlmError

    if exc is None:
        return "ok"
    if isinstance(exc, (KeyboardInterrupt, BrokenPipeError)):  # Ctrl-C, or the reader left
        return "interrupted"
    if isinstance(exc, TermlmError):
        return "failed"
    code = exc.code if isinstance(exc, SystemExit) else getattr(exc, "exit_code", None)
    if not isinstance(code, int):
        return "failed"
    names = {int(ExitCode.OK): "ok", int(ExitCode.PARTIAL): "partial",
             int(ExitCode.INTERRUPTED): "interrupted"}
    return names.get(int(code), "failed")
