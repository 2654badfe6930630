"""``recover``: distill an export from its dense model, with its own progress display."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

from evoprune.cli.common import (
    MAX_LATENCY_MS_OPTION,
    MAX_MEMORY_OPTION,
    MAX_PARAMS_OPTION,
    FoldingTable,
    _echo_json,
    _fail,
    _figure_text,
    _kl_text,
    _SearchProgress,
    err_console,
    out_console,
)
from evoprune.errors import EvopruneError
from evoprune.recovery.settings import CHECKPOINT_DIR
from evoprune.recovery.settings import RecoverySettings as _RecoverySettings

_RECOVERY = _RecoverySettings()  # the defaults the options show


class _RecoveryProgress(_SearchProgress):
    """Renders ``recover`` events on stderr: phases, then training steps with the running loss."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self.shown: list[str] = []

    def __call__(self, event: str, **info) -> None:
        if event == "note":  # now, above the bar: it may change what the user runs
            if info["text"] not in self.shown:
                self.progress.console.print(f"note: {info['text']}", soft_wrap=True)
                self.shown.append(info["text"])
            return
        if event not in ("train", "step"):
            if event == "phase" and self.task is not None:
                # A phase after training counts no steps; update() can set a total but not unset it.
                self.progress.update(self.task, status="")
                self.progress.tasks[0].total = None
            super().__call__(event, **info)
            return
        self._begin()
        if event == "train":
            self._update(description="training", total=info["total"], completed=info["done"])
        else:
            status = (
                f"loss {info['running_loss']:.4f} (mean of the last steps; this step: KL {info['kl']:.4f}, "
                f"CE {info['ce']:.3f}), lr {info['lr']:.2e}"
            )
            self._update(completed=info["step"], status=status)


