"""What every command shares: the two consoles, ``_fail`` (an error message and an exit code),
the budget options, the figure and token texts, ``FoldingTable`` (wraps, never cuts) and the progress display on
stderr (``_SearchProgress``)."""

from __future__ import annotations

import json
import os
import threading
import time

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from evoprune.backend.settings import BackendSettings
from evoprune.cli.folding import FoldingTable  # noqa: F401  (every command's tables)
from evoprune.reporting.prediction_metrics import nan_to_none

# Progress, notes and summaries go to stderr as lines: soft wrap keeps each one line in a log, where
# rich would break it at 80 columns. Results on stdout (tables, their legends) fit the width.
err_console = Console(stderr=True, soft_wrap=True)
out_console = Console()
_BACKEND = BackendSettings()  # the defaults the options show

# The budget options, one definition for every command that takes a budget (plan, export, compare).
MAX_PARAMS_OPTION = typer.Option(None, "--max-params", help="Parameter budget (kept fraction or count).")
MAX_MEMORY_OPTION = typer.Option(
    None, "--max-memory", help="Memory budget (weights + KV cache at 2048 tokens), e.g. 2GB, 400MB or 1.5GiB."
)
MAX_LATENCY_MS_OPTION = typer.Option(
    None,
    "--max-latency-ms",
    help="Latency budget (ms): a forward pass of 256 tokens, batch 1, on this machine (its latency table).",
)


def _fail(message: str, code: int = 2) -> None:
    # Plain echo, not rich: a rich console would wrap a long message over several lines.
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _echo_json(obj) -> None:
    """Print ``obj`` as the JSON of a ``--json`` option: NaN and infinities (a figure the data left
    undefined, a surrogate's prediction) are null, since JSON has neither."""
    typer.echo(json.dumps(nan_to_none(obj), indent=2, allow_nan=False))


def _use_task_data(task_data: str | None) -> None:
    """Point shipped tasks at ``--task-data`` (checked: EvopruneError when it is not a folder).

    Through the environment, so every evaluator of the command, and Ray workers (which forward
    it), read the same folder.
    """
    if task_data is not None:
        from evoprune.tasks.spec import TASK_DATA_ENV, task_data_dir

        os.environ[TASK_DATA_ENV] = str(task_data_dir(task_data))


def _figure_text(metrics: dict | None, name: str = "ppl") -> str:
    """``17.47 ±0.31`` (standard error when recorded), or ``-``."""
    if not metrics or name not in metrics:
        return "-"
    se = metrics.get(f"{name}_se")
    return f"{metrics[name]:.2f}" + (f" ±{se:.2f}" if se is not None else "")


def _tokens_text(tokens: int | None) -> str:
    if tokens is None:
        return "-"
    return f"{tokens / 1024:g}k" if tokens % 256 == 0 and tokens >= 1024 else str(tokens)


def _kl_text(metrics: dict) -> str:
    """``0.0123 ±0.0004`` (KL in nats per token is small), or ``-``."""
    if "kl" not in metrics:
        return "-"
    return f"{metrics['kl']:.4f}" + (f" ±{metrics['kl_se']:.4f}" if "kl_se" in metrics else "")


def _batch_origin(origin: str, round_: int) -> str:
    """``initial design``, ``round 3: local moves``, ``round 3: acquisition``: where a batch comes from."""
    kinds = {"local": "local moves", "acquired": "acquisition", "explore": "exploring"}
    if origin == "design":
        return "initial design"
    return f"round {round_}: {kinds[origin]}" if origin in kinds else origin


class _SearchProgress:
    """Renders engine events as a rich progress display on stderr; when stderr is not a terminal
    (a log file, CI), as plain lines instead: every phase, every finished evaluation or step, and
    status changes at most every ``PLAIN_EVERY_S`` seconds, each with the time since the start.
    Plain lines begin ``PLAIN_AFTER_S`` seconds in: input refused up front stays one line. The
    phase under way then is printed at once, since loading a model or scoring can last minutes
    without another event."""

    PLAIN_EVERY_S = 10.0
    PLAIN_AFTER_S = 5.0

    def __init__(self, console: Console):
        self.console = console
        self.plain = not console.is_terminal
        self._started = self._last_line = 0.0
        self._last_description: str | None = None
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=True,
        )
        self.task = None
        self._lock = threading.Lock()  # the late-start timer prints from its own thread
        self._timer: threading.Timer | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._timer is not None:
            self._timer.cancel()
        if self.task is not None and not self.plain:
            self.progress.stop()

    def _begin(self) -> None:
        # Started on the first event, so input rejected up front never draws a progress bar.
        if self.task is None:
            self._started = time.monotonic()
            if not self.plain:
                self.progress.start()
            self.task = self.progress.add_task("preparing", total=None, status="")
            if self.plain:
                self._timer = threading.Timer(self.PLAIN_AFTER_S + 0.1, self._update)
                self._timer.daemon = True
                self._timer.start()

    def _update(self, force: bool = False, phase: bool = False, **fields) -> None:
        """``Progress.update`` of the one task; in plain mode also the line it calls for (``force``:
        a new status that is worth a line however soon after the last; ``phase``: a phase begins,
        worth a line even when it is named as the last one was)."""
        with self._lock:
            self._update_locked(fields, force, phase)

    def _update_locked(self, fields: dict, force: bool = False, phase: bool = False) -> None:
        before = self.progress.tasks[0].completed
        self.progress.update(self.task, **fields)
        if not self.plain:
            return
        task, now = self.progress.tasks[0], time.monotonic()
        if now - self._started < self.PLAIN_AFTER_S:
            return
        new_phase = phase or task.description != self._last_description
        due = "status" in fields and (force or now - self._last_line >= self.PLAIN_EVERY_S)
        if not (new_phase or task.completed != before or due):
            return
        self._last_description, self._last_line = task.description, now
        # A new phase alone does not repeat the last evaluation's status.
        show_status = task.completed != before or "status" in fields
        elapsed = int(now - self._started)
        count = f" {task.completed:.0f}/{task.total:.0f}" if task.total else ""
        status = task.fields.get("status") or ""
        line = f"[dim]{elapsed // 60:02d}:{elapsed % 60:02d}[/dim] {task.description}{count}"
        self.console.print(line + (f": {status}" if status and show_status else ""), soft_wrap=True, highlight=False)

    def __call__(self, event: str, **info) -> None:
        self._begin()
        if event == "phase":
            self._update(description=info["name"], phase=True)
        elif event == "start":
            self._update(description="evaluating", total=info["total"], completed=info["done"])
        elif event == "batch":
            self._update(description=f"evaluating {info['size']} ({_batch_origin(info['origin'], info['round'])})")
        elif event == "fidelity_done":  # a ladder rung or the validation split: not one of --evals
            what = "validation" if info["split"] == "validation" else f"{info['tokens']} tokens"
            if info["ok"]:
                status = f"#{info['eval_id']} on {what}: ppl {info['metrics']['ppl']:.2f}"
            else:
                status = f"[red]#{info['eval_id']} on {what} failed: {info['error']}"
            self._update(force=True, status=status)  # a finished measurement is always worth a line
        elif event == "eval_done":
            ev = info["evaluation"]
            if ev.status == "ok":
                status = f"#{ev.id}: {100 * ev.params_fraction:.1f}% params, ppl {ev.metrics['ppl']:.2f}"
            else:
                status = f"[red]#{ev.id} failed: {ev.error}"
            self._update(advance=1, status=status)
