"""The command line before Click sees it: global options in any position, and the
commands people type from habit (``termlm pull``) answered with the right one.

``termlm ask --threads 2 hi`` works as ``termlm --threads 2 ask hi`` does, as git and
gh users expect: a global option found after the command moves in front of it, unless
the command has an option of the same name (``chat --ctx`` stays chat's). Nothing
after ``--`` is touched.
"""

from __future__ import annotations

from typing import Any

from termlm.errors import UsageError

HABITS = {  # what ollama, llm and docker users type, and termlm's way to say it
    "pull": "termlm models pull",
    "list": "termlm models list",
    "ls": "termlm models list",
    "rm": "termlm models rm",
    "show": "termlm models info",
    "info": "termlm models info",
    "run": "termlm chat (or termlm ask 'question')",
    "prompt": "termlm ask",
    "serve": "llama-server (then termlm --engine openai --base-url ...)",
}


# Commands and options are Click's (or the copy Typer vendors), so they are read by
# their attributes: ``commands`` (groups), ``params``; ``opts``, ``is_flag``, ``count``.

def _options(command: Any) -> dict[str, Any]:
    return {name: param for param in command.params
            if getattr(param, "param_type_name", "") == "option"
            for name in (*param.opts, *param.secondary_opts)}


def _takes_value(option: Any) -> bool:
    return not (option.is_flag or option.count)


def prepare_argv(argv: list[str], root: Any) -> list[str]:
    """``argv`` with global options hoisted before the command; UsageError for a habit
    command (with the right one) or an option abbreviation (with the option it starts)."""
    globals_ = _options(root)
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        option = globals_.get(argv[i].split("=", 1)[0])
        i += 2 if option is not None and _takes_value(option) and "=" not in argv[i] else 1
    if i >= len(argv) or argv[i] == "--":
        return argv
    insert_at = i
    command = root
    while i < len(argv) and isinstance(getattr(command, "commands", None), dict):
        sub = command.commands.get(argv[i])
        if sub is None:
            if command is root and argv[i] in HABITS:
                raise UsageError(f"no command {argv[i]!r}; did you mean `{HABITS[argv[i]]}`?")
            return argv  # Click says what is wrong
        command, i = sub, i + 1
    own = _options(command)
    hoisted: list[str] = []
    kept: list[str] = []
    rest = argv[i:]
    j = 0
    while j < len(rest):
        token = rest[j]
        name = token.split("=", 1)[0]
        if token == "--":
            kept += rest[j:]
            break
        if name in own:
            width = 2 if _takes_value(own[name]) and "=" not in token else 1
            kept += rest[j:j + width]
            j += width
        elif name in globals_:
            width = 2 if _takes_value(globals_[name]) and "=" not in token else 1
            hoisted += rest[j:j + width]
            j += width
        else:
            if name.startswith("--") and len(name) > 3:
                _check_abbreviation(name, [*own, *globals_])
            kept.append(token)
            j += 1
    return [*argv[:insert_at], *hoisted, *argv[insert_at:i], *kept]


def _check_abbreviation(name: str, known: list[str]) -> None:
    starts = sorted({k for k in known if k.startswith(name) and k.startswith("--")})
    if starts:
        raise UsageError(f"no such option: {name}; did you mean {' or '.join(starts)}?")
