"""FoldingTable at a narrow terminal: nothing cut, and no word split that could stay whole."""

from __future__ import annotations

import pytest
from rich.console import Console

from evoprune.cli.folding import FoldingTable

COLUMNS = ("method", "run", "evals", "best ppl", "top rung ppl", "valid ppl", "kept params", "eval s", "wall s")
ROW = ("predictor-rank (skipped)", "12", "60", "29.17 ±0.41", "29.21 (8192)", "34.02 ±0.40", "0.800", "2781", "4675")


def _render(width: int, rows=(ROW,)) -> str:
    table = FoldingTable(title="methods", title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "method" else "right")
    for row in rows:
        table.add_row(*row)
    console = Console(width=width, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def _words(text: str) -> set[str]:
    return {w for line in text.splitlines() for w in line.replace("│", " ").replace("┃", " ").split()}


@pytest.mark.parametrize("width", [80, 100])  # 108 columns wide unwrapped
def test_a_table_wider_than_the_terminal_wraps_lines_between_words(width):
    # compare's table at 80 columns printed "predic / tor-ra / nk": rich narrows the widest columns first
    text = _render(width)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    assert {w for cell in ROW for w in cell.split()} <= _words(text)  # every word whole, none cut
    assert {"method", "rung", "params"} <= _words(text)


def test_where_words_cannot_fit_it_still_folds_and_hides_nothing():
    text = _render(40)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 40
    body = [line for line in text.splitlines() if line.startswith("│")]
    assert body and all(line.count("│") == len(COLUMNS) + 1 for line in body)  # every column still there, folded


def test_a_table_that_fits_is_rendered_as_rich_renders_it():
    table = FoldingTable()
    for col in COLUMNS[:3]:
        table.add_column(col)
    table.add_row(*ROW[:3])
    ours = Console(width=80, record=True, color_system=None)
    ours.print(table)
    assert [c.width for c in table.columns] == [None] * 3  # the widths it lent rich are given back
    assert "predictor-rank (skipped)" in ours.export_text()


def test_headers_given_to_the_constructor_markup_and_extra_cells_are_measured_as_shown():
    from rich.text import Text

    table = FoldingTable("method", "run")  # rich adds these through add_column before __init__ ends
    table.add_row(Text("[bold]predictor-rank[/bold]"), "[bold]12[/bold]", "extra cell")  # a third column appears
    console = Console(width=30, record=True, color_system=None)
    console.print(table)
    text = console.export_text()
    assert "[bold]pr" in text  # a Text cell is shown as it is, not read as markup
    assert "12" in text and "[bold]12" not in text and max(len(line.rstrip()) for line in text.splitlines()) <= 30
    assert all(line.count("│") == 4 for line in text.splitlines() if line.startswith("│"))  # three columns
