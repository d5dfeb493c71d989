"""`termlm models quantize`: naming and type parsing, refusals, and real runs on smollm2."""

from __future__ import annotations

import io
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from termlm.errors import ExitCode, UsageError
from termlm.models.gguf import read_gguf
from termlm.models.quantize import (
    default_alias,
    default_output,
    needs_requantize,
    parse_type,
    strip_quant_suffix,
    type_suffix,
)

from .conftest import Cli
from .helpers_gguf import write_gguf

TERMLM = [sys.executable, "-m", "termlm"]
SOURCE_NAME = "SmolLM2-135M-Instruct"  # the stem of smollm2's file, less ".Q4_1"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TERMLM, *args], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})}, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]


def config_aliases(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "config" / "config.yaml"
    if not path.exists():
        return {}
    return dict((yaml.safe_load(path.read_text()) or {}).get("models") or {})


def quantizer_processes(marker: str) -> list[str]:
    """Quantize children still alive whose job mentions ``marker`` (a test's tmp dir)."""
    found = []
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        if "termlm.engine.quantize" in cmdline and marker in cmdline:
            found.append(pid)
    return found


# -- the pure parts ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("Q8_0", "Q8_0"), ("q8_0", "Q8_0"), (" q4_k_m ", "Q4_K_M"), ("f16", "F16"), ("Bf16", "BF16"),
    ("q6_k", "Q6_K"), ("Q2_K", "Q2_K"),
])
def test_parse_type_ignores_case(text: str, expected: str) -> None:
    assert parse_type(text) == expected


