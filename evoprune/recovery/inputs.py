"""What a recovery reads and where it reports: the export's plan and weights digest, the output
directory (checked, and locked against a second recovery into it), the teacher (checked against
the export), the held-out and training windows, held-out figures, and the ``recoveries`` row of
the store the export came from.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager, suppress
from pathlib import Path

import torch

from evoprune.errors import EvopruneError
from evoprune.recovery.settings import CHECKPOINT_DIR, PARTIAL_DIR, RecoverySettings
from evoprune.store.lock import path_lock


# -- inputs ----------------------------------------------------------------------------------
def _read_plan(export_dir: Path) -> dict | None:
    from evoprune.pruned.allocation import PLAN_FILE

    path = export_dir / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvopruneError(f"could not read '{path}': {str(exc).splitlines()[0]}: export the model again") from None
    if not isinstance(plan, dict):
        raise EvopruneError(f"'{path}' is not an evoprune plan (not a JSON object): export the model again")
    return plan


def _weights_digest(export_dir: Path) -> str:
    """sha1 of the export's weight files: which student a checkpoint belongs to."""
    files = sorted(export_dir.glob("*.safetensors"))
    if not files:
        raise EvopruneError(f"'{export_dir}' has no .safetensors weights: the export is incomplete; export it again")
    h = hashlib.sha1()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def _check_out(out: Path, export_dir: Path, force: bool) -> None:
    """``out`` may be new, empty, hold our checkpoint, or be non-empty with ``force``; never the input."""
    if out.exists() and not out.is_dir():
        raise EvopruneError(f"--out '{out}' is a file: pass a directory path")
    src, dst = export_dir.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise EvopruneError(f"--out '{out}' is inside the export '{export_dir}', which recovery never modifies: "
                            "choose a directory outside it")  # fmt: skip
    ours = (CHECKPOINT_DIR, PARTIAL_DIR)  # our own leftovers: a checkpoint to continue from, an unfinished write
    if (
        out.is_dir()
        and not (out / CHECKPOINT_DIR).is_dir()
        and any(p.name not in ours for p in out.iterdir())
        and not force
    ):
        raise EvopruneError(f"--out '{out}' exists and is not empty: choose another --out or pass --force")


def _lock_out(out: Path) -> AbstractContextManager[None]:
    """One recovery per output directory: an advisory OS lock on ``OUT.lock`` beside it (gone with
    its process, even after SIGKILL; the file stays). A second process gets ``EvopruneError``."""
    target = out.resolve()  # "--out ." and "--out ../here" lock the same file
    with suppress(OSError):  # without its folder, no lock: creating --out then reports the problem
        target.parent.mkdir(parents=True, exist_ok=True)
    return path_lock(
        target,
        lambda holder: (
            f"output directory '{out}' is in use by another evoprune recover ({holder}): wait for it to end "
            "(if it stops early, the same command continues from its checkpoint), or pass another --out"
        ),
    )


def _load_teacher(spec: str, dtype: torch.dtype, plan: dict | None, from_plan: bool, progress):
    from evoprune.backend.loading import load_config, load_model, model_fingerprint, resolve_model

    path = Path(spec).expanduser()
    if (path / "config.json").is_file() and "evoprune_layers" in (path / "config.json").read_text(encoding="utf-8"):
        raise EvopruneError(f"teacher '{spec}' is an evoprune export: pass the dense model it was pruned from")
    source = resolve_model(spec)
    if source.kind in ("zoo", "hub"):
        progress("phase", name=f"fetching {spec}")
    try:
        load_config(source)
    except EvopruneError as exc:
        if from_plan:
            raise EvopruneError(
                f"the export's dense model '{spec}' (plan.json source_model) cannot be loaded ({exc}): "
                "pass --teacher with that model"
            ) from None
        raise
    progress("phase", name=f"loading teacher {spec}")
    check = from_plan and bool(plan.get("model_fingerprint"))
    searched = getattr(torch, str((plan or {}).get("backend", {}).get("dtype", "float32")), torch.float32)
    # Checked as the search loaded it: a float32 load gives any dtype's fingerprint, and casts
    # to the training dtype exactly as loading in it would.
    teacher = load_model(source, dtype=torch.float32 if check and searched != dtype else dtype)
    if check and model_fingerprint(teacher.model, as_dtype=searched) != plan["model_fingerprint"]:
        raise EvopruneError(
            f"model '{spec}' is not the one the export was pruned from (its weights or config changed): "
            "pass --teacher to distill from it anyway"
        )
    teacher.model.to(dtype)
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    return teacher


