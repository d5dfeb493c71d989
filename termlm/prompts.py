"""Prompt templates: YAML files, validated on load, rendered without evaluation.

A template is a mapping with these keys (anything else is rejected):

- ``description`` (required): one line for ``termlm prompts list``;
- ``system``: the system prompt;
- ``user`` (required): the user message, with ``{name}`` placeholders;
- ``user_with_input``: used instead of ``user`` when input is piped in (``{input}``);
- ``defaults``: sampling options (temperature, top_p, top_k, max_tokens, seed,
  stop, repeat_penalty).

Placeholders are ``{name}`` with a plain identifier; ``{{`` and ``}}`` are
literal braces. Values are inserted in one pass and never re-read, so a value
such as ``{text.__class__}`` stays literal text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from termlm import paths
from termlm.engine.types import SamplingError, SamplingParams
from termlm.errors import TemplateError
from termlm.inputs import read_text_input

_KEYS = {"description", "system", "user", "user_with_input", "defaults"}
_DEFAULT_KEYS = {"temperature", "top_p", "top_k", "max_tokens", "seed", "stop", "repeat_penalty"}
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def builtin_prompts_dir() -> Path:
    here = Path(__file__).resolve().parent
    shipped = here / "_prompts"  # inside the wheel
    return shipped if shipped.is_dir() else here.parent / "prompts"  # source checkout


def _parse(text: str, where: str) -> list[str | tuple[str]]:
    """Split a pattern into literal strings and ("name",) placeholders."""
    parts: list[str | tuple[str]] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        parts.append(text[pos : match.start()])
        token = match.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
        elif token in ("{", "}"):
            raise TemplateError(
                f"{where}: unmatched {token!r}; write {token * 2} for a literal brace"
            )
        else:
            name = match.group(1).strip()
            if not _NAME.match(name):
                raise TemplateError(f"{where}: {{{match.group(1)}}} is not a variable name")
            parts.append((name,))
        pos = match.end()
    parts.append(text[pos:])
    return [p for p in parts if p != ""]


def variables_in(text: str, where: str = "template") -> list[str]:
    seen: list[str] = []
    for part in _parse(text, where):
        if isinstance(part, tuple) and part[0] not in seen:
            seen.append(part[0])
    return seen


def substitute(text: str, values: dict[str, str], where: str = "template") -> str:
    parts = _parse(text, where)
    missing = [p[0] for p in parts if isinstance(p, tuple) and p[0] not in values]
    if missing:
        raise TemplateError(
            f"{where} needs variable {missing[0]!r}, which was not given",
            hint=f"given: {', '.join(sorted(values)) or 'nothing'}",
        )
    return "".join(p if isinstance(p, str) else values[p[0]] for p in parts)


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    user: str
    system: str | None = None
    user_with_input: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    builtin: bool = True

    @property
    def variables(self) -> list[str]:
        names = variables_in(self.user, self.name)
        if self.user_with_input:
            names += [n for n in variables_in(self.user_with_input, self.name) if n not in names]
        return names

    def render_user(self, values: dict[str, str], *, with_input: bool = False) -> str:
        pattern = self.user_with_input if (with_input and self.user_with_input) else self.user
        return substitute(pattern, values, f"template {self.name!r}")

    def render_system(self, values: dict[str, str]) -> str | None:
        if self.system is None:
            return None
        return substitute(self.system, values, f"template {self.name!r} (system)")

    def sampling(self, base: SamplingParams | None = None) -> SamplingParams:
        params = base or SamplingParams()
        return params.override(**self.defaults)


def _check_defaults(data: Any, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TemplateError(f"{where}: defaults must be a mapping")
    unknown = sorted(set(map(str, data)) - _DEFAULT_KEYS)
    if unknown:
        raise TemplateError(f"{where}: unknown default {unknown[0]!r}",
                            hint=f"known: {', '.join(sorted(_DEFAULT_KEYS))}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "stop":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TemplateError(f"{where}: defaults.stop must be text or a list of text")
            out[key] = list(value)
        elif key in ("max_tokens", "top_k", "seed"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TemplateError(f"{where}: defaults.{key} must be a whole number")
            out[key] = value
        else:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TemplateError(f"{where}: defaults.{key} must be a number")
            out[key] = float(value)
    try:  # the same rule as for the flags
        SamplingParams().override(**out)
    except SamplingError as exc:
        raise TemplateError(f"{where}: defaults.{exc.message}") from None
    return out


def parse_template(name: str, text: str, *, path: Path | None = None,
                   builtin: bool = True) -> Template:
    import yaml

    where = f"template {name!r}" + (f" ({path})" if path else "")
    from termlm import yamlfile

    try:
        data = yamlfile.load(text)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{where}: {yamlfile.reason(exc)}") from None
    if not isinstance(data, dict):
        raise TemplateError(f"{where} must be a YAML mapping")
    unknown = sorted(set(map(str, data)) - _KEYS)
    if unknown:
        raise TemplateError(f"{where}: unknown key {unknown[0]!r}",
                            hint=f"known keys: {', '.join(sorted(_KEYS))}")
    for key in ("description", "user"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise TemplateError(f"{where}: {key!r} is required and must be text")
    for key in ("system", "user_with_input"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise TemplateError(f"{where}: {key!r} must be text")
    template = Template(
        name=name,
        description=data["description"].strip(),
        user=data["user"],
        system=data.get("system"),
        user_with_input=data.get("user_with_input"),
        defaults=_check_defaults(data.get("defaults"), where),
        path=path,
        builtin=builtin,
    )
    template.variables  # noqa: B018 - parses the patterns, raising on malformed ones
    if template.system:
        _parse(template.system, where)
    return template


def _files(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix in (".yaml", ".yml") and path.is_file():
            found.setdefault(path.stem, path)
    return found


def template_files() -> dict[str, tuple[Path, bool]]:
    """name -> (path, builtin). User templates override built-ins of the same name."""
    files = {n: (p, True) for n, p in _files(builtin_prompts_dir()).items()}
    files.update({n: (p, False) for n, p in _files(paths.user_prompts_dir()).items()})
    return files


def load_template(name: str) -> Template:
    files = template_files()
    if name not in files:
        raise TemplateError(
            f"no template named {name!r}",
            hint=f"available: {', '.join(sorted(files)) or 'none'} (termlm prompts list)",
        )
    path, builtin = files[name]
    try:
        text = read_text_input(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read template {path}: {exc}") from None
    return parse_template(name, text, path=path, builtin=builtin)