@pytest.mark.parametrize("text", ["Q7", "q4", "Q4_K", "IQ2_XXS", "F32", ""])
def test_unknown_type_is_a_usage_error_listing_the_choices(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_type(text)
    assert caught.value.exit_code == ExitCode.USAGE
    assert "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K_M, Q4_K_S, Q4_K_M" in caught.value.message
    assert "Q6_K, F16, BF16" in caught.value.message


@pytest.mark.parametrize(("type_name", "suffix"), [
    ("Q8_0", "q8"), ("Q4_0", "q4"), ("Q5_0", "q5"), ("Q4_1", "q4_1"), ("Q5_1", "q5_1"),
    ("Q4_K_M", "q4_k_m"), ("Q2_K", "q2_k"), ("F16", "f16"), ("BF16", "bf16"),
])
def test_type_suffix(type_name: str, suffix: str) -> None:
    assert type_suffix(type_name) == suffix


@pytest.mark.parametrize(("name", "type_name", "alias"), [
    ("smollm2", "Q8_0", "smollm2-q8"),
    ("qwen2.5-coder-1.5b", "Q8_0", "qwen2.5-coder-1.5b-q8"),
    ("gemma3-270m", "Q4_K_M", "gemma3-270m-q4_k_m"),
    ("smollm2", "F16", "smollm2-f16"),
    ("mine-f16", "Q4_0", "mine-q4"),  # an alias that names its quantization loses it
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q8_0", "smollm2-135m-instruct-q8"),  # a path
])
def test_default_alias(name: str, type_name: str, alias: str) -> None:
    assert default_alias(name, type_name) == alias


@pytest.mark.parametrize(("stem", "stripped"), [
    ("SmolLM2-135M-Instruct.Q4_1", "SmolLM2-135M-Instruct"),
    ("gemma-3-270m-q4_k_m", "gemma-3-270m"),
    ("Llama-3.2-1B-Instruct-Q8_0", "Llama-3.2-1B-Instruct"),
    ("model-f16", "model"), ("model.BF16", "model"), ("model_f32", "model"),
    ("phi-2.IQ2_XXS", "phi-2"),
    ("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b"),  # nothing to strip
    ("Q8_0", "Q8_0"),  # never down to nothing
])
def test_strip_quant_suffix(stem: str, stripped: str) -> None:
    assert strip_quant_suffix(stem) == stripped


def test_default_output(tmp_path: Path) -> None:
    source = Path("/somewhere/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert default_output(source, "Q8_0", tmp_path) == tmp_path / f"{SOURCE_NAME}-Q8_0.gguf"
    assert default_output(Path("x/my-model-f16.gguf"), "Q4_K_M", tmp_path) == \
        tmp_path / "my-model-Q4_K_M.gguf"


@pytest.mark.parametrize(("quantization", "needed"), [
    ("F32", False), ("F16", False), ("BF16", False), ("Q4_1", True), ("Q8_0", True),
    ("Q4_K_M", True), (None, True),
])
def test_needs_requantize(quantization: str | None, needed: bool) -> None:
    assert needs_requantize(quantization) is needed


def test_every_type_is_a_llama_ftype_the_header_reader_names() -> None:
    """The child's LLAMA_FTYPE_MOSTLY_* constant and the header check must agree."""
    from termlm.engine.llama_common import bindings
    from termlm.engine.quantize import QUANT_TYPES, ftype_constant
    from termlm.models.gguf import FILE_TYPES

    low = bindings()
    for type_name in QUANT_TYPES:
        assert FILE_TYPES[getattr(low, ftype_constant(type_name))] == type_name


def test_progress_prints_every_tenth_when_not_a_terminal() -> None:
    from termlm.cli.quantize_cmd import TensorProgress

    stream = io.StringIO()
    progress = TensorProgress(stream, live=False)
    for done in range(273):
        progress(done, 272)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0] == "quantizing: 28/272 tensors"
    assert lines[-1] == "quantizing: 272/272 tensors"


def test_progress_is_one_live_line_on_a_terminal() -> None:
    from termlm.cli.quantize_cmd import TensorProgress

    stream = io.StringIO()
    progress = TensorProgress(stream, live=True)
    for done in (1, 2, 3, 272):
        progress(done, 272)
    progress.close()
    text = stream.getvalue()
    assert "\n" not in text[:-1] and text.endswith("quantizing: 272/272 tensors\n")
    assert text.startswith("\r\x1b[2Kquantizing: 1/272 tensors")


# -- refusals, through the real app (no model needed) ------------------------------------


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A small GGUF (marked Q4_1) that passes the header check but llama.cpp rejects."""
    return write_gguf(tmp_path / "tiny.gguf")


def test_unknown_type_on_the_command_line(cli: Cli, tmp_path: Path) -> None:
    result = cli("models", "quantize", "smollm2", "Q7", "-o", str(tmp_path / "out.gguf"))
    assert result.exit_code == ExitCode.USAGE
    assert "unknown quantization type 'Q7'" in result.stderr and "Q4_K_M" in result.stderr
    assert result.stdout == "" and not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("kind", ["text", "missing", "directory"])
def test_a_source_that_is_not_gguf(cli: Cli, tmp_path: Path, kind: str) -> None:
    source = tmp_path / "notes.gguf"
    if kind == "text":
        source.write_text("this is not a model\n")
    elif kind == "directory":
        source.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    result = cli("models", "quantize", str(source), "Q8_0", "-o", str(out))
    assert result.exit_code == ExitCode.ERROR, result.stderr
    assert str(source) in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2 and "Traceback" not in result.stderr
    assert list(out.iterdir()) == []


def test_quantized_source_needs_allow_requantize(cli: Cli, tmp_path: Path, tiny: Path) -> None:
    result = cli("models", "quantize", str(tiny), "Q8_0", "-o", str(tmp_path / "out.gguf"))
    assert result.exit_code == ExitCode.USAGE
    assert "already quantized (Q4_1)" in result.stderr
    assert "hint: add --allow-requantize" in result.stderr
    assert not (tmp_path / "out.gguf").exists() and config_aliases(tmp_path) == {}


def test_existing_output_is_kept_without_force(cli: Cli, tmp_path: Path, tiny: Path) -> None:
    out = tmp_path / "out.gguf"
    out.write_text("keep me")
    result = cli("models", "quantize", str(tiny), "Q8_0", "--allow-requantize", "-o", str(out))
    assert result.exit_code == ExitCode.USAGE
    assert f"{out} already exists" in result.stderr and "--force" in result.stderr
    assert "warning" not in result.stderr  # refused before anything else is said
    assert out.read_text() == "keep me"


def test_llama_cpp_failure_is_one_line_and_keeps_the_old_output(
        cli: Cli, tmp_path: Path, tiny: Path) -> None:
    out = tmp_path / "out.gguf"
    out.write_text("keep me")
    result = cli("models", "quantize", str(tiny), "Q8_0", "--allow-requantize", "--force",
                 "-o", str(out))
    assert result.exit_code == ExitCode.ERROR
    errors = [line for line in result.stderr.splitlines() if line.startswith("termlm:")]
    assert errors == ["termlm: error: llama.cpp could not quantize: key not found in model: "
                      "llama.attention.layer_norm_rms_epsilon"]
    assert out.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.glob("*.gguf*")) == ["out.gguf", "tiny.gguf"]
    assert not list(tmp_path.glob(".*"))  # no temporary file
    assert config_aliases(tmp_path) == {}


def test_output_into_a_missing_directory(cli: Cli, tmp_path: Path, tiny: Path) -> None:
    missing = tmp_path / "no-such-dir"
    result = cli("models", "quantize", str(tiny), "Q8_0", "--allow-requantize", "-o",
                 f"{missing}/")
    assert result.exit_code == ExitCode.ERROR
    assert f"cannot write to {missing}: no such directory" in result.stderr
    assert not missing.exists()


def test_output_beside_a_file_is_refused(cli: Cli, tmp_path: Path, tiny: Path) -> None:
    result = cli("models", "quantize", str(tiny), "Q8_0", "--allow-requantize", "-o",
                 str(tiny / "out.gguf"))
    assert result.exit_code == ExitCode.ERROR
    assert "is not a directory" in result.stderr


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root can write anywhere")
def test_unwritable_output_directory(cli: Cli, tmp_path: Path, tiny: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = cli("models", "quantize", str(tiny), "Q8_0", "--allow-requantize", "-o",
                     str(locked / "out.gguf"))
    finally:
        locked.chmod(0o700)
    assert result.exit_code == ExitCode.ERROR
    assert f"cannot write to {locked}" in result.stderr and "Traceback" not in result.stderr
    assert list(locked.iterdir()) == []


def test_the_output_may_not_be_the_source(cli: Cli, tiny: Path) -> None:
    result = cli("models", "quantize", str(tiny), "Q4_1", "--allow-requantize", "--force",
                 "-o", str(tiny))
    assert result.exit_code == ExitCode.USAGE
    assert "is the source itself" in result.stderr


def test_an_alias_may_not_hide_a_catalog_model(cli: Cli, tmp_path: Path, tiny: Path) -> None:
    result = cli("models", "quantize", str(tiny), "Q8_0", "--allow-requantize", "--name",
                 "smollm2", "-o", str(tmp_path / "out.gguf"))
    assert result.exit_code == ExitCode.USAGE
    assert "would hide the catalog model" in result.stderr


def test_help_stays_light() -> None:
    code = ("import sys\nfrom termlm.cli import app\ntry:\n"
            "    app(['models', 'quantize', '--help'], prog_name='termlm')\n"
            "except SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('llama_cpp', 'numpy') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=60)
    assert "Example: termlm models quantize" in proc.stdout
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


# -- real runs on smollm2 (Q4_1) ---------------------------------------------------------

model = pytest.mark.model


@pytest.fixture(scope="module")
def smollm2() -> Path:
    pulled = run("models", "pull", "smollm2", timeout=900)
    assert pulled.returncode == 0, pulled.stderr
    return Path(pulled.stdout.strip())


@model
def test_requantize_to_q8_0_makes_a_bigger_model_that_answers(tmp_path: Path,
                                                              smollm2: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run("models", "quantize", "smollm2", "q8_0", "--allow-requantize", "-o",
                 str(out_dir))
    assert result.returncode == 0, result.stderr
    out = out_dir / f"{SOURCE_NAME}-Q8_0.gguf"
    assert result.stdout == f"{out}\n"
    assert "warning: requantizing smollm2 from Q4_1 to Q8_0" in result.stderr
    assert "quantizing: 272/272 tensors" in result.stderr
    assert "98 MB (Q4_1) -> 145 MB (Q8_0)" in result.stderr
    header = read_gguf(out)
    assert header.metadata["general.file_type"] == 7 and header.quantization == "Q8_0"
    assert header.tensor_count == read_gguf(smollm2).tensor_count
    assert out.stat().st_size > smollm2.stat().st_size
    assert sorted(p.name for p in out_dir.iterdir()) == [out.name]  # no temporary file
    assert config_aliases(tmp_path) == {"smollm2-q8": str(out)}

    answer = run("ask", "-m", "smollm2-q8", "--temperature", "0", "-n", "20",
                 "What is the capital of France?")
    assert answer.returncode == 0, answer.stderr
    assert "Paris" in answer.stdout


@model
def test_q4_0_to_the_default_path_with_a_chosen_alias(tmp_path: Path, smollm2: Path) -> None:
    models_dir = tmp_path / "models"  # the default output goes to the models directory
    env = {"TERMLM_MODELS_DIR": str(models_dir)}
    args = ("models", "quantize", str(smollm2), "Q4_0", "--allow-requantize", "--name",
            "tiny-q4", "--threads", "1")
    result = run(*args, env=env)
    assert result.returncode == 0, result.stderr
    out = models_dir / f"{SOURCE_NAME}-Q4_0.gguf"
    assert result.stdout == f"{out}\n"
    assert "with 1 thread" in result.stderr
    assert read_gguf(out).quantization == "Q4_0"
    assert out.stat().st_size <= smollm2.stat().st_size
    assert config_aliases(tmp_path) == {"tiny-q4": str(out)}

    again = run(*args, env=env)
    assert again.returncode == ExitCode.USAGE and "already exists" in again.stderr
    forced = run(*args, "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in models_dir.iterdir()) == [out.name]

    answer = run("ask", "-m", "tiny-q4", "--temperature", "0", "-n", "12", "Say hello.",
                 env=env)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip()


@model
def test_smollm2_needs_allow_requantize(cli: Cli, tmp_path: Path, smollm2: Path) -> None:
    result = cli("models", "quantize", "smollm2", "Q8_0", "-o", str(tmp_path / "x.gguf"))
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines()[0] == (
        "termlm: error: smollm2 is already quantized (Q4_1); requantizing it loses quality")
    assert not (tmp_path / "x.gguf").exists()


@model
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_quantize_leaves_nothing(tmp_path: Path, smollm2: Path,
                                              signum: int) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen(
        [*TERMLM, "models", "quantize", "smollm2", "Q4_K_M", "--allow-requantize",
         "--threads", "1", "-o", str(out_dir / "x.gguf")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    seen = b""
    for line in proc.stderr:  # wait for the progress to start
        seen += line
        if line.startswith(b"quantizing: "):
            break
    assert b"quantizing: " in seen, seen
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, seen + err
    assert b"interrupted" in err and b"Traceback" not in err
    assert out == b""
    assert list(out_dir.iterdir()) == []  # no model, no temporary file
    assert config_aliases(tmp_path) == {}
    assert quantizer_processes(str(tmp_path)) == []


@model
def test_a_write_failure_is_explained_and_cleaned_up(tmp_path: Path, smollm2: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def small_files() -> None:  # the output may not grow past 32 MB (ulimit -f)
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 20, 32 << 20))

    result = run("models", "quantize", "smollm2", "Q8_0", "--allow-requantize", "-o",
                 str(out_dir), preexec_fn=small_files)
    assert result.returncode == ExitCode.ERROR, result.stderr
    assert "termlm: error: writing the quantized model in" in result.stderr
    assert "ulimit -f" in result.stderr and "Traceback" not in result.stderr
    assert list(out_dir.iterdir()) == []
    assert config_aliases(tmp_path) == {}


@model
def test_a_crash_is_one_line_and_leaves_nothing(tmp_path: Path, smollm2: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen(
        [*TERMLM, "models", "quantize", "smollm2", "Q4_K_M", "--allow-requantize",
         "--threads", "1", "-o", str(out_dir / "x.gguf")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith(b"quantizing: "):
            break
    children = quantizer_processes(str(tmp_path))
    if not children:
        proc.kill()
        proc.communicate()
        pytest.skip("no /proc to find the quantize process in")
    os.kill(int(children[0]), signal.SIGSEGV)  # what a bug in llama.cpp's kernels does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.ERROR, err
    lines = err.decode().strip().splitlines()
    assert lines[-1].startswith("termlm: error: llama.cpp crashed (SIGSEGV) while quantizing")
    assert b"Traceback" not in err and out == b""
    assert list(out_dir.iterdir()) == []
    assert config_aliases(tmp_path) == {}


@model
def test_an_f16_source_needs_no_flag(tmp_path: Path, smollm2: Path) -> None:
    f16 = tmp_path / "smollm2-f16.gguf"
    made = run("models", "quantize", "smollm2", "F16", "--allow-requantize", "-o", str(f16))
    assert made.returncode == 0, made.stderr
    assert read_gguf(f16).quantization == "F16"
    assert config_aliases(tmp_path) == {"smollm2-f16": str(f16)}

    result = run("models", "quantize", "smollm2-f16", "Q8_0", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert result.stdout == f"{tmp_path / 'smollm2-Q8_0.gguf'}\n"
    assert read_gguf(tmp_path / "smollm2-Q8_0.gguf").quantization == "Q8_0"
    assert config_aliases(tmp_path)["smollm2-q8"] == str(tmp_path / "smollm2-Q8_0.gguf")
