"""Keep credentials out of the log: settings keys, command-line values, URLs, key text.

Three layers: keys that name a secret are dropped (``api_key``, ``api_key_env``,
``token``, ``authorization``, ...); a URL's credentials are masked by
:func:`termlm.engine.remote_http.redact_url`; and the text of the actual key (the value
of the variable ``api_key_env`` names, a password in ``base_url``) is replaced by
``***`` wherever it appears, prompts and replies included.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MASK = "***"
MIN_SECRET_LEN = 8  # shorter strings are not searched for in free text

_SECRET_NAME = re.compile(
    r"(^|[-_])(api[-_]?key|apikey|key|token|access[-_]?token|secret|password|passwd|"
    r"auth|authorization|bearer|cookie|credentials?)([-_]env)?$",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name.strip().lstrip("-")))


def secret_values(settings: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                  ) -> list[str]:
    """The credential texts these settings lead to (so they can be masked anywhere)."""
    env = os.environ if environ is None else environ
    found: list[str] = []
    var = settings.get("api_key_env")
    if isinstance(var, str) and var and env.get(var):
        found.append(env[var])
    url = settings.get("base_url")
    if isinstance(url, str) and "@" in url:
        authority = url.partition("://")[2] or url
        userinfo = authority.split("/", 1)[0].rpartition("@")[0]
        user, _, password = userinfo.partition(":")
        found.extend(v for v in (password or user,) if v)
    return [s for s in found if len(s) >= MIN_SECRET_LEN]


def argv_secrets(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """The keys a command line points at: the value of each ``--api-key-env VAR`` given
    there (the config file's are found by ``secret_values``)."""
    env = os.environ if environ is None else environ
    found: list[str] = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name != "--api-key-env":
            continue
        var = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        if env.get(var):
            found.append(env[var])
    return [s for s in found if len(s) >= MIN_SECRET_LEN]


def scrub_text(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    if "://" in text and "@" in text:
        text = _URL.sub(lambda m: _redact(m.group(0)), text)
    return text


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")


def _redact(url: str) -> str:
    from termlm.engine.remote_http import redact_url

    return redact_url(url)


def scrub_value(value: Any, secrets: Sequence[str]) -> Any:
    """A JSON-able copy of ``value`` with secret keys dropped and secret text masked."""
    if isinstance(value, Mapping):
        return {str(k): scrub_value(v, secrets) for k, v in value.items()
                if not is_secret_name(str(k))}
    if isinstance(value, (list, tuple)):
        return [scrub_value(v, secrets) for v in value]
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return scrub_text(str(value), secrets)


def scrub_argv(argv: Sequence[str], secrets: Sequence[str]) -> list[str]:
    """``argv`` with the value of any ``--api-key``-like option masked."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        if arg.startswith("-") and len(arg) > 1 and arg != "--":
            name, eq, _ = arg.partition("=")
            if is_secret_name(name):
                if eq:
                    out.append(f"{name}={MASK}")
                else:
                    out.append(arg)
                    hide_next = True
                continue
        out.append(scrub_text(arg, secrets))
    return out
