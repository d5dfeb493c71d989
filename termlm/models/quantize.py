"""``termlm models quantize``: a model file to another quantization, safely.

The source is anything ``-m`` accepts (resolved, and pulled if need be). llama.cpp
writes the new file under a temporary name in the destination directory; the file
is renamed into place only once the child that wrote it has succeeded and its GGUF
header checks out, so an interrupted, failed or crashed run never leaves a partial
model (and the temporary file is removed). The result becomes a local alias in the
config file. The native call lives in :mod:`termlm.engine.quantize`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from termlm import paths
from termlm.config import Settings
from termlm.engine.quantize import QUANT_TYPES, ProgressFn, QuantizeJob
from termlm.errors import ConfigError, EngineError, ModelFileError, TermlmError, UsageError
from termlm.models.gguf import GGUFHeader, check_gguf

Notify = Callable[[str], None]

UNQUANTIZED = ("F32", "F16", "BF16")  # sources that need no --allow-requantize
DISK_FULL_BYTES = 16 << 20  # less free space than this after a failed write: the disk filled up
# a quantization named at the end of a file stem: "-Q4_K_M", ".Q4_1", "-f16", "_iq2_xxs"
_QUANT_SUFFIX = re.compile(r"[._-](?:i?q\d+(?:_[a-z0-9]+)*|b?f16|f32)$", re.IGNORECASE)
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class QuantizeError(TermlmError):
    """Quantizing failed: the output could not be written, or llama.cpp refused."""


@dataclass(frozen=True)
class QuantizeOptions:
    """What the user asked for; ``type_name`` as typed (checked by :func:`parse_type`)."""

    source: str
    type_name: str
    output: str | None = None  # a file, or a directory (existing, or written with a final /)
    alias: str | None = None
    force: bool = False
    allow_requantize: bool = False
    threads: int | None = None


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    alias: str
    type_name: str
    source_path: Path
    source_quantization: str
    source_size: int
    size: int
    seconds: float
    config_file: Path


def parse_type(text: str) -> str:
    """``q8_0`` -> ``Q8_0``; an unknown type is a usage error that lists the choices."""
    name = text.strip().upper()
    if name not in QUANT_TYPES:
        raise UsageError(f"unknown quantization type {text!r} "
                         f"(choices: {', '.join(QUANT_TYPES)})")
    return name


def strip_quant_suffix(stem: str) -> str:
    """``SmolLM2-135M-Instruct.Q4_1`` -> ``SmolLM2-135M-Instruct``."""
    stripped = _QUANT_SUFFIX.sub("", stem)
    return stripped or stem


def type_suffix(type_name: str) -> str:
    """The alias suffix of a type: lower case, a trailing ``_0`` dropped (Q8_0 -> q8)."""
    return type_name.lower().removesuffix("_0")


def default_alias(model_name: str, type_name: str) -> str:
    """``smollm2`` + Q8_0 -> ``smollm2-q8``; a file name (``hf:org/repo/tiny.gguf``, a
    path) loses its folders, extension and quant, and keeps only what an alias may hold."""
    base = model_name.rsplit("/", 1)[-1].removeprefix("hf:")
    if base.lower().endswith(".gguf"):
        base = base[: -len(".gguf")].lower()
    base = re.sub(r"[^A-Za-z0-9._+-]+", "-", base).lstrip("._+-") or "model"
    return f"{strip_quant_suffix(base)}-{type_suffix(type_name)}"


def default_output(source: Path, type_name: str, models_dir: Path) -> Path:
    """``<models>/<source stem without its quant suffix>-<TYPE>.gguf``."""
    return models_dir / f"{strip_quant_suffix(source.stem)}-{type_name}.gguf"


def needs_requantize(quantization: str | None) -> bool:
    return (quantization or "").upper() not in UNQUANTIZED


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return a.absolute() == b.absolute()


def _check_source(quantization: str, name: str, allow_requantize: bool) -> None:
    if needs_requantize(quantization) and not allow_requantize:
        raise UsageError(f"{name} is already quantized ({quantization}); requantizing it "
                         "loses quality",
                         hint="add --allow-requantize, or quantize from an F16/F32 file")


def _warn_source(quantization: str, name: str, type_name: str, notify: Notify) -> None:
    if quantization.upper() == type_name:
        notify(f"warning: {name} is already {quantization}: requantizing to the same type "
               "gains nothing and may lose quality")
    elif needs_requantize(quantization):
        notify(f"warning: requantizing {name} from {quantization} to {type_name}: quality "
               f"is at best that of {quantization}, and the errors add up")


def _check_alias(alias: str, path: Path, settings: Settings, force: bool) -> None:
    from termlm.models import catalog

    if not _ALIAS.match(alias):
        raise UsageError(f"invalid alias {alias!r} (letters, digits and . _ + - only)",
                         hint="pick another with --name")
    if catalog.get_entry(alias) is not None:
        raise UsageError(f"alias {alias!r} would hide the catalog model of that name",
                         hint="pick another with --name")
    current = settings.models.get(alias)
    if current is not None and not force and not _same_file(Path(current).expanduser(), path):
        raise UsageError(f"alias {alias!r} already names {current}",
                         hint="pick another with --name, or --force to repoint it")


def _output_path(options: QuantizeOptions, source: Path, type_name: str) -> Path:
    if options.output is None:
        out = default_output(source, type_name, paths.models_dir())
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QuantizeError(f"cannot create {out.parent}: {exc.strerror or exc}") from None
    else:
        out = Path(options.output).expanduser()
        if options.output.endswith(("/", os.sep)) or out.is_dir():  # -o DIR/: default name
            if not out.is_dir():
                raise QuantizeError(f"cannot write to {out}: no such directory")
            out = out / default_output(source, type_name, out).name
    out = out.absolute()
    if _same_file(out, source):
        raise UsageError(f"the output {out} is the source itself", hint="pass -o another path")
    if (out.exists() or out.is_symlink()) and not options.force:
        raise UsageError(f"{out} already exists", hint="add --force to replace it, or -o "
                         "another path")
    if not out.parent.is_dir():
        raise QuantizeError(f"cannot write {out}: {out.parent} is not a directory")
    return out


def _temp_file(out: Path) -> Path:
    """An empty file beside ``out`` for llama.cpp to fill (proves the directory writable).

    Made with the usual permissions (0666 less the umask, as the final file would be),
    not mkstemp's 0600.
    """
    for _ in range(100):
        temp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        except OSError as exc:
            raise QuantizeError(f"cannot write to {out.parent}: {exc.strerror or exc}",
                                hint="pass -o a writable path") from None
        return temp
    raise QuantizeError(f"cannot find a free temporary name in {out.parent}")


def _disk_full(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < DISK_FULL_BYTES
    except OSError:
        return False


def _run(job: QuantizeJob, directory: Path, on_progress: ProgressFn | None) -> None:
    """The native quantize, in a child; its failures said in terms of the output."""
    from termlm.engine.quantize import quantize

    try:
        quantize(job, on_progress=on_progress)
    except EngineError as exc:
        if _disk_full(directory):  # checked before the partial file is deleted
            raise QuantizeError(f"no space left in {directory} while writing the quantized "
                                "model", hint="free some space, or pass -o a path on another "
                                "disk") from None
        if "iostream error" in exc.message:  # std::ofstream failed: EFBIG, EIO, ...
            raise QuantizeError(f"writing the quantized model in {directory} failed "
                                f"({exc.message})", hint="check the free space and the file "
                                "size limit (ulimit -f)") from None
        raise QuantizeError(exc.message, hint=exc.hint) from None


def _check_result(temp: Path, source: GGUFHeader, type_name: str) -> GGUFHeader:
    try:
        header = check_gguf(temp)
    except ModelFileError as exc:
        raise QuantizeError(f"llama.cpp wrote a broken file: {exc.message}") from None
    if header.quantization != type_name:
        raise QuantizeError(f"llama.cpp wrote a {header.quantization} file, not {type_name}")
    if header.tensor_count != source.tensor_count:
        raise QuantizeError(f"llama.cpp wrote {header.tensor_count} tensors, not "
                            f"{source.tensor_count}")
    return header


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def quantize_model(options: QuantizeOptions, settings: Settings, *, notify: Notify,
                   on_progress: ProgressFn | None = None) -> QuantizeResult:
    """Quantize, check, move into place, add the alias; return what was made."""
    from termlm.config import update_config_file
    from termlm.models.resolve import resolve_model
    from termlm.sysinfo import default_threads

    type_name = parse_type(options.type_name)
    resolved = resolve_model(options.source, settings, notify=notify)
    header = resolved.header
    source_quant = header.quantization or "unknown"
    _check_source(source_quant, resolved.name, options.allow_requantize)
    out = _output_path(options, resolved.path, type_name)
    alias = options.alias if options.alias is not None else default_alias(resolved.name,
                                                                           type_name)
    _check_alias(alias, out, settings, options.force)
    threads = options.threads or settings.threads or default_threads()

    temp = _temp_file(out)
    started = time.perf_counter()
    try:
        _warn_source(source_quant, resolved.name, type_name, notify)
        notify(f"quantizing {resolved.name} ({source_quant}, {header.tensor_count} tensors) "
               f"to {type_name} with {threads} thread{'s' if threads != 1 else ''}")
        job = QuantizeJob(source=str(resolved.path), dest=str(temp), type_name=type_name,
                          threads=threads, allow_requantize=options.allow_requantize,
                          total_tensors=header.tensor_count)
        _run(job, out.parent, on_progress)
        written = _check_result(temp, header, type_name)
        try:
            _fsync(temp)
            os.replace(temp, out)
        except OSError as exc:
            raise QuantizeError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()
    seconds = time.perf_counter() - started
    try:
        config_file = update_config_file({"models": {alias: str(out)}})
    except ConfigError as exc:
        raise ConfigError(exc.message, hint=f"the quantized model is at {out}; add the "
                          f"alias {alias} by hand") from None
    return QuantizeResult(path=out, alias=alias, type_name=type_name,
                          source_path=resolved.path, source_quantization=source_quant,
                          source_size=header.file_size, size=written.file_size,
                          seconds=seconds, config_file=config_file)