def recover_command(
    model: Path | None = typer.Option(
        None, "--model", "-m", help="An 'evoprune export' directory (only read, never changed)."
    ),
    data: str = typer.Option(
        ..., "--data", "-d", help="Training text, as for 'evoprune search'; its first --heldout-tokens are held out."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the recovered export (and the checkpoints)."),
    teacher: str | None = typer.Option(
        None, "--teacher", help="Dense model to distill from (default: the one the export's plan.json names)."
    ),
    method: str = typer.Option(_RECOVERY.method, "--method", help="lora (adapters, merged at the end) or full."),
    steps: int = typer.Option(_RECOVERY.steps, "--steps", help="Optimizer steps."),
    seq_len: int = typer.Option(_RECOVERY.seq_len, "--seq-len", help="Tokens per window."),
    batch: int = typer.Option(_RECOVERY.batch, "--batch", help="Windows per step."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default: 2e-4 for lora, 2e-5 for full)."),
    lm_weight: float = typer.Option(
        _RECOVERY.lm_weight, "--lm-weight", help="Weight of the plain LM loss: loss = (1 - w) KL + w CE."
    ),
    warmup: float = typer.Option(_RECOVERY.warmup, "--warmup", help="Fraction of the steps of linear warm-up."),
    weight_decay: float = typer.Option(_RECOVERY.weight_decay, "--weight-decay", help="AdamW weight decay."),
    lora_rank: int = typer.Option(_RECOVERY.lora_rank, "--lora-rank", help="LoRA rank."),
    lora_alpha: float = typer.Option(_RECOVERY.lora_alpha, "--lora-alpha", help="LoRA alpha (scale alpha / rank)."),
    lora_dropout: float = typer.Option(_RECOVERY.lora_dropout, "--lora-dropout", help="Dropout on LoRA's input."),
    heldout_tokens: int = typer.Option(
        _RECOVERY.heldout_tokens, "--heldout-tokens", help="Tokens at the start of --data held out from training."
    ),
    train_tokens: int | None = typer.Option(
        None, "--train-tokens", help="Training tokens after the held-out ones (default: what the steps read)."
    ),
    checkpoint_every: int = typer.Option(
        _RECOVERY.checkpoint_every, "--checkpoint-every", help="Steps between checkpoints (0: none)."
    ),
    seed: int = typer.Option(_RECOVERY.seed, "--seed", help="Seed of the data order, LoRA's init and dropout."),
    device: str = typer.Option(_RECOVERY.device, "--device", help="Where training runs: cpu, cuda, cuda:N or mps."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: the export's own)."),
    amp: str | None = typer.Option(
        None,
        "--amp",
        help="Mixed precision: bfloat16 or float16 matrix products under torch.autocast, weights and optimizer "
        "kept in --dtype (a step in about two thirds of the time on CPUs with AMX).",
    ),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty --out directory."),
    restart: bool = typer.Option(False, "--restart", help="Discard a checkpoint in --out and start again."),
    store: str = typer.Option(
        "auto",
        "--store",
        "-s",
        help="Record the result against the export's evaluation in this store, for 'evoprune plan' "
        "(auto: the store plan.json names, when it holds that evaluation; none: nowhere).",
    ),
    finalists: int | None = typer.Option(
        None,
        "--finalists",
        help="Instead of --model: export and recover the K best configurations of --store under the budget "
        "(--max-params, --max-memory, --max-latency-ms; default: the one the run searched under), and rank them "
        "after recovery (training-aware selection, as DarwinLM).",
    ),
    max_params: float | None = MAX_PARAMS_OPTION,
    max_memory: str | None = MAX_MEMORY_OPTION,
    max_latency_ms: float | None = MAX_LATENCY_MS_OPTION,
    run: int | None = typer.Option(None, "--run", help="With --finalists: the run (default: the latest)."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print the result as JSON (held-out kl: to the teacher's top 32 tokens per position, a lower bound "
        "of the full-vocabulary KL that training minimises and the per-step kl is).",
    ),
) -> None:
    """Distill an export from its dense model (KL, optionally mixed with the LM loss); write an export again.

    With --finalists K (and --store, and a budget unless the run's own) instead of --model: recover the
    search's K best configurations under the budget with the same recipe, into OUT/eval-N/, and rank them by held-out
    perplexity after recovery. Rerun with the same arguments to continue after a crash or kill.
    """
    from evoprune.recovery.run import recover

    settings = _RecoverySettings(
        method=method, steps=steps, seq_len=seq_len, batch=batch, lr=lr, warmup=warmup, weight_decay=weight_decay,
        lm_weight=lm_weight, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        heldout_tokens=heldout_tokens, train_tokens=train_tokens, teacher=teacher, seed=seed, dtype=dtype,
        amp=amp, device=device, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    if (model is None) == (finalists is None):
        _fail("pass either --model EXPORT_DIR (one export) or --finalists K with --store")
    budget = {"max_params": max_params, "max_memory": max_memory, "max_latency_ms": max_latency_ms}
    if finalists is not None:
        if store.lower() in ("auto", "none"):
            _fail("--finalists needs the search's store: add --store STORE.db")
        _recover_finalists(finalists, store, budget, run, data, out, settings, as_json)
        return
    if any(v is not None for v in budget.values()) or run is not None:
        _fail("--max-params, --max-memory, --max-latency-ms and --run choose finalists: use them with --finalists K")
    with _failing_in_one_line(out), _RecoveryProgress(err_console) as progress:
        result = recover(
            model, data, out, settings, progress, force=force, restart=restart,
            store=None if store.lower() == "none" else store,
        )  # fmt: skip
    for note in (n for n in result.notes if n not in progress.shown):
        err_console.print(f"note: {note}")
    if as_json:
        _echo_json(result.to_dict())
        return
    b, a, t = result.heldout_before, result.heldout_after, result.teacher_heldout
    table = FoldingTable(
        title=f"{model} recovered ({result.method}, {result.steps} steps) on held-out text: the first "
        f"{result.heldout_windows * seq_len} tokens of {data}",
        title_justify="left",
    )
    for col in ("figure", "before", "after", "teacher"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    table.add_row("perplexity", _figure_text(b), _figure_text(a), _figure_text(t))
    table.add_row("KL to the teacher, top-32 (nats/token, a lower bound)", _kl_text(b), _kl_text(a), "0")
    out_console.print(table)
    resumed = f", continued from step {', '.join(map(str, result.resumed_from))}" if result.resumed_from else ""
    out_console.print(
        f"training loss {result.losses[0]:.4f} at the first step, {result.losses[-1]:.4f} at the last"
        f" ({result.train_windows} training windows{resumed}); wrote {out}, which loads like the export it came "
        f"from (evoprune.load_pruned or trust_remote_code)"
    )
    if result.stored:
        where = result.stored
        out_console.print(f"recorded against evaluation {where['evaluation']} in '{where['store']}'")


@contextmanager
def _failing_in_one_line(out: Path) -> Iterator[None]:
    """Turn evoprune's errors and Ctrl-C into one line and an exit code; checkpoints make a rerun continue."""
    try:
        yield
    except EvopruneError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        if out.is_dir() and any(out.rglob(CHECKPOINT_DIR)):
            _fail(f"interrupted: run the same command to continue from the last checkpoint in '{out}'", 130)
        _fail(
            "interrupted before the first checkpoint: the same command trains from the start again "
            "(--checkpoint-every N keeps one every N steps)",
            130,
        )


def _recover_finalists(k: int, store: str, budget: dict, run: int | None, data: str, out: Path,
                       settings: _RecoverySettings, as_json: bool) -> None:  # fmt: skip
    from evoprune.objectives.budget import budget_text
    from evoprune.objectives.spec import Budget
    from evoprune.recovery.finalists import recover_finalists

    with _failing_in_one_line(out), _RecoveryProgress(err_console) as progress:

        def report(event: str, **info) -> None:
            if event == "finalist":
                progress("phase", name=f"finalist {info['index']} of {info['total']}: evaluation {info['eval_id']}")
            else:
                progress(event, **info)

        result = recover_finalists(store, data, out, **budget, k=k, settings=settings, run=run, progress=report)
    for note in (n for n in result.notes if n not in progress.shown):
        err_console.print(f"note: {note}")
    if as_json:
        _echo_json(result.to_dict())
        return
    table = FoldingTable(
        title=f"the {len(result.finalists)} best configurations of run {result.run_id} under "
        f"{budget_text(Budget(result.max_params, result.max_memory, result.max_latency_ms))}, "
        f"best after recovery ({settings.method}, {settings.steps} steps) first; held-out: the first "
        f"{settings.heldout_tokens} tokens of {data}",
        title_justify="left",
    )
    for col in ("evaluation", "kept", "searched ppl", "before", "after", "KL after (top-32)", "recovered export"):
        table.add_column(col, justify="left" if col == "recovered export" else "right")
    for f in result.finalists:
        mark = " (search's pick)" if f.eval_id == result.search_pick else ""
        table.add_row(
            f"{f.eval_id}{mark}", f"{f.params_fraction:.1%}", _figure_text(f.searched), _figure_text(f.before),
            _figure_text(f.after), _kl_text(f.after), str(f.recovered),
        )  # fmt: skip
    out_console.print(table)
    chosen = result.chosen
    if not result.changed:
        verdict = "the search's own pick also recovers best"
    else:
        verdict = f"recovery changes the pick: evaluation {chosen.eval_id}, not {result.search_pick}"
    noise = " (the runner-up is within two standard errors)" if result.within_noise else ""
    out_console.print(f"{verdict}{noise}; its recovered export: {chosen.recovered}")
