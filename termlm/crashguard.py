"""A crash never goes unexplained: the command runs in a forked child, the parent reports.

``termlm`` forks once at start (a millisecond, before any model is loaded). The
parent only waits: if llama.cpp kills the child with a signal (SIGSEGV, SIGABRT,
SIGILL, SIGBUS, SIGFPE), the parent prints one line naming the signal and pointing
to ``termlm doctor``, then the resume command a batch run left for it, and exits
128 + the signal. Ctrl-C reaches the child straight from the terminal (the parent
ignores it); SIGTERM and SIGHUP sent to the parent are passed on to the child.

A child tells the parent how to resume through :func:`note_resume`, which writes
to a pipe the parent reads only after the child is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable

CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGILL, signal.SIGBUS, signal.SIGFPE}
DISABLE_VAR = "TERMLM_NO_CRASH_GUARD"  # run in one process (for a debugger)

_note_fd: int | None = None  # the child's end of the pipe


def note_resume(command: str) -> None:
    """Tell the waiting parent the command that resumes this run, should it crash."""
    if _note_fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(_note_fd, b"resume\0" + command.encode("utf-8", "replace") + b"\n")


def _read_notes(fd: int) -> list[str]:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    resumes = []
    for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
        kind, _, text = line.partition("\0")
        if kind == "resume" and text:
            resumes.append(text)
    return resumes


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def explain(signum: int, resumes: list[str]) -> list[str]:
    """The lines the parent prints for a child that died of ``signum``."""
    name = signal_name(signum)
    if signum in CRASH_SIGNALS:
        lines = [f"termlm: llama.cpp crashed ({name}); run `termlm doctor` to find out why"]
    elif signum == signal.SIGKILL:
        lines = [f"termlm: killed ({name}), perhaps for lack of memory; "
                 "`termlm doctor` says what fits"]
    elif signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        lines = []  # asked for: nothing to explain
    else:
        lines = [f"termlm: ended by {name}"]
    if resumes:
        lines.append(f"termlm: resume with: {resumes[-1]}")
    return lines


_PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2)


def run_guarded(run: Callable[[], None]) -> None:
    """Run ``run`` in a forked child and exit as it did; without fork, run it here."""
    global _note_fd
    if not hasattr(os, "fork") or os.environ.get(DISABLE_VAR):
        run()
        return
    waits = hasattr(signal, "sigtimedwait") and hasattr(signal, "pthread_sigmask")
    watched = {*_PASSED_ON, signal.SIGCHLD}
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    if waits:  # blocked before the fork, so the parent misses none; the child unblocks
        signal.signal(signal.SIGCHLD, lambda *_: None)
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child runs the command
        _die_with(parent)
        os.close(read_fd)
        _note_fd = write_fd
        if waits:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        run()
        return
    os.close(write_fd)
    status = _wait_forwarding(pid, watched) if waits else _wait_ignoring(pid)
    _report(status, _read_notes(read_fd))


def _die_with(parent: int) -> None:
    """Linux: the child is killed when the parent is (``kill -9 <termlm's pid>``), so it
    never runs on unseen, holding its output file, after the process the user sees."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(128 + int(signal.SIGKILL))


def _forward(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait_forwarding(pid: int, watched: set[signal.Signals]) -> int:
    """Wait for the child, passing on the signals a process sent us.

    A signal from the terminal (Ctrl-C, Ctrl-\\, hang-up) reaches the whole foreground
    process group, the child included: only those another process sent (``kill``,
    ``timeout``; si_code <= 0) are passed on, so the child never gets one twice.
    """
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        info = signal.sigtimedwait(watched, 1.0)
        if info is not None and info.si_signo != signal.SIGCHLD and info.si_code <= 0:
            _forward(pid, info.si_signo)


def _wait_ignoring(pid: int) -> int:  # pragma: no cover - platforms without sigtimedwait
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for signum in _PASSED_ON[1:]:
        signal.signal(signum, lambda n, _f: _forward(pid, n))
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0


def _report(status: int, resumes: list[str]) -> None:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        with contextlib.suppress(OSError):
            for line in explain(signum, resumes):
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
        os._exit(128 + signum)
    os._exit(os.waitstatus_to_exitcode(status))
