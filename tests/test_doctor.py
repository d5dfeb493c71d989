"""termlm doctor: facts from llama.cpp and the system, a live check in a child process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from termlm import doctor
from termlm.cli import app
from termlm.cli.common import AppState
from termlm.engine.backend import backend_info, decide_extra_buffers

from .helpers_env import extra_buffers_setting

pytestmark = pytest.mark.model  # the live check loads the real default model

TERMLM = [sys.executable, "-m", "termlm"]


def _doctor(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["doctor", *args], obj=AppState())
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_doctor_passes_on_this_machine() -> None:
    proc = subprocess.run([*TERMLM, "doctor"], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for fact in ("llama-cpp-python", "tested: >=", "CPU (", "AMX: ", "extra buffers ",
                 "GPU offload: ", "threads: ", "memory: ", "fits in RAM", "models dir: ",
                 "live check: loaded in", "ok: this machine is ready"):
        assert fact in out, out


def test_doctor_json_has_every_fact() -> None:
    code, out, _ = _doctor("--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["ok"] is True and data["problems"] == []
    assert data["versions"]["llama_cpp_python"]
    assert data["versions"]["llama_cpp_python_tested"].startswith(">=")
    cpu = data["cpu"]
    assert isinstance(cpu["amx"], bool) and isinstance(cpu["extra_buffer_types"], list)
    setting = extra_buffers_setting()
    assert cpu["extra_buffers"]["setting"] == setting
    assert cpu["extra_buffers"]["use"] is decide_extra_buffers(setting, backend_info()).use
    assert isinstance(data["gpu"]["offload_supported"], bool)
    assert data["threads"]["generation"] == data["threads"]["physical_cores"]
    model = data["model"]
    assert model["fits"] is True
    need = model["need"]
    assert need["total"] == need["weights"] + need["kv_cache"] + need["compute"]
    assert all(d["free_disk"] > 0 for d in data["dirs"].values())
    live = data["live_check"]
    assert live["ok"] is True and 0 < live["tokens"] <= 32 and live["tokens_per_s"] > 0


def test_threads_and_setting_overrides_are_reported() -> None:
    code, _, _ = _doctor("--json", "--no-live")
    assert code == 0
    result = CliRunner().invoke(app, ["--threads", "1", "--cpu-extra-buffers", "off", "doctor",
                                      "--json", "--no-live"], obj=AppState())
    data = json.loads(result.stdout)
    assert data["threads"]["generation"] == 1
    assert data["cpu"]["extra_buffers"] == {"setting": "off", "use": False,
                                            "reason": "off by setting"}
    assert "live_check" not in data


def test_a_crashing_live_check_is_reported_with_its_fix(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(doctor, "PROBE_COMMAND", [sys.executable, "-c", crash])
    code, out, _ = _doctor()
    assert code == 1
    assert "live check: FAILED, llama.cpp crashed (SIGSEGV)" in out
    assert "likely cause:" in out and "fix:" in out
    assert "--cpu-extra-buffers off" in out


def test_amx_crash_diagnosis_names_the_guard_and_the_rebuild() -> None:
    amx = doctor.diagnose_crash(signal.SIGSEGV, extra_buffers_used=True, amx=True)
    assert "AMX" in amx["cause"] and "llama.cpp#20824" in amx["cause"]
    assert "--cpu-extra-buffers" in amx["fix"] and "CMAKE_ARGS" in amx["fix"]
    ill = doctor.diagnose_crash(signal.SIGILL, extra_buffers_used=False, amx=False)
    assert "instructions" in ill["cause"] and "GGML_NATIVE=OFF" in ill["fix"]


def test_a_model_that_does_not_fit_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor.sysinfo, "available_ram", lambda: 50 * 2**20)
    code, out, _ = _doctor("--no-live")
    assert code == 1
    assert "does NOT fit in RAM" in out
    assert "lower --ctx or pick a smaller model" in out


def test_a_bad_model_file_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    code, out, _ = _doctor("-m", str(bad))
    assert code == 1
    assert "model bad.gguf" in out or str(bad) in out
    assert "live check: FAILED: no model to check" in out


def test_a_probe_that_prints_nonsense_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "PROBE_COMMAND", [sys.executable, "-c", "print('hello')"])
    code, out, _ = _doctor()
    assert code == 1
    assert "live check: FAILED" in out
