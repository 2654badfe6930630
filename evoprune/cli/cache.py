"""The cache, seen and cleared: ``cache list`` and ``cache clear`` (``evoprune.cache`` does the work)."""

from __future__ import annotations

import time

import typer
from rich.filesize import decimal

from evoprune.cache import KINDS, CacheEntry, cache_entries, cache_root, clear_cache
from evoprune.cli.common import FoldingTable, _echo_json, _fail, err_console, out_console
from evoprune.errors import EvopruneError

_KIND_HELP = f"Only these kinds, comma-separated: {', '.join(KINDS)} (default: all)."


def _kinds(text: str | None) -> list[str] | None:
    return None if text is None else [k.strip() for k in text.split(",") if k.strip()]


def _age_text(last_used: float) -> str:
    hours = (time.time() - last_used) / 3600
    if hours < 1:
        return f"{hours * 60:.0f} min ago"
    return f"{hours:.0f} h ago" if hours < 48 else f"{hours / 24:.0f} days ago"


def _entries_text(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def _table(title: str, entries: list[CacheEntry]) -> FoldingTable:
    table = FoldingTable(title=title, title_justify="left")
    for col, justify in (
        ("kind", "left"),
        ("name", "left"),
        ("holds", "left"),
        ("size", "right"),
        ("last used", "right"),
    ):
        table.add_column(col, justify=justify)
    for e in entries:
        holds = "left by a process stopped while writing it" if e.leftover else e.about
        table.add_row(e.kind, e.name, holds or "-", decimal(e.size), _age_text(e.last_used))
    return table


def cache_list_command(
    kind: str | None = typer.Option(None, "--kind", help=_KIND_HELP),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print JSON: {root, total_bytes, entries: [{kind, name, path, size, last_used, leftover, about}]}.",
    ),
) -> None:
    """Show what the cache holds ($EVOPRUNE_CACHE_DIR or ~/.cache/evoprune), with sizes and when each was last used."""
    try:
        entries = cache_entries(_kinds(kind))
    except EvopruneError as exc:
        _fail(str(exc))
    total = sum(e.size for e in entries)
    if as_json:
        payload = {"root": str(cache_root()), "total_bytes": total, "entries": [e.to_dict() for e in entries]}
        _echo_json(payload)
        return
    if not entries:
        out_console.print(f"the cache at {cache_root()} is empty")
        return
    out_console.print(_table(f"{cache_root()}: {_entries_text(len(entries))}, {decimal(total)}", entries))
    for name, what in KINDS.items():
        out_console.print(f"[dim]{name}: {what}[/dim]")


def cache_clear_command(
    kind: str | None = typer.Option(None, "--kind", help=_KIND_HELP),
    older_than: float | None = typer.Option(
        None, "--older-than", metavar="DAYS", help="Only entries not used for at least this many days."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed; remove nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: {removed: [...], in_use: [...], bytes}."),
) -> None:
    """Remove cache entries to reclaim disk space; each is recomputed (or fetched again) when next needed.

    An importance entry another process is computing is left alone. Leftovers of stopped processes
    (*.partial, *.tmp) go once an hour old, whatever --older-than says.
    """
    try:
        removed, in_use = clear_cache(_kinds(kind), older_than, dry_run)
    except EvopruneError as exc:
        _fail(str(exc))
    freed = sum(e.size for e in removed)
    if as_json:
        payload = {
            "dry_run": dry_run,
            "removed": [e.to_dict() for e in removed],
            "in_use": [e.to_dict() for e in in_use],
            "bytes": freed,
        }
        _echo_json(payload)
        return
    verb = "would remove" if dry_run else "removed"
    if removed:
        out_console.print(_table(f"{verb} {_entries_text(len(removed))}, {decimal(freed)}", removed))
    else:
        out_console.print(f"{verb} nothing from {cache_root()}")
    for e in in_use:
        err_console.print(f"note: left {e.kind}/{e.name}: another process is writing it")
