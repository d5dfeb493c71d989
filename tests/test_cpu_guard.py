"""The AMX guard: llama.cpp's extra CPU buffer types, detected from llama.cpp itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from termlm.config import ConfigError, load_settings
from termlm.engine.backend import (
    BackendInfo,
    backend_info,
    decide_extra_buffers,
    patch_llama_defaults,
)
from termlm.errors import EngineError

AMX = BackendInfo({"AVX512": "1", "AMX_INT8": "1"}, ("AMX", "CPU_REPACK"))
AVX2 = BackendInfo({"AVX2": "1"}, ("CPU_REPACK",))


def test_auto_leaves_the_extra_buffers_out_where_llama_cpp_would_use_amx() -> None:
    choice = decide_extra_buffers("auto", AMX)
    assert choice.use is False
    assert "AMX" in choice.reason and "--cpu-extra-buffers on" in choice.reason


def test_auto_keeps_them_elsewhere() -> None:
    choice = decide_extra_buffers("auto", AVX2)
    assert choice.use is True
    assert "CPU_REPACK" in choice.reason
    assert decide_extra_buffers("auto", BackendInfo()).use is True


@pytest.mark.parametrize("info", [AMX, AVX2])
def test_on_and_off_are_obeyed(info: BackendInfo) -> None:
    assert decide_extra_buffers("on", info).use is True
    assert decide_extra_buffers("off", info).use is False


def test_an_unknown_choice_is_an_error() -> None:
    with pytest.raises(EngineError):
        decide_extra_buffers("maybe", AVX2)


def test_the_setting_comes_from_flag_env_and_config(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: os.PathLike[str]) -> None:
    assert load_settings().cpu_extra_buffers == "auto"
    monkeypatch.setenv("TERMLM_CPU_EXTRA_BUFFERS", "off")
    assert load_settings().cpu_extra_buffers == "off"
    assert load_settings({"cpu_extra_buffers": "on"}).cpu_extra_buffers == "on"
    monkeypatch.setenv("TERMLM_CPU_EXTRA_BUFFERS", "sometimes")
    with pytest.raises(ConfigError, match="cpu_extra_buffers must be auto, on or off"):
        load_settings()


def test_config_file_yaml_booleans(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
                                   ) -> None:
    config = os.path.join(tmp_path, "config.yaml")
    with open(config, "w") as fh:
        fh.write("cpu_extra_buffers: off\n")  # YAML reads a bare off as false
    monkeypatch.setenv("TERMLM_CONFIG", config)
    assert load_settings().cpu_extra_buffers == "off"


def test_backend_info_comes_from_llama_cpp() -> None:
    info = backend_info()
    assert any(d.kind == "cpu" for d in info.devices)
    assert all(isinstance(name, str) and name for name in info.extra_buffer_types)
    if os.uname().machine in ("x86_64", "AMD64"):
        assert "SSE3" in info.cpu_features  # every x86-64 build reports it
    # the guard's reading matches llama.cpp's own feature list
    assert info.has_amx_buffers == ("AMX" in info.extra_buffer_types)


def test_llama_defaults_carry_the_choice() -> None:
    code = ("import sys; from termlm.engine.backend import patch_llama_defaults;"
            "c = patch_llama_defaults(sys.argv[1]);"
            "import llama_cpp.llama_cpp as low;"
            "print(c.use, low.llama_model_default_params().use_extra_bufts)")
    for setting, expected in (("off", "False False"), ("on", "True True")):
        out = subprocess.run([sys.executable, "-c", code, setting], capture_output=True,
                             text=True, check=True).stdout.split()
        assert " ".join(out) == expected


def test_patching_twice_does_not_stack() -> None:
    patch_llama_defaults("off")
    choice = patch_llama_defaults("on")
    from termlm.engine.llama_common import bindings

    assert choice.use is True
    assert bindings().llama_model_default_params().use_extra_bufts is True
    patch_llama_defaults("auto")


@pytest.mark.model
@pytest.mark.parametrize("setting", ["on", "off"])
def test_verbose_says_which_was_chosen_and_why(setting: str) -> None:
    if setting == "on" and backend_info().has_amx_buffers:
        pytest.skip("on an AMX machine, 'on' is the crash itself")
    proc = subprocess.run([sys.executable, "-m", "termlm", "-v", "--cpu-extra-buffers",
                           setting, "ask", "-n", "4", "--temperature", "0", "hi"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"cpu extra buffers {setting} by setting" in proc.stderr
    assert proc.stdout.strip()


def _load_log(caplog: pytest.LogCaptureFixture, setting: str) -> str:
    """llama.cpp's load log for the default model (it has Q4_K weights, which llama.cpp
    repacks on AVX2 when the extra buffer types are used)."""
    import logging

    from termlm.config import Settings
    from termlm.engine.batched import BatchedEngine
    from termlm.models.resolve import resolve_model

    model = resolve_model("qwen2.5-coder-0.5b", Settings())
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="termlm.llama"):
        engine = BatchedEngine(str(model.path), name=model.name, n_ctx=256, n_ctx_train=32768,
                               parallel=1, cpu_extra_buffers=setting)
        engine.close()
    return caplog.text


@pytest.mark.model
def test_the_guard_loads_without_extra_buffers_where_amx_would_be_used(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """With llama.cpp reporting an AMX buffer type, auto loads the weights as plain CPU
    buffers; with llama.cpp's real list here, auto keeps what llama.cpp offers."""
    import termlm.engine.backend as backend

    real = backend_info()
    if "CPU_REPACK" not in real.extra_buffer_types:
        pytest.skip("this build offers no CPU_REPACK buffer type to tell the two apart")
    here = _load_log(caplog, "auto")
    assert ("CPU_REPACK model buffer" in here) is (not real.has_amx_buffers)
    fake = BackendInfo(real.cpu_features, ("AMX", *real.extra_buffer_types), real.devices)
    monkeypatch.setattr(backend, "backend_info", lambda: fake)
    guarded = _load_log(caplog, "auto")
    assert "cpu extra buffers off: llama.cpp would put the weights in its AMX" in guarded
    assert "CPU_REPACK model buffer" not in guarded
    assert "CPU_Mapped model buffer" in guarded
