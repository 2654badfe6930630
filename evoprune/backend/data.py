"""Text for calibration and evaluation: local files, ``datasets`` names, or a built-in offline corpus.

``--data`` accepts:

- ``builtin`` (default): Python's own help texts (``pydoc_data.topics``), present in every CPython,
  so a search runs with no network at all;
- a local ``.txt`` file, a ``.jsonl`` file (field ``text``) or a ``.parquet`` file (column ``text``);
- ``wikitext2``, ``ptb``, ``c4`` shortcuts, or ``hf:NAME[:CONFIG[:SPLIT]]`` for any ``datasets``
  name, when a hub is reachable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from evoprune.errors import EvopruneError
from evoprune.hub import offline_unless_reachable

HUB_SHORTCUTS = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "test"),
    "ptb": ("ptb_text_only", "penn_treebank", "test"),
    "c4": ("allenai/c4", "en", "validation"),
}

MIN_CHARS = 200


@dataclass(frozen=True)
class TextSource:
    spec: str
    text: str

    @property
    def fingerprint(self) -> str:
        return hashlib.sha1(self.text.encode()).hexdigest()[:16]


def _builtin_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def _read_jsonl(path: Path) -> str:
    texts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise EvopruneError(
                f"data file '{path}' line {n} is not valid JSON: expected one object per line"
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise EvopruneError(f"data file '{path}' line {n} has no string field 'text': expected {{\"text\": ...}}")
        texts.append(row["text"])
    return "\n\n".join(texts)


def _read_parquet(path: Path) -> str:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "text" not in table.column_names:
        raise EvopruneError(f"data file '{path}' has no column 'text' (columns: {', '.join(table.column_names)})")
    return "\n\n".join(t for t in table.column("text").to_pylist() if t)


def _read_hub(name: str, config: str | None, split: str) -> str:
    offline_unless_reachable()
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EvopruneError(
            f"could not load dataset '{name}' from the hub ({reason}): "
            "pass a local .txt/.jsonl/.parquet file or 'builtin'"
        ) from None
    column = "text" if "text" in ds.column_names else ds.column_names[0]
    return "\n\n".join(t for t in ds[column] if t)


def load_text(spec: str) -> TextSource:
    """Read the text ``spec`` names; raise a one-line error if it is missing, unreadable or empty."""
    if spec in ("builtin", "builtin:pydoc"):
        return TextSource("builtin", _builtin_text())
    path = Path(spec).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        try:
            if suffix == ".jsonl":
                text = _read_jsonl(path)
            elif suffix == ".parquet":
                text = _read_parquet(path)
            else:
                text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise EvopruneError(f"data file '{spec}' is not UTF-8 text: pass a .txt, .jsonl or .parquet file") from None
        if len(text.strip()) < MIN_CHARS:
            raise EvopruneError(
                f"data file '{spec}' is empty or too short ({len(text.strip())} characters): "
                "pass a text with at least a few thousand words"
            )
        return TextSource(str(path), text)
    if path.is_dir():
        raise EvopruneError(f"data '{spec}' is a directory: pass a .txt, .jsonl or .parquet file")
    if path.exists():  # a device, a pipe or a socket: nothing to read a fixed text from
        raise EvopruneError(f"data '{spec}' is not a regular file: pass a .txt, .jsonl or .parquet file")
    if spec in HUB_SHORTCUTS:
        return TextSource(spec, _read_hub(*HUB_SHORTCUTS[spec]))
    if spec.startswith("hf:"):
        parts = spec[3:].split(":")
        name, config, split = (parts + [None, None])[:3]
        return TextSource(spec, _read_hub(name, config or None, split or "test"))
    raise EvopruneError(
        f"data file '{spec}' does not exist: pass an existing text file, 'builtin', "
        f"a shortcut ({', '.join(HUB_SHORTCUTS)}) or hf:NAME[:CONFIG[:SPLIT]]"
    )


def token_windows(
    tokenizer,
    text: str,
    n_tokens: int,
    seq_len: int,
    skip_tokens: int = 0,
    at_most: bool = False,
    layout: str = "",
) -> torch.Tensor:
    """Cut ``n_tokens`` tokens (after skipping ``skip_tokens``) into windows of ``seq_len``.

    Returns (windows, seq_len) int64 token ids. Only as much text as needed is tokenized, so a
    large corpus costs no more than a small one. ``at_most``: a text shorter than that gives the
    whole windows it has instead of an error (still an error when it has none). ``layout``: what
    the tokens are for, with the options that set them, for the error a short text raises
    (EvopruneError).
    """
    need = skip_tokens + n_tokens
    chars = max(need * 8, 4096)
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) >= need or chars >= len(text):
            break
        chars *= 2
    if at_most and len(ids) < need:
        n_tokens = max(0, len(ids) - skip_tokens)
        need = skip_tokens + n_tokens
    if len(ids) < need:
        raise EvopruneError(
            f"the data has only {len(ids)} tokens but {need} are needed{layout}: pass a longer text or "
            + ("lower those counts" if layout else "fewer tokens")
        )
    ids = torch.tensor(ids[skip_tokens:need], dtype=torch.long)
    n_windows = n_tokens // seq_len
    if n_windows == 0:
        raise EvopruneError(f"{n_tokens} tokens make no window of {seq_len}: use at least {seq_len} tokens")
    return ids[: n_windows * seq_len].reshape(n_windows, seq_len)
