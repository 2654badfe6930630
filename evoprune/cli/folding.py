"""``FoldingTable``: a rich table that wraps instead of cutting, and splits no word it can keep whole."""

from __future__ import annotations

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text


class FoldingTable(Table):
    """A rich table whose cells and headers wrap onto more lines instead of being cut with an
    ellipsis: a narrow terminal must never hide a figure or a level.

    When the table is wider than the terminal, rich narrows the widest columns first, down to
    equal widths, and so splits words that would fit (``predic``/``tor-ra``/``nk``). Where every
    column's longest word fits the terminal at once, this table gives each column its longest
    word and shares the rest of the width in proportion to what each column still lacks, so
    words stay whole and only lines wrap. Where they cannot all fit (a long path), only the columns
    with the longest words split them. Cells are plain strings (rich markup allowed)."""

    def __init__(self, *args, **kwargs) -> None:
        # Before rich's constructor, which adds the columns given as headers through add_column.
        self._texts: list[list[str | None]] = []  # per column: header, then each cell, as plain text
        super().__init__(*args, **kwargs)

    def add_column(self, header: str = "", *args, overflow: str = "fold", **kwargs) -> None:
        super().add_column(header, *args, overflow=overflow, **kwargs)
        self._texts.append([_plain(header)])

    def add_row(self, *cells, **kwargs) -> None:
        super().add_row(*cells, **kwargs)  # rich adds a column for each cell beyond the last
        while len(self._texts) < len(self.columns):
            self._texts.append([""])
        for texts, cell in zip(self._texts, cells, strict=False):
            texts.append(_plain(cell))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        widths = self._whole_word_widths(options.max_width)
        saved = [c.width for c in self.columns]
        if widths is not None:
            for column, width in zip(self.columns, widths, strict=True):
                column.width = width
        try:
            yield from super().__rich_console__(console, options)
        finally:
            for column, width in zip(self.columns, saved, strict=True):
                column.width = width

    def _whole_word_widths(self, max_width: int) -> list[int] | None:
        """Column widths (without padding) that keep words whole in ``max_width`` cells, or None
        where rich's own widths do: the table fits, a width is set, or the words cannot fit."""
        if not self.columns or any(c.width is not None for c in self.columns) or self.expand or self.width:
            return None
        if any(t is None for texts in self._texts for t in texts):  # a renderable this table cannot measure
            return None
        plain = self._texts
        natural = [max(cell_len(line) for t in col for line in t.splitlines() or [""]) for col in plain]
        word = [max([cell_len(w) for t in col for w in t.split()] or [1]) for col in plain]
        _, right, _, left = self.padding
        n = len(self.columns)
        padding = n * (left + right) - (0 if self.pad_edge else left + right)
        room = max_width - padding - ((2 if self.show_edge else 0) + n - 1 if self.box else 0)
        if sum(natural) <= room:
            return None
        if sum(word) > room:  # a long path, say: only the columns with the longest words split them
            return _capped(word, room)
        lacking = [nat - w for nat, w in zip(natural, word, strict=True)]
        spare = room - sum(word)
        extra = [spare * lack // sum(lacking) for lack in lacking]
        # What the rounding down left over goes to the columns that lack the most.
        for i in sorted(range(n), key=lambda i: extra[i] - lacking[i])[: spare - sum(extra)]:
            extra[i] += 1
        return [w + e for w, e in zip(word, extra, strict=True)]


def _capped(word: list[int], room: int, least: int = 4) -> list[int] | None:
    """``word`` with the largest widths lowered to one cap, the highest that lets them fit
    ``room`` (what that leaves over widens the capped columns by one), or None where the cap would
    be under ``least`` cells."""
    cap = max(word)
    while cap >= least and sum(min(w, cap) for w in word) > room:
        cap -= 1
    if cap < least:
        return None
    widths = [min(w, cap) for w in word]
    for i in [i for i, w in enumerate(word) if w > cap][: room - sum(widths)]:
        widths[i] += 1
    return widths


def _plain(cell) -> str | None:
    """What a cell shows, as plain text (markup resolved); None for a renderable other than text."""
    if cell is None:
        return ""
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        try:
            return Text.from_markup(cell).plain
        except Exception:  # noqa: BLE001 - text that is not valid markup is measured as it is
            return cell
    return None
