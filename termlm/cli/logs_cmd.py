"""`termlm logs`: list, search and show the log; turn it off and on."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from termlm.cli.common import handles_errors

if TYPE_CHECKING:
    import sqlite3

app = typer.Typer(
    help="The log of every ask, chat turn and batch run (SQLite, in the data directory). "
    "With no command: list recent entries, newest first.\n\n"
    "Example: termlm logs -q 'capital of France'",
    invoke_without_command=True, no_args_is_help=False)


class EntryType(str, Enum):
    ask = "ask"
    chat = "chat"
    batch = "batch"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
SQLITE_MAX = 2**63 - 1  # the largest integer SQLite takes


@app.callback()
@handles_errors
def logs(
    ctx: typer.Context,
    count: Annotated[int, typer.Option("--count", "-n", min=1,
                                       help="Show at most N entries.")] = 20,
    query: Annotated[str | None, typer.Option(
        "--query", "-q", help="Only entries whose prompt, system, reply or command holds all "
        "these words (full-text search).", show_default=False)] = None,
    type_: Annotated[EntryType | None, typer.Option(
        "--type", help="Only ask, chat or batch entries.", show_default=False)] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Only entries whose model name contains this text.",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a JSON array of whole entries.")] = False,
) -> None:
    """List recent entries, newest first (best match first with -q).

    Example: termlm logs -n 5 --type ask
    """
    if ctx.invoked_subcommand is not None:
        return
    from termlm.logs import db, view
    from termlm.logs.switch import db_path
    from termlm.output import notice

    search = db.Query(count=min(count, SQLITE_MAX), text=query, type=type_.value if type_ else None,
                      model=model)
    if query and query.strip() and not db.fts5_available():
        notice("this Python's SQLite has no full-text search (FTS5): matching the words "
               "as plain text")
    with _reading() as conn:
        entries = [] if conn is None else db.search(conn, search)
    if as_json:
        sys.stdout.write(json.dumps(entries, indent=2, ensure_ascii=False) + "\n")
        return
    if not entries:
        notice("no log entries" + ("" if conn is not None else f" yet ({db_path()})"))
        return
    _print_rows([view.row(e) for e in entries], list(view.COLUMNS))


@app.command("show")
@handles_errors
def show(
    entry_id: Annotated[int, typer.Argument(metavar="ID", help="The entry's id (termlm logs).",
                                            show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Print one entry in full: prompt, system, reply, settings, tokens, timings.

    Example: termlm logs show 12
    """
    from termlm.logs import db, view
    from termlm.logs.switch import db_path

    with _reading() as conn:  # an id past SQLite's integers is no entry's
        entry = None if conn is None or not 0 < entry_id <= SQLITE_MAX else \
            db.get(conn, entry_id)
    if entry is None:
        raise db.EntryNotFound(f"no log entry {entry_id}",
                               hint="termlm logs lists the entries and their ids"
                               if conn is not None else f"the log is empty ({db_path()})")
    if as_json:
        sys.stdout.write(json.dumps(entry, indent=2, ensure_ascii=False) + "\n")
        return
    sys.stdout.write(view.detail(entry))


@app.command("status")
@handles_errors
def status(as_json: JsonOpt = False) -> None:
    """Say whether logging is on, where the database is, its entries and size.

    Example: termlm logs status
    """
    from termlm.logs import db
    from termlm.logs.switch import current, db_path

    switch = current()
    path = db_path()
    with _reading() as conn:
        per_type = {} if conn is None else db.counts(conn)
    size = sum(p.stat().st_size for p in
               (path, path.with_name(path.name + "-wal")) if p.exists())
    data: dict[str, Any] = {"logging": "on" if switch.on else "off", "why": switch.why,
                            "path": str(path), "entries": sum(per_type.values()),
                            "by_type": per_type, "size_bytes": size}
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    why = "" if switch.why == "default" else f" ({switch.why})"
    by_type = ", ".join(f"{n} {t}" for t, n in per_type.items())
    sys.stdout.write(f"logging: {data['logging']}{why}\n"
                     f"database: {path}" + ("" if conn is not None else " (not created yet)")
                     + f"\nentries: {data['entries']}" + (f" ({by_type})" if by_type else "")
                     + f"\nsize: {_size(size)}\n")


@app.command("off")
@handles_errors
def off() -> None:
    """Stop logging (for good, until `termlm logs on`); the entries are kept.

    Example: termlm logs off
    """
    from termlm.logs.switch import ENV, current, db_path, turn_off
    from termlm.output import notice

    turn_off()
    sys.stdout.write(f"logging is off: nothing more is written to {db_path()}\n")
    if current().on:
        notice(f"note: {ENV} is set in this environment and keeps logging on")


@app.command("on")
@handles_errors
def on() -> None:
    """Log again after `termlm logs off`.

    Example: termlm logs on
    """
    from termlm.logs.switch import ENV, current, db_path, turn_on
    from termlm.output import notice

    turn_on()
    sys.stdout.write(f"logging is on: {db_path()}\n")
    if not current().on:
        notice(f"note: {ENV} is set in this environment and keeps logging off")


@app.command("path")
@handles_errors
def path() -> None:
    """Print the log database's path (it need not exist yet).

    Example: sqlite3 "$(termlm logs path)" 'select count(*) from entries'
    """
    from termlm.logs.switch import db_path

    sys.stdout.write(f"{db_path()}\n")


@contextlib.contextmanager
def _reading() -> Iterator[sqlite3.Connection | None]:
    """The database, or None when there is none yet; a broken one is one error line."""
    import sqlite3

    from termlm.errors import TermlmError
    from termlm.logs import db
    from termlm.logs.switch import db_path

    target = db_path()
    try:
        conn = db.connect(target, create=False)
        try:
            yield conn
        finally:
            if conn is not None:
                conn.close()
    except sqlite3.OperationalError as exc:
        raise TermlmError(f"cannot read the log database {target}: {exc}") from None
    except sqlite3.DatabaseError:
        raise db.corrupt(target) from None
    except OSError as exc:
        raise TermlmError(f"cannot read the log database {target}: "
                          f"{exc.strerror or exc}") from None


def _print_rows(rows: list[list[str]], columns: list[str]) -> None:
    from termlm.output import is_tty, out_console

    if not is_tty(sys.stdout):  # a pipe: plain TSV, no header
        for cells in rows:
            sys.stdout.write("\t".join(cells) + "\n")
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    for cells in rows:
        table.add_row(*(Text(c) for c in cells))  # the text as typed, never markup
    out_console().print(table)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"
