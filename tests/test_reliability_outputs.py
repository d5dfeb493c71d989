"""Issue 11, outputs: one place opens them (checked and locked before the model loads),
one error path for failed writes, JSON that stays JSON.

Items: 1 (``-o`` is an input), 5 (write errors, EPIPE), 7 (one writer per output),
11 (``--resume`` through a symlink). In-process runs use the FakeEngine; the real CLI
runs as a subprocess against the fake OpenAI-compatible server (no model to load).
"""

from __future__ import annotations

import errno
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from termlm.cli import app
from termlm.cli.common import AppState
from termlm.engine.fake import FakeEngine
from termlm.errors import ModelMissing
from termlm.fileio import write_atomic
from termlm.records.outfile import OutputBusy, open_output
from termlm.records.resume import load_done
from termlm.records.writers import RecordWriter, dumps_json
from tests.test_remote_units import FakeServer, Reply, chat_reply, sse_reply

TIMEOUT_S = 20


# ---------------------------------------------------------------- helpers


class Run:
    """The Typer app in-process; ``opened`` counts the engines it asked for."""

    def __init__(self, factory: Callable[[object], FakeEngine] | None = None) -> None:
        self.opened = 0
        self._factory = factory

    def __call__(self, *args: str, input: str | None = None) -> tuple[int, str, str]:
        def factory(settings: object) -> FakeEngine:
            self.opened += 1
            return self._factory(settings) if self._factory is not None else FakeEngine()

        result = CliRunner().invoke(app, list(args), input=input,
                                    obj=AppState(engine_factory=factory))  # type: ignore[arg-type]
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err and "Exception ignored" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("termlm: error:")]
    assert len(errors) == 1, err
    return errors[0]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TERMLM_NO_CRASH_GUARD", None)
    env.update(TERMLM_CONFIG_DIR=str(tmp_path / "config"), TERMLM_STATE_DIR=str(tmp_path / "st"),
               TERMLM_CACHE_DIR=str(tmp_path / "cache"), TERMLM_MODELS_DIR=str(tmp_path / "m"),
               TERMLM_OFFLINE="1")
    return env


def _termlm(*args: str) -> list[str]:
    return [sys.executable, "-m", "termlm", *args]


