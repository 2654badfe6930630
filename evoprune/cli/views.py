"""How a front is shown: its figures (``_pareto_table``), every member's per-layer allocation laid
out for the terminal's width (``_allocation_table``, with ``_level_tokens``), both together
(``_front_view``, what ``pareto`` and ``search`` print), and the front as JSON (``_front_json``)."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from evoprune.cli.common import FoldingTable, _figure_text, _tokens_text
from evoprune.objectives.pareto import ParetoPoint
from evoprune.objectives.spec import is_quality

LAYERS_PER_BLOCK = 10
_LEVEL_SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _level_tokens(levels: list[int], top: int) -> list[str]:
    """One token per layer: one character (0-9, then a-z for 10-35) when ``top`` allows, else the
    number right-aligned to the width of ``top``."""
    if top < len(_LEVEL_SYMBOLS):
        return [_LEVEL_SYMBOLS[v] for v in levels]
    return [str(v).rjust(len(str(top))) for v in levels]


def _allocation_lines(levels: list[int], top: int, blocks_per_line: int) -> list[str]:
    """``levels`` (one per layer, layer 0 first) in blocks of ``LAYERS_PER_BLOCK`` layers,
    ``blocks_per_line`` blocks a line; every level is there, whatever the depth."""
    tokens = _level_tokens(levels, top)
    inner, outer = ("", " ") if len(tokens[0] if tokens else "0") == 1 else (" ", "  ")
    blocks = [inner.join(tokens[i : i + LAYERS_PER_BLOCK]) for i in range(0, len(tokens), LAYERS_PER_BLOCK)]
    return [outer.join(blocks[i : i + blocks_per_line]) for i in range(0, len(blocks), blocks_per_line)] or [""]


def _allocation_ruler(num_layers: int, top: int, blocks_per_line: int) -> list[str]:
    """The header over :func:`_allocation_lines`: the first layer of each block, over that block."""
    token = len(_level_tokens([0], top)[0])
    inner, outer = ("", " ") if token == 1 else (" ", "  ")
    width = LAYERS_PER_BLOCK * token + (LAYERS_PER_BLOCK - 1) * len(inner)
    starts = [str(s).ljust(width) for s in range(0, num_layers, LAYERS_PER_BLOCK)]
    return [outer.join(starts[i : i + blocks_per_line]).rstrip() for i in range(0, len(starts), blocks_per_line)]


def _allocation_table(points: list[ParetoPoint], width: int, space: dict | None = None) -> Table:
    """Every front member's whole per-layer allocation: attention over MLP, so one layer's two
    levels sit in one column, in blocks of ten layers wrapped to fit ``width`` columns."""
    num_layers = max((len(p.levels["attn"]) for p in points), default=0)
    top = max((max(p.levels["attn"] + p.levels["mlp"], default=0) for p in points), default=0)
    if space:
        top = max(top, space.get("attn_levels", 0), space.get("mlp_levels", 0))
    token = len(_level_tokens([0], top)[0])
    block = LAYERS_PER_BLOCK * token + (LAYERS_PER_BLOCK - 1) * (token > 1)
    gap = 1 if token == 1 else 2
    id_width = max((len(str(p.id)) for p in points), default=2)
    # Columns id and sub-layer, their padding and separators; what is left holds the levels.
    room = width - max(id_width, 2) - len("attention") - 8
    per_line = max(1, (room + gap) // (block + gap))
    table = FoldingTable(box=box.SIMPLE_HEAD, show_edge=False, title_justify="left", caption_justify="left")
    table.title = "Per-layer levels of the front"
    table.add_column("id", justify="right")
    table.add_column("sub-layer")
    table.add_column("\n".join(_allocation_ruler(num_layers, top, per_line)))
    for p in points:
        table.add_row(str(p.id), "attention", "\n".join(_allocation_lines(p.levels["attn"], top, per_line)))
        table.add_row("", "MLP", "\n".join(_allocation_lines(p.levels["mlp"], top, per_line)))
    what = "one character per layer" if token == 1 else "one number per layer"
    legend = "; 10-35 are a-z" if token == 1 and top >= 10 else ""
    removed = (
        f", attention {space['attn_levels']} and MLP {space['mlp_levels']} remove it"
        if space and "attn_levels" in space and "mlp_levels" in space
        else ", the top level removes it"
    )
    table.caption = (
        f"{what}, layer 0 first, in blocks of {LAYERS_PER_BLOCK} under the number of their first layer{legend}; "
        f"level 0 leaves a sub-layer untouched{removed}"
    )
    return table


def _quality_name(objectives: str) -> str:
    """The first quality objective of ``objectives`` (e.g. ``kl,params``), the one the front and
    its figures go by; ``ppl`` when none is named."""
    return next((n.strip() for n in objectives.split(",") if is_quality(n.strip())), "ppl")


def _quality_text(metrics: dict | None, name: str) -> str:
    """A figure of quality ``name`` with its standard error: KL in four decimals, accuracy in three."""
    if name == "ppl":
        return _figure_text(metrics, name)
    if not metrics or name not in metrics:
        return "-"
    digits = 4 if name == "kl" else 3
    se = metrics.get(f"{name}_se")
    value = max(float(metrics[name]), 0.0) if name == "kl" else metrics[name]  # no "-0.0000" for rounding noise
    return f"{value:.{digits}f}" + (f" ±{se:.{digits}f}" if se is not None else "")


def _pareto_table(points: list[ParetoPoint], title: str, run_id: int | None = None, objectives: str = "") -> Table:
    """The front's figures, one row per member (its allocation is :func:`_allocation_table`), by
    the first quality objective of ``objectives`` (the run's, e.g. ``kl,params``; default ppl),
    which an ``acc:TASK`` objective also adds a column per task accuracy to."""
    quality = _quality_name(objectives)
    label = quality.replace(":", " ")  # "acc arc_easy" folds between the words
    table = FoldingTable(title=title, title_justify="left")
    for col, justify in (
        ("id", "right"),
        ("params", "right"),
        ("kept", "right"),
        (label, "right"),
        ("tokens", "right"),
        (f"valid {label}", "right"),
    ):
        table.add_column(col, justify=justify)
    # The run's other task accuracies (acc:TASK objectives), measured with the first rung.
    tasks = [n for n in objectives.split(",") if n.startswith(("acc:", "acc_norm:")) and n != quality]
    for name in tasks:
        table.add_column(name.replace(":", " "), justify="right")  # "acc arc_easy" folds between the words
    table.add_column("found", justify="left")
    for p in points:
        fidelity = p.fidelity or {"tokens": None, "metrics": p.metrics}
        table.add_row(
            str(p.id),
            f"{p.params / 1e6:.2f}M",
            f"{100 * p.params_fraction:.1f}%",
            _quality_text(fidelity["metrics"], quality),
            _tokens_text(fidelity["tokens"]),
            _quality_text(p.validation["metrics"], quality) if p.validation else "-",
            *(f"{p.metrics[t]:.3f}" if t in p.metrics else "-" for t in tasks),
            p.found(run_id),
        )
    table.caption = (
        f"{label}: on the highest rung of the fidelity ladder each configuration reached (tokens), ± standard error; "
        "the front compares these on the first rung's scale (each less the run's mean gap between its rung and "
        "the first, as the text of a larger rung is not equally hard), so a figure on more tokens can stand "
        f"beside a lower one on fewer; valid {label}: on the validation split, never used to choose"
        + ("; acc TASK: accuracy on the run's questions of that task" if tasks else "")
    )
    table.caption_justify = "left"
    return table


def _front_view(run, points: list[ParetoPoint], width: int) -> Group:
    """What ``pareto`` and ``search`` print: the front's figures, then every member's whole
    per-layer allocation, laid out for a terminal ``width`` columns wide."""
    title = f"Pareto front of run {run.id} ({run.model})"
    objectives = (run.settings or {}).get("objectives") or ""
    table = _pareto_table(points, title, run.id, objectives)
    return Group(table, Text(""), _allocation_table(points, width, run.space))


def _front_json(run, points: list[ParetoPoint]) -> dict:
    return {
        "run": run.id,
        "model": run.model,
        "data": run.data,
        "dense_params": run.dense_params,
        "points": [p.to_dict() for p in points],
    }
