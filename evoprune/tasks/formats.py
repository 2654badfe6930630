"""Multiple-choice data files in the layouts evoprune reads, turned into one kind of item.

- ``arc``: AI2 ARC jsonl, one question per line: ``{"question": {"stem": str, "choices":
  [{"text", "label"}, ...]}, "answerKey": label}`` (the Hugging Face ``ai2_arc`` rows, with
  ``question`` a string and ``choices`` ``{"text": [...], "label": [...]}``, are read too).
- ``mmlu``: MMLU CSVs with the header ``question,choice0,choice1,choice2,choice3,answer``
  (answer = index 0-3), one file per subject named ``<subject>_<split>.csv``; a path is one
  such file or a directory of them. The original headerless CSVs (answer = letter A-D) also load.
- ``mc_jsonl``: generic jsonl, ``{"context" or "question": str, "choices": [str, ...],
  "answer": index}``, optionally with ``"subject"``.

Every problem with a file is one EvopruneError naming the file (and line) and what was expected.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evoprune.errors import EvopruneError


@dataclass(frozen=True)
class Doc:
    """One multiple-choice question."""

    question: str
    choices: tuple[str, ...]
    gold: int
    subject: str = ""


ARC_EXPECTED = (
    "an AI2 ARC jsonl line with question.stem, question.choices [{text, label}] and answerKey (one of the labels)"
)
MMLU_EXPECTED = "MMLU CSV rows with the header question,choice0,choice1,choice2,choice3,answer (answer 0-3)"
MC_EXPECTED = 'a jsonl line {"context" or "question": str, "choices": [str, ...], "answer": index of the right choice}'
MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


def _jsonl(path: Path, expected: str):
    """(line number, object) for each non-blank line; a line that is not JSON is a layout error."""
    text = _read_text(path)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise EvopruneError(f"task file '{path}' line {number} is not JSON: expected {expected}") from None
        yield number, obj


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EvopruneError(f"task file '{path}' is not UTF-8 text") from None


def _arc_doc(obj) -> Doc | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("answerKey"), (str, int)):
        return None
    q = obj.get("question")
    if isinstance(q, dict):  # AI2 layout
        stem, raw = q.get("stem"), q.get("choices")
        if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
            return None
        texts = [c.get("text") for c in raw]
        labels = [c.get("label") for c in raw]
    else:  # Hugging Face ai2_arc layout
        stem, raw = q, obj.get("choices")
        if not isinstance(raw, dict):
            return None
        texts, labels = raw.get("text"), raw.get("label")
        if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
            return None
    if not isinstance(stem, str) or len(texts) < 2 or not all(isinstance(t, str) for t in texts):
        return None
    labels = [str(label) for label in labels]
    key = str(obj["answerKey"])
    if key not in labels:
        return None
    return Doc(stem, tuple(texts), labels.index(key))


def load_arc(path: Path) -> list[Doc]:
    docs = []
    for number, obj in _jsonl(path, ARC_EXPECTED):
        doc = _arc_doc(obj)
        if doc is None:
            raise EvopruneError(f"task file '{path}' line {number} is not in the ARC layout: expected {ARC_EXPECTED}")
        docs.append(doc)
    return docs


def load_mc_jsonl(path: Path) -> list[Doc]:
    docs = []
    for number, obj in _jsonl(path, MC_EXPECTED):
        text = obj.get("context", obj.get("question")) if isinstance(obj, dict) else None
        choices = obj.get("choices") if isinstance(obj, dict) else None
        answer = obj.get("answer") if isinstance(obj, dict) else None
        ok = (
            isinstance(text, str)
            and isinstance(choices, list)
            and len(choices) >= 2
            and all(isinstance(c, str) for c in choices)
            and isinstance(answer, int)
            and not isinstance(answer, bool)
            and 0 <= answer < len(choices)
        )
        if not ok:
            raise EvopruneError(
                f"task file '{path}' line {number} is not a multiple-choice item: expected {MC_EXPECTED}"
            )
        docs.append(Doc(text, tuple(choices), answer, str(obj.get("subject", ""))))
    return docs


def mmlu_subject(path: Path) -> str:
    """``high_school_physics_dev.csv`` -> ``high_school_physics``."""
    stem = path.stem
    for split in ("_dev", "_val", "_validation", "_test", "_train", "_auxiliary_train"):
        if stem.endswith(split):
            return stem[: -len(split)]
    return stem


def _mmlu_file(path: Path) -> list[Doc]:
    # Questions may hold quoted line breaks: parse the whole text, and report the line a row
    # starts on.
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    rows, starts, line = [], [], 1
    try:
        for row in reader:
            if row:
                rows.append(row)
                starts.append(line)
            line = reader.line_num + 1
    except csv.Error as exc:
        raise EvopruneError(f"task file '{path}' is not valid CSV ({exc}): expected {MMLU_EXPECTED}") from None
    if not rows:
        raise EvopruneError(f"task file '{path}' is empty: expected {MMLU_EXPECTED}")
    subject = mmlu_subject(path)
    headed = [c.strip() for c in rows[0]] == MMLU_HEADER
    docs = []
    for number, row in zip(starts[1:] if headed else starts, rows[1:] if headed else rows, strict=True):
        answer = None
        if len(row) == 6:
            last = row[5].strip()
            if headed and last.isdigit():
                answer = int(last)
            elif not headed and last in ("A", "B", "C", "D"):
                answer = "ABCD".index(last)
        if answer is None or not 0 <= answer < 4:
            raise EvopruneError(f"task file '{path}' line {number} is not in the MMLU layout: expected {MMLU_EXPECTED}")
        docs.append(Doc(row[0], tuple(row[1:5]), answer, subject))
    return docs


def load_mmlu(path: Path) -> list[Doc]:
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise EvopruneError(f"task directory '{path}' has no .csv files: expected {MMLU_EXPECTED}")
        return [doc for f in files for doc in _mmlu_file(f)]
    return _mmlu_file(path)


LOADERS: dict[str, Callable[[Path], list[Doc]]] = {"arc": load_arc, "mmlu": load_mmlu, "mc_jsonl": load_mc_jsonl}
EXPECTED = {"arc": ARC_EXPECTED, "mmlu": MMLU_EXPECTED, "mc_jsonl": MC_EXPECTED}


def _hub_mmlu_doc(row) -> Doc | None:
    # cais/mmlu rows: {"question": str, "subject": str, "choices": [4 str], "answer": 0-3}
    if not isinstance(row, dict):
        return None
    q, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
    if not isinstance(q, str) or not isinstance(choices, (list, tuple)) or len(choices) != 4:
        return None
    if not all(isinstance(c, str) for c in choices) or not isinstance(answer, int) or not 0 <= answer < 4:
        return None
    return Doc(q, tuple(choices), answer, str(row.get("subject", "")))


def _hub_mc_doc(row) -> Doc | None:
    text = row.get("context", row.get("question")) if isinstance(row, dict) else None
    choices = row.get("choices") if isinstance(row, dict) else None
    answer = row.get("answer") if isinstance(row, dict) else None
    if not (isinstance(text, str) and isinstance(choices, (list, tuple)) and len(choices) >= 2):
        return None
    if not all(isinstance(c, str) for c in choices) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        return None
    return Doc(text, tuple(choices), answer, str(row.get("subject", "")))


_HUB_ROWS: dict[str, Callable[[object], Doc | None]] = {"arc": _arc_doc, "mmlu": _hub_mmlu_doc, "mc_jsonl": _hub_mc_doc}


def hub_docs(fmt: str, rows, where: str) -> list[Doc]:
    """The questions of Hugging Face ``datasets`` rows (``allenai/ai2_arc``, ``cais/mmlu`` layouts).

    Raises EvopruneError naming ``where`` and the row when a row is not in the ``fmt`` layout.
    """
    docs = []
    for number, row in enumerate(rows, 1):
        doc = _HUB_ROWS[fmt](row)
        if doc is None:
            raise EvopruneError(
                f"task data '{where}' row {number} is not in the {fmt} layout: expected {EXPECTED[fmt]}"
            )
        docs.append(doc)
    return docs


def load_docs(fmt: str, path: Path) -> list[Doc]:
    """The questions in ``path`` (read in the ``fmt`` layout), in file order."""
    if fmt not in LOADERS:
        raise EvopruneError(f"task format {fmt!r} is unknown: use one of {', '.join(LOADERS)}")
    if not path.exists():
        raise EvopruneError(f"task data '{path}' does not exist: expected {EXPECTED[fmt]}")
    if path.is_dir() and fmt != "mmlu":
        raise EvopruneError(f"task data '{path}' is a directory: expected a file of {EXPECTED[fmt]}")
    docs = LOADERS[fmt](path)
    if not docs:
        raise EvopruneError(f"task data '{path}' has no questions: expected {EXPECTED[fmt]}")
    return docs
