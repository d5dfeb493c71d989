"""llama.cpp's ``llama_model_quantize``, run in a child: ``python -m termlm.engine.quantize JOB``.

The parent (:func:`quantize`) starts the child in a session of its own, follows its
progress on a pipe of JSON lines, and stops it when the user presses Ctrl-C or
sends SIGTERM (the terminal's Ctrl-C reaches only the parent, which decides). A
crash in llama.cpp's kernels kills the child alone; the parent reports it as one
line. The child learns that the parent is gone when its stdin closes: it deletes
what it was writing and exits.

Only the child imports ``llama_cpp`` (through :func:`~termlm.engine.llama_common.bindings`).
llama.cpp logs one line per tensor (``[ 120/ 272] blk.9.attn_q.weight ...``); the
child's log callback turns them into progress events.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import IO, Any

from termlm.errors import EngineError

# The target types offered, as llama.cpp names them (LLAMA_FTYPE_MOSTLY_<name>).
QUANT_TYPES: tuple[str, ...] = (
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_S",
    "Q5_K_M", "Q6_K", "F16", "BF16",
)
COMMAND = (sys.executable, "-m", "termlm.engine.quantize")
STOP_GRACE_S = 5.0  # after SIGTERM, how long the child may take before SIGKILL

ProgressFn = Callable[[int, int], None]  # (tensors done, tensors in all)
LogFn = Callable[[str], None]

log = logging.getLogger("termlm.llama")
_TENSOR_LINE = re.compile(rb"^\[\s*(\d+)\s*/\s*(\d+)\s*\]")
_ERROR_LEVEL = 4  # GGML_LOG_LEVEL_ERROR
_SIGNAL_MEANINGS = {
    "SIGXFSZ": "the output file grew past the file size limit (ulimit -f)",
    "SIGKILL": "killed, perhaps for lack of memory",
}


@dataclass(frozen=True)
class QuantizeJob:
    """One call of ``llama_model_quantize``: what the child is told."""

    source: str
    dest: str  # the file llama.cpp writes (a temporary name: the caller renames it)
    type_name: str  # one of QUANT_TYPES
    threads: int
    allow_requantize: bool = False
    total_tensors: int = 0  # from the source's GGUF header; 0: take llama.cpp's count
    forward_logs: bool = False  # send llama.cpp's log lines back (for -v)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> QuantizeJob:
        return cls(**json.loads(text))


def ftype_constant(type_name: str) -> str:
    """The name of the llama_ftype constant in llama_cpp's bindings."""
    return "LLAMA_FTYPE_MOSTLY_" + type_name


# -- the parent side ---------------------------------------------------------------------


def quantize(job: QuantizeJob, *, on_progress: ProgressFn | None = None,
             on_log: LogFn | None = None) -> None:
    """Run ``job`` in a child process; raise EngineError if llama.cpp fails or crashes.

    KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one) stops the child before it
    propagates, so the caller may delete the partial output at once.
    """
    if job.type_name not in QUANT_TYPES:
        raise EngineError(f"unknown quantization type {job.type_name!r}")
    if on_log is None and log.isEnabledFor(logging.DEBUG):
        on_log = _log_line
    if on_log is not None and not job.forward_logs:
        job = replace(job, forward_logs=True)
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen([*COMMAND, job.to_json()], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=errors,
                                    start_new_session=True)
        except OSError as exc:
            raise EngineError(f"cannot start the quantize process: {exc.strerror or exc}") \
                from None
        try:
            assert proc.stdout is not None
            outcome = _follow(proc.stdout, on_progress, on_log)
            returncode = proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM, or a failing progress sink: stop the child
            _stop(proc)
            raise
        finally:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        if returncode < 0:
            raise EngineError(_crash_message(-returncode, _tail(errors)))
        if outcome is None or not outcome.get("ok"):
            reason = (outcome or {}).get("error") or _tail(errors) or "no reason given"
            raise EngineError(f"llama.cpp could not quantize: {reason}")


def _log_line(line: str) -> None:
    log.debug("%s", line)