def _check_teacher(teacher, student, student_tokenizer, spec: str) -> None:
    """Same vocabulary size (logits) and the same tokenizer (token ids mean the same text)."""
    t_vocab = teacher.model.get_output_embeddings().weight.shape[0]
    s_vocab = student.get_output_embeddings().weight.shape[0]
    if t_vocab != s_vocab:
        raise EvopruneError(
            f"teacher '{spec}' predicts {t_vocab} tokens but the export {s_vocab}: "
            "pass the dense model the export was pruned from as --teacher"
        )
    if teacher.tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise EvopruneError(
            f"teacher '{spec}' has another tokenizer than the export: "
            "pass the dense model the export was pruned from as --teacher"
        )


def _windows(tokenizer, text, settings: RecoverySettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out, training) windows: the first ``heldout_tokens`` tokens, then the rest."""
    from evoprune.backend.data import token_windows

    heldout = token_windows(tokenizer, text.text, settings.heldout_tokens, settings.seq_len)
    want = settings.train_tokens or settings.steps * settings.batch * settings.seq_len
    try:
        train = token_windows(
            tokenizer, text.text, want, settings.seq_len, skip_tokens=settings.heldout_tokens, at_most=True
        )
    except EvopruneError:
        raise EvopruneError(
            f"data '{text.spec}' has no {settings.seq_len}-token window left for training after the "
            f"{settings.heldout_tokens} held-out tokens: pass a longer text, or lower --heldout-tokens or --seq-len"
        ) from None
    return heldout, train


def _heldout(model, windows, reference, batch: int) -> dict:
    from evoprune.backend.evaluate import quality

    return quality(model, windows, reference, batch)


def _store_target(
    store: str | Path | None, plan: dict | None, export_dir: Path, skipped: list[str] | None = None
) -> tuple[Path, int, int] | None:
    """``(store path, run id, evaluation id)`` to record the recovery against, or None.

    An explicit ``store`` must exist and hold the evaluation plan.json names, with the export's
    levels (EvopruneError otherwise); ``"auto"`` uses plan.json's store when all that holds, and
    otherwise appends why not to ``skipped``.
    """
    from evoprune.store import Store

    auto = store == "auto"
    if store is None or (auto and not (plan or {}).get("store")):
        return None
    path = Path(plan["store"] if auto else store)
    run_id, eval_id = (plan or {}).get("run"), (plan or {}).get("evaluation")
    try:
        if run_id is None or eval_id is None:
            raise EvopruneError(
                f"'{export_dir}' names no stored evaluation (plan.json has no run/evaluation: it was not written "
                "by 'evoprune export --store'): drop --store"
            )
        with Store.open_existing(path, readonly=True) as st:
            evaluation = st.evaluation(int(eval_id))
        levels = plan.get("levels") or {}
        levels = list(levels.get("attn", [])) + list(levels.get("mlp", []))
        if evaluation.run_id != run_id or evaluation.levels != levels:
            raise EvopruneError(
                f"evaluation {eval_id} in store '{path}' is not the configuration '{export_dir}' was exported from: "
                "pass the store it was exported from, or --store none"
            )
    except EvopruneError as exc:
        if auto:
            if skipped is not None:
                skipped.append(f"the recovery will not be recorded in the store plan.json names: {exc}")
            return None
        raise
    return path, int(run_id), int(eval_id)


def _record(target: tuple[Path, int, int], out: Path, record: dict) -> dict:
    from evoprune.store import Store

    path, run_id, eval_id = target
    keys = ("teacher", "data_fingerprint", "settings", "heldout_split", "heldout_tokens", "train_windows")
    details = {k: record[k] for k in keys}
    details.update(teacher_heldout=record["teacher_heldout"], loss_first=record["losses"][0],
                   loss_last=record["losses"][-1])  # fmt: skip
    with Store.open_existing(path) as st:
        row = st.add_recovery(
            run_id=run_id,
            eval_id=eval_id,
            out=str(out.resolve()),
            method=record["method"],
            steps=record["steps"],
            data=record["data"],
            before=record["heldout_before"],
            after=record["heldout_after"],
            details=details,
        )
    return {"store": str(path), "run": run_id, "evaluation": eval_id, "id": row}
