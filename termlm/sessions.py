"""Chat sessions: named conversations kept in the state directory.

Each session is one JSON transcript, ``state_dir()/chats/NAME.json`` (the
format of termlm.conversation, with its settings), rewritten atomically after
every turn. ``state_dir()/chats/LAST`` names the session used most recently:
that is the one ``termlm chat --continue`` resumes. A chat started without
``--session`` gets a name from the time it began (``chat-20261202-193012``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from termlm import paths
from termlm.conversation import Conversation, legacy_last_chat_path
from termlm.errors import TermlmError, UsageError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LAST = "LAST"


def chats_dir() -> Path:
    return paths.state_dir() / "chats"


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or name == LAST:
        raise UsageError(f"{name!r} is not a session name",
                         hint="use letters, digits, '.', '_' and '-' (at most 64), "
                         "starting with a letter or digit")
    return name


def session_path(name: str) -> Path:
    return chats_dir() / f"{check_name(name)}.json"


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def new_name() -> str:
    """A fresh name from the current time (with -2, -3, ... if taken)."""
    base = datetime.now().strftime("chat-%Y%m%d-%H%M%S")
    name, n = base, 1
    while (chats_dir() / f"{name}.json").exists():
        n += 1
        name = f"{base}-{n}"
    return name


def load(name: str) -> Conversation | None:
    """The saved session ``name``, or None when there is none by that name."""
    path = session_path(name)
    if not path.exists():
        return None
    stamp = _stamp(path)
    convo = Conversation.load(path)
    convo.name = name
    convo.stamp = stamp
    return convo


def save(convo: Conversation) -> str | None:
    """Write the session (atomically) and mark it as the last one used.

    Two chats on one session never overwrite each other: a chat that finds its file
    changed since it last read or wrote it (another chat saved a turn) is saved under
    a new name instead, ``NAME-2`` (or -3, ...). Returns a notice saying so, or None.
    """
    from termlm.fileio import write_atomic

    moved = None
    if convo.name is None:
        convo.name = new_name()
    else:
        found = _stamp(session_path(convo.name))
        if found is not None and found != convo.stamp:
            old, convo.name = convo.name, _free_name(convo.name)
            moved = (f"session {old!r} was changed by another chat since this one read it: "
                     f"this chat is saved as {convo.name!r}")
    stamp = now()
    convo.created = convo.created or stamp
    convo.updated = stamp
    path = session_path(convo.name)
    convo.save(path)
    convo.stamp = _stamp(path)
    try:
        write_atomic(chats_dir() / LAST, convo.name + "\n")
    except OSError as exc:
        raise TermlmError(f"cannot save the chat: {exc.strerror or exc}") from None
    return moved


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _free_name(name: str) -> str:
    """``name-2`` (or -3, ...): the first that no session has, within 64 characters."""
    n = 2
    while True:
        suffix = f"-{n}"
        candidate = name[:64 - len(suffix)] + suffix
        if not session_path(candidate).exists():
            return candidate
        n += 1


def last() -> Conversation | None:
    """The session used most recently (or, before sessions, the last chat), or None."""
    try:
        name = (chats_dir() / LAST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if name and NAME.fullmatch(name):
        convo = load(name)
        if convo is not None:
            return convo
    legacy = legacy_last_chat_path()
    return Conversation.load(legacy) if legacy.exists() else None


@dataclass(frozen=True)
class SessionInfo:
    name: str
    updated: str
    turns: int
    model: str | None
    first_line: str
    problem: str | None = None  # the file could not be read


def listing() -> list[SessionInfo]:
    """Every saved session, the most recently used first. A damaged file is listed
    with its problem rather than hiding the rest."""
    found: list[SessionInfo] = []
    folder = chats_dir()
    if not folder.is_dir():
        return found
    for path in folder.glob("*.json"):
        name = path.stem
        if not NAME.fullmatch(name):
            continue
        try:
            convo = Conversation.load(path)
        except TermlmError as exc:
            stamp = datetime.fromtimestamp(path.stat().st_mtime).astimezone()
            found.append(SessionInfo(name, stamp.isoformat(timespec="seconds"), 0, None, "",
                                     problem=exc.message))
            continue
        found.append(SessionInfo(name, convo.updated or "", len(convo),
                                 convo.settings.get("model") or convo.model,
                                 convo.first_line()))
    found.sort(key=lambda info: info.updated, reverse=True)
    return found