def _follow(stream: IO[bytes], on_progress: ProgressFn | None,
            on_log: LogFn | None) -> dict[str, Any] | None:
    """Read the child's events until it closes stdout; return its final one."""
    outcome: dict[str, Any] | None = None
    for raw in stream:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("event")
        if kind == "progress" and on_progress is not None:
            on_progress(int(event["done"]), int(event["total"]))
        elif kind == "log" and on_log is not None:
            on_log(str(event["text"]))
        elif kind == "done":
            outcome = event
    return outcome


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(errors: IO[bytes]) -> str:
    """The last non-empty line the child wrote to stderr (llama.cpp's abort message)."""
    errors.seek(0)
    lines = [line.strip() for line in errors.read()[-4096:].decode("utf-8", "replace")
             .splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _crash_message(signum: int, tail: str) -> str:
    from termlm.crashguard import signal_name

    name = signal_name(signum)
    meaning = _SIGNAL_MEANINGS.get(name)
    if meaning:
        message = f"quantizing stopped: {meaning} ({name})"
    else:
        message = f"llama.cpp crashed ({name}) while quantizing"
    return f"{message}: {tail}" if tail else message


# -- the child side ----------------------------------------------------------------------


class _Events:
    """Writes JSON lines to the parent; turns llama.cpp's tensor lines into progress."""

    def __init__(self, job: QuantizeJob, out: IO[str]) -> None:
        self.job = job
        self.out = out
        self.total = job.total_tensors
        self.done = 0
        self.last_error = ""
        self._partial = b""  # a log line arrives in pieces: "[ 1/ 272] ... type = f32, " "size"
        self._lock = threading.Lock()
        self.callback: Any = None  # the ctypes log callback: it must outlive every use

    def emit(self, **event: Any) -> None:
        try:
            with self._lock:
                self.out.write(json.dumps(event) + "\n")
                self.out.flush()
        except (OSError, ValueError):  # the parent is gone
            _abandon(self.job)

    def progress(self, done: int) -> None:
        if done > self.done:
            self.done = done
            self.emit(event="progress", done=done, total=self.total)

    def log_text(self, level: int, text: bytes) -> None:
        match = _TENSOR_LINE.match(text)
        if match:
            if not self.total:
                self.total = int(match.group(2))
            self.progress(int(match.group(1)) - 1)  # the line starts tensor i: i - 1 are done
        if level == _ERROR_LEVEL and text.strip():
            self.last_error = text.decode("utf-8", "replace").strip()
        if self.job.forward_logs:
            self._partial += text
            if self._partial.endswith(b"\n"):
                line, self._partial = self._partial.decode("utf-8", "replace").rstrip(), b""
                if line:
                    self.emit(event="log", text=line)


def _abandon(job: QuantizeJob) -> None:
    """The parent died: delete the partial output (nobody else will) and leave."""
    with contextlib.suppress(OSError):
        os.unlink(job.dest)
    os._exit(1)


def _watch_parent(job: QuantizeJob) -> None:
    """Our stdin is a pipe the parent holds open; end-of-file means it is gone."""
    try:
        if not stat.S_ISFIFO(os.fstat(0).st_mode):
            return  # run by hand: no parent to watch
    except OSError:
        return

    def watch() -> None:
        with contextlib.suppress(OSError):  # os.read: no buffer lock to trip the shutdown
            while os.read(0, 65536):
                pass
        _abandon(job)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _reason(message: str) -> str:
    """``llama_model_quantize: failed to quantize: X`` -> ``X``."""
    for prefix in ("llama_model_quantize:", "failed to quantize:"):
        message = message.removeprefix(prefix).strip()
    return message


def run_native(job: QuantizeJob, events: _Events) -> bool:
    """Call llama_model_quantize in this process; True on success."""
    from termlm.engine.llama_common import bindings

    low = bindings()

    @low.llama_log_callback  # type: ignore[untyped-decorator]
    def _callback(level: int, text: bytes | None, _user: ctypes.c_void_p) -> None:
        with contextlib.suppress(Exception):  # nothing may escape into C
            if text:
                events.log_text(level, text)

    events.callback = _callback
    low.llama_log_set(_callback, ctypes.c_void_p(0))
    params = low.llama_model_quantize_default_params()
    params.nthread = job.threads
    params.ftype = getattr(low, ftype_constant(job.type_name))
    params.allow_requantize = job.allow_requantize
    status = int(low.llama_model_quantize(os.fsencode(job.source), os.fsencode(job.dest),
                                          ctypes.byref(params)))
    if status == 0 and events.total:
        events.progress(events.total)
    return status == 0


def main(argv: list[str]) -> int:
    # Stopping is the parent's call; a signal sent here straight ends the process at once
    # (no KeyboardInterrupt raised inside a llama.cpp callback).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    job = QuantizeJob.from_json(argv[1])
    events = _Events(job, sys.stdout)
    _watch_parent(job)
    try:
        ok = run_native(job, events)
    except (EngineError, AttributeError, OSError) as exc:
        events.emit(event="done", ok=False, error=str(exc))
        return 1
    error = "" if ok else (_reason(events.last_error) or "llama_model_quantize returned an error")
    events.emit(event="done", ok=ok, error=error)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