def _handler(pieces: int = 50, delay_s: float = 0.0) -> Callable[..., Reply]:
    def handle(path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if not path.endswith("/chat/completions"):
            return Reply(status=404)
        if body.get("stream"):
            reply = sse_reply([f"word{i} " for i in range(pieces)])
        else:
            reply = chat_reply("echo " + body["messages"][-1]["content"].split()[-1])
        reply.delay_s = delay_s
        return reply
    return handle


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer(_handler())
    yield fake
    fake.close()


def _remote(server: FakeServer) -> list[str]:
    return ["--engine", "openai", "--base-url", server.url]


def _holder(path: Path) -> subprocess.Popen[str]:
    """Another process holding the output's lock, as a running termlm would."""
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


# ---------------------------------------------------------------- item 1: -o is an input


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink", "relative"])
def test_an_output_that_is_an_input_is_refused_before_the_model_loads(
        tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = tmp_path / "big.jsonl"
    body = "".join(json.dumps({"id": str(i), "text": f"t{i}"}) + "\n" for i in range(50))
    inp.write_text(body)
    out = {"same": inp, "symlink": tmp_path / "link.jsonl",
           "hardlink": tmp_path / "hard.jsonl", "relative": Path("./big.jsonl")}[how]
    if how == "symlink":
        out.symlink_to(inp)
    elif how == "hardlink":
        os.link(inp, out)
    monkeypatch.chdir(tmp_path)
    run = Run()
    for resume in ([], ["--resume"]):
        code, stdout, err = run("batch", "-p", "{text}", str(inp), "-o", str(out), *resume)
        assert code == 2, err
        assert "is also an input" in _one_error_line(err)
        assert stdout == ""
    assert run.opened == 0  # refused before the model loads
    assert inp.read_text() == body  # the input is intact


def test_stdin_redirected_from_the_output_is_refused(tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("a\nb\n")
    with inp.open("rb") as stdin:
        proc = subprocess.run(_termlm("batch", "-p", "{text}", "-o", str(inp)), stdin=stdin,
                              capture_output=True, text=True, env=_env(tmp_path),
                              timeout=TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr
    assert "is also an input (stdin)" in _one_error_line(proc.stderr)
    assert inp.read_text() == "a\nb\n"


def test_an_output_inside_a_walked_directory_is_not_read_as_input(tmp_path: Path) -> None:
    docs = tmp_path / "d"
    docs.mkdir()
    (docs / "a.txt").write_text("one\ntwo\n")
    out = docs / "out.jsonl"
    out.write_text(json.dumps({"id": "old", "output": "x"}) + "\n")
    code, _, err = Run()("batch", "-p", "{text}", str(docs), "-o", str(out))
    assert code == 0, err
    assert "it is the output file" in err
    assert [r["id"] for r in _lines(out)] == ["1", "2"]  # a.txt's lines: the only input


def test_summarize_and_qa_refuse_an_input_as_the_output(tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("The reactor was commissioned in 1962.\n")
    questions = tmp_path / "q.txt"
    questions.write_text("When was the reactor commissioned?\n")
    run = Run()
    code, _, err = run("summarize", "--combined", str(doc), "-o", str(doc))
    assert code == 2 and "is also an input" in _one_error_line(err)
    code, _, err = run("qa", "--docs", str(doc), "--questions", str(questions),
                       "-o", str(questions))
    assert code == 2 and "is also an input" in _one_error_line(err)
    assert run.opened == 0
    assert questions.read_text() == "When was the reactor commissioned?\n"


# ---------------------------------------------------------------- item 5: write errors


def _bad_outputs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "adir").mkdir()
    return {
        "missing dir": (str(tmp_path / "nonexistent" / "x.jsonl"), "No such file or directory"),
        "a directory": (str(tmp_path / "adir"), "Is a directory"),
        "parent is a file": (str(afile / "x.jsonl"), "Not a directory"),
    }


@pytest.mark.parametrize("case", ["missing dir", "a directory", "parent is a file"])
def test_an_unwritable_output_is_one_line_before_the_model_loads(tmp_path: Path,
                                                                 case: str) -> None:
    path, reason = _bad_outputs(tmp_path)[case]
    inp = tmp_path / "in.txt"
    inp.write_text("a\n")
    run = Run()
    code, _, err = run("classify", "--labels", "a,b", str(inp), "-o", path)
    assert code == 1
    assert _one_error_line(err) == f"termlm: error: cannot write {path}: {reason}"
    assert run.opened == 0


def test_a_read_only_place_is_one_line_before_the_model_loads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).startswith(str(ro)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    inp = tmp_path / "in.txt"
    inp.write_text("a\n")
    run = Run()
    code, _, err = run("batch", "-p", "{text}", str(inp), "-o", str(ro / "out.jsonl"))
    assert code == 1
    assert _one_error_line(err) == (f"termlm: error: cannot write {ro / 'out.jsonl'}: "
                                    "Read-only file system")
    assert run.opened == 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_dev_full_as_the_output_is_one_line(tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("a\nb\n")
    code, _, err = Run()("batch", "-p", "{text}", str(inp), "-o", "/dev/full")
    assert code == 1
    assert _one_error_line(err) == \
        "termlm: error: cannot write /dev/full: No space left on device"


def test_a_model_that_fails_to_load_loses_nothing(tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("a\n")
    old = tmp_path / "old.jsonl"
    old.write_text('{"id": "1", "output": "kept"}\n')
    new = tmp_path / "new.jsonl"

    def fail(_settings: object) -> FakeEngine:
        raise ModelMissing("no model here")

    run = Run(fail)
    for out in (old, new):
        code, _, err = run("batch", "-p", "{text}", str(inp), "-o", str(out))
        assert code == 1, err
    assert old.read_text() == '{"id": "1", "output": "kept"}\n'  # not emptied
    assert not new.exists()  # created for nothing, removed again


def test_a_full_disk_keeps_what_was_written_and_resume_finishes(
        tmp_path: Path, server: FakeServer) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("".join(f"line{i}\n" for i in range(40)))
    out = tmp_path / "out.jsonl"
    command = _termlm(*_remote(server), "batch", "-p", "{text}", str(inp), "-o", str(out))

    def small_disk() -> None:  # writes past 600 bytes fail with EFBIG (SIGXFSZ is ignored)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))

    proc = subprocess.run(command, capture_output=True, text=True, env=_env(tmp_path),
                          timeout=TIMEOUT_S, preexec_fn=small_disk)
    assert proc.returncode == 1, proc.stderr
    assert _one_error_line(proc.stderr) == f"termlm: error: cannot write {out}: File too large"
    written = out.read_bytes()
    assert 0 < len(written) <= 600
    proc = subprocess.run([*command, "--resume"], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(written.rsplit(b"\n", 1)[0])  # kept, not redone
    ids = Counter(r["id"] for r in _lines(out))
    assert set(ids) == {str(i) for i in range(1, 41)} and max(ids.values()) == 1


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["ask", "hi"], ["ask", "--json", "hi"], ["models", "list"],
                                  ["config", "show"], ["config", "show", "--json"],
                                  ["config", "path"], ["prompts", "list"],
                                  ["batch", "-p", "{text}", "IN"], ["summarize", "IN"],
                                  ["--version"], ["batch", "--help"]])
def test_stdout_on_a_full_device_is_one_line_and_exit_1(
        tmp_path: Path, server: FakeServer, args: list[str]) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("a\nb\n")
    args = [str(inp) if a == "IN" else a for a in args]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(_termlm(*_remote(server), *args), stdout=full,
                              stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
                              timeout=TIMEOUT_S)
    assert proc.returncode == 1, proc.stderr
    line = _one_error_line(proc.stderr)
    assert line.startswith("termlm: error: cannot write stdout") and \
        line.endswith("No space left on device"), line


@pytest.mark.parametrize("args", [["summarize", "IN"], ["ask", "hi"],
                                  ["batch", "-p", "{text}", "IN"]])
def test_a_closed_pipe_is_a_quiet_exit(tmp_path: Path, args: list[str]) -> None:
    fake = FakeServer(_handler(pieces=40_000))  # ~300 KB: more than a pipe holds
    try:
        inp = tmp_path / "in.txt"
        inp.write_text("".join(f"line {i}\n" for i in (range(5000) if "batch" in args
                                                        else range(3))))
        args = [str(inp) if a == "IN" else a for a in args]
        proc = subprocess.Popen(_termlm(*_remote(fake), *args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=_env(tmp_path))
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(10)  # then `head` goes away
        proc.stdout.close()
        _, raw = proc.communicate(timeout=TIMEOUT_S)
        err = raw.decode()
        assert proc.returncode == 0, err
    finally:
        fake.close()
    assert "model error" not in err and "Broken pipe" not in err, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_json_output_never_holds_bare_nan() -> None:
    record = {"id": "1", "x": math.nan, "y": [math.inf, 1.5], "z": {"w": -math.inf}}

    def strict(text: str) -> Any:
        def refuse(name: str) -> Any:
            raise ValueError(name)
        return json.loads(text, parse_constant=refuse)

    assert strict(dumps_json(record)) == {"id": "1", "x": None, "y": [None, 1.5],
                                          "z": {"w": None}}
    for fmt in ("jsonl", "text"):
        stream = StringIO()
        RecordWriter(stream, fmt).write(record)  # type: ignore[arg-type]
        assert "NaN" not in stream.getvalue() and "Infinity" not in stream.getvalue()
    stream = StringIO()
    RecordWriter(stream, "jsonl").write({"id": "2", "output": "ok", "score": math.nan})
    assert strict(stream.getvalue()) == {"id": "2", "output": "ok", "score": None}


# ---------------------------------------------------------------- item 7: one writer


def test_a_second_run_on_the_same_output_stops_at_once(tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("a\nb\n")
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "1", "label": "a"}\n')
    holder = _holder(out)
    try:
        run = Run()
        started = time.monotonic()
        for resume in ([], ["--resume"]):
            code, _, err = run("classify", "--labels", "a,b", str(inp), "-o", str(out),
                               *resume)
            assert code == 1
            assert _one_error_line(err) == (f"termlm: error: {out} is being written by "
                                            f"another termlm run (pid {holder.pid})")
        assert time.monotonic() - started < 5
        assert run.opened == 0
        assert out.read_text() == '{"id": "1", "label": "a"}\n'
    finally:
        holder.kill()
        holder.communicate()
    code, _, err = Run()("classify", "--labels", "a,b", str(inp), "-o", str(out), "--resume")
    assert code == 0, err  # once the other run is gone, the file is free


def test_the_lock_survives_resume_rewriting_the_file(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "1", "output": "ok"}\n{"id": "2", "error": "boom"}\n'
                   '{"id": "3", "output": "ok"}\n')
    before = out.stat().st_ino
    with open_output(str(out), "jsonl", append=True) as target:
        done = load_done(str(out), "jsonl", keep=target.keep)
        assert done.ids == ["1", "3"] and done.errors_removed == 1
        assert out.stat().st_ino != before  # replaced by the repaired file ...
        with pytest.raises(OutputBusy):  # ... which is locked all the same
            open_output(str(out), "jsonl", append=True)
        with target.writer() as writer:  # and the run writes to that file
            writer.write({"id": "2", "output": "retried"})
    assert [r["id"] for r in _lines(out)] == ["1", "3", "2"]
    open_output(str(out), "jsonl", append=True).close()  # released at the end


def test_two_runs_started_together_never_duplicate_records(tmp_path: Path) -> None:
    fake = FakeServer(_handler(delay_s=0.01))
    try:
        inp = tmp_path / "in.txt"
        inp.write_text("".join(f"line{i}\n" for i in range(50)))
        out = tmp_path / "same.jsonl"
        command = _termlm(*_remote(fake), "--concurrency", "2", "batch", "-p", "{text}",
                          str(inp), "-o", str(out), "--resume")
        for _ in range(3):
            procs = [subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
                     for _ in range(2)]
            errs = [p.communicate(timeout=TIMEOUT_S)[1] for p in procs]
            for code, err in zip([p.returncode for p in procs], errs, strict=True):
                assert code in (0, 1), err
                if code == 1:
                    assert "is being written by another termlm run" in _one_error_line(err)
            ids = Counter(r["id"] for r in _lines(out))
            assert max(ids.values()) == 1, ids
            out.unlink()
    finally:
        fake.close()


# ---------------------------------------------------------------- item 11: symlinks


def test_resume_through_a_symlink_rewrites_the_target_and_keeps_the_link(
        tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("a\nb\nc\n")
    real = tmp_path / "data" / "out.jsonl"
    real.parent.mkdir()
    real.write_text('{"id": "1", "output": "echo: a"}\n{"id": "2", "error": "boom"}\n'
                    '{"id": "3", "output": "echo: c"}\n')
    link = tmp_path / "out.jsonl"
    link.symlink_to(real)
    code, _, err = Run()("batch", "-p", "{text}", str(inp), "-o", str(link), "--resume")
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == real.resolve()
    records = _lines(real)
    assert [r["id"] for r in records] == ["1", "3", "2"]
    assert all("error" not in r for r in records)


def test_resume_of_a_hard_linked_output_warns_that_the_other_name_keeps_the_old_file(
        tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("a\nb\n")
    out = tmp_path / "out.jsonl"
    earlier = '{"id": "1", "output": "echo: a"}\n{"id": "2", "error": "boom"}\n'
    out.write_text(earlier)
    other = tmp_path / "backup.jsonl"
    os.link(out, other)
    code, _, err = Run()("batch", "-p", "{text}", str(inp), "-o", str(out), "--resume")
    assert code == 0, err
    assert f"{out} has 2 hard links" in err and "the other names keep" in err, err
    assert [r["id"] for r in _lines(out)] == ["1", "2"] and "error" not in _lines(out)[1]
    assert other.read_text() == earlier  # the other name still holds the earlier run


def test_write_atomic_follows_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_text("old\n")
    real.chmod(0o600)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    write_atomic(link, "new\n")
    assert link.is_symlink()
    assert real.read_text() == "new\n"
    assert real.stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- a FIFO as the output


def _batch_into_fifo(tmp_path: Path, server: FakeServer,
                     lines: str) -> tuple[subprocess.Popen[str], Path]:
    """termlm batch with -o a FIFO nobody reads yet, once it has said that it waits."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    inp = tmp_path / "in.txt"
    inp.write_text(lines)
    proc = subprocess.Popen(_termlm(*_remote(server), "batch", "-p", "{text}", str(inp),
                                    "-o", str(fifo)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path))
    assert proc.stderr is not None
    line = proc.stderr.readline()  # said before any reader comes: the run is not stuck
    assert line.strip() == f"waiting for a reader on the FIFO {fifo}", line
    return proc, fifo


def test_a_fifo_output_with_no_reader_says_it_waits_then_writes(
        tmp_path: Path, server: FakeServer) -> None:
    proc, fifo = _batch_into_fifo(tmp_path, server, "a\nb\n")
    with open(fifo, encoding="utf-8") as reader:
        records = [json.loads(row) for row in reader]
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    assert [r["output"] for r in records] == ["echo a", "echo b"], records
    assert out == ""


def test_a_fifo_output_wait_ends_on_ctrl_c(tmp_path: Path, server: FakeServer) -> None:
    import signal

    proc, _ = _batch_into_fifo(tmp_path, server, "a\n")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err


# ---------------------------------------------------------------- the log of a cut-short run


def _log_rows(tmp_path: Path) -> list[dict[str, Any]]:
    env = {**_env(tmp_path), "TERMLM_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run(_termlm("logs", "--json"), capture_output=True, text=True, env=env,
                          timeout=TIMEOUT_S, check=True)
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


@pytest.mark.parametrize("args", [["ask", "hi"], ["batch", "-p", "{text}", "IN"]])
def test_a_run_cut_by_a_closed_pipe_is_logged_with_what_it_did(
        tmp_path: Path, args: list[str]) -> None:
    fake = FakeServer(_handler(pieces=40_000))  # more than a pipe holds
    try:
        inp = tmp_path / "in.txt"
        inp.write_text("".join(f"line {i}\n" for i in range(5000)))
        args = [str(inp) if a == "IN" else a for a in args]
        env = {**_env(tmp_path), "TERMLM_DATA_DIR": str(tmp_path / "data")}
        proc = subprocess.Popen(_termlm(*_remote(fake), *args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        assert proc.stdout is not None
        assert proc.stdout.read(10)  # then `head` goes away
        proc.stdout.close()
        _, err = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode == 0, err
    finally:
        fake.close()
    (row,) = _log_rows(tmp_path)
    if args[0] == "ask":  # the reply as far as it got, its tokens counted
        assert row["interrupted"] is True and row["reply"].startswith("word0 ")
        assert row["completion_tokens"] and row["completion_tokens"] > 0
    else:  # the run's counts as far as it got, and who ran it
        assert row["status"] == "interrupted" and row["model"]
        assert row["counts"]["ok"] >= 1
