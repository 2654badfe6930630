"""``recover()``: recovery training of an export by distillation from its dense model, and an export again.

Settings are in ``evoprune.recovery.settings``, the loss, window order and checkpoints in
``training``, the inputs (plan, teacher, windows) and the store record in ``inputs``; the package
docstring (``evoprune.recovery``) describes the whole recipe.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path

import torch

from evoprune.engine.settings import log_progress
from evoprune.errors import EvopruneError, make_output_dir, require_output_dir
from evoprune.recovery.inputs import (
    _check_out,
    _check_teacher,
    _heldout,
    _load_teacher,
    _lock_out,
    _read_plan,
    _record,
    _store_target,
    _weights_digest,
    _windows,
)
from evoprune.recovery.settings import CHECKPOINT_DIR, PARTIAL_DIR, RUNNING_LOSS_STEPS, RecoveryResult, RecoverySettings
from evoprune.recovery.training import (
    WindowOrder,
    _deterministic,
    _differences,
    _load_state,
    _rng_state,
    _save_state,
    _set_rng_state,
    _trainable,
    distillation_loss,
)


def _mixed_precision(device: torch.device, amp: str | None) -> AbstractContextManager:
    """``torch.autocast`` to ``amp`` on ``device``, or nothing when ``amp`` is None."""
    if amp is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, amp))


def _native_amp(device: torch.device, amp: str) -> bool:
    """Whether ``device`` runs ``amp`` matrix products natively (True where torch cannot tell)."""
    if device.type == "cpu":
        # oneDNN's own test, the one torch's tests use: AVX512-BF16 or AMX (AVX512-FP16 or AMX-FP16).
        probe = getattr(torch.ops.mkldnn, f"_is_mkldnn_{'bf16' if amp == 'bfloat16' else 'fp16'}_supported", None)
        try:
            return bool(probe()) if probe is not None else True
        except RuntimeError:
            return True
    if device.type == "cuda" and amp == "bfloat16":
        return torch.cuda.is_bf16_supported()
    return True


def amp_note(device: torch.device, amp: str | None) -> str | None:
    """Why ``--amp`` would slow ``device`` down rather than speed it up, or None.

    Without native bfloat16 (float16) products a CPU's autocast emulates them, many times slower
    than float32 (a SmolLM2-135M distillation step 13.5x on an AVX2 CPU: ``benchmarks/amp.py``).
    """
    if amp is None or _native_amp(device, amp):
        return None
    if device.type == "cpu":
        return (
            f"this CPU has no native {amp} matrix products (no AVX512-BF16/FP16 or AMX), so --amp {amp} emulates "
            "them and trains many times slower than float32: leave --amp out"
        )
    return f"this {device.type} device has no native {amp}: leave --amp out, or use --amp float16 on a GPU"


# -- the function ----------------------------------------------------------------------------
def recover(
    export_dir: str | Path,
    data: str,
    out: str | Path,
    settings: RecoverySettings | None = None,
    progress: Callable[..., None] | None = None,
    *,
    force: bool = False,
    restart: bool = False,
    store: str | Path | None = "auto",
) -> RecoveryResult:
    """Distill the export in ``export_dir`` from its dense model on ``data``; write the result to ``out``.

    ``data``: as ``--data`` of a search (``builtin``, a .txt/.jsonl/.parquet file, ``wikitext2``,
    ...). ``out``: a new or empty directory, one holding this recovery's checkpoint (it continues
    from there), or with ``force`` any directory (its files of the same names are replaced). The
    export in ``export_dir`` is only read. ``restart`` discards a checkpoint in ``out``.
    ``store``: the pair store to record the recovery in, against the evaluation the export came
    from (plan.json's ``store``/``run``/``evaluation``), so ``evoprune plan`` shows it; ``"auto"``:
    the store plan.json names, when it exists and holds that evaluation; ``None``: none.
    ``progress(event, **info)``: ``phase`` (name), ``note`` (text: what the caller should know
    before training, as ``amp_note``'s; also in the result's ``notes``), ``train`` (total, done),
    ``step`` (step, total, loss, kl, ce, lr, running_loss).

    Raises ``EvopruneError`` before training on bad input: not an export, no teacher to be had,
    a teacher of another vocabulary or tokenizer, data too short for the held-out split and one
    training window, invalid settings, a non-empty ``out``, an ``out`` another process is
    recovering into (it holds the lock on ``OUT.lock`` beside it until it ends), a checkpoint of
    other arguments, or a ``store`` that does not hold the export's evaluation; during training,
    when the loss becomes non-finite (the last checkpoint stays).
    """
    from evoprune.backend.data import load_text
    from evoprune.backend.loading import quiet_transformers, require_context
    from evoprune.pruned.export import export_dtype, load_pruned, read_export_config, write_export

    settings = settings or RecoverySettings()
    progress = progress or log_progress
    start_time = time.perf_counter()
    settings.validate()
    export_dir, out = Path(export_dir), Path(out)
    if not export_dir.is_dir():
        raise EvopruneError(f"export '{export_dir}' is not a directory: pass a directory written by 'evoprune export'")
    config = read_export_config(export_dir)  # "not an export" fails here
    plan = _read_plan(export_dir)
    teacher_spec = settings.teacher or (plan or {}).get("source_model")
    if not teacher_spec:
        raise EvopruneError(
            f"'{export_dir}' has no plan.json naming the dense model it was pruned from: pass it as --teacher"
        )
    require_context(config, settings.seq_len)
    text = load_text(data)  # before the lock: a bad --data leaves nothing beside --out
    require_output_dir(out, "--out")  # and so does an --out that cannot be created
    # One recovery per --out, held until the result is written: --out is checked, read and
    # written by this process alone.
    with _lock_out(out):
        _check_out(out, export_dir, force)
        not_recorded: list[str] = []
        target = _store_target(store, plan, export_dir, not_recorded)
        checkpoint = out / CHECKPOINT_DIR
        state = None if restart else _load_state(checkpoint)

        quiet_transformers()
        dtype_name = settings.dtype or export_dtype(export_dir)
        dtype = getattr(torch, dtype_name)
        device = torch.device(settings.device)
        notes = ([note] if (note := amp_note(device, settings.amp)) else []) + not_recorded
        for note in notes:
            progress("note", text=note)
        progress("phase", name="loading the export")
        student, tokenizer = load_pruned(export_dir, dtype)
        teacher = _load_teacher(teacher_spec, dtype, plan, settings.teacher is None, progress)
        _check_teacher(teacher, student, tokenizer, teacher_spec)
        heldout, train = _windows(tokenizer, text, settings)
        identity = {
            "export_weights": _weights_digest(export_dir),
            "teacher": teacher_spec,
            "teacher_fingerprint": teacher.fingerprint,
            "data": text.spec,
            "data_fingerprint": text.fingerprint,
            "dtype": dtype_name,
            "settings": settings.identity(),
        }
        if state is not None and json.loads(state["identity"]) != identity:
            changed = ", ".join(_differences(json.loads(state["identity"]), identity))
            raise EvopruneError(
                f"'{out}' holds the checkpoint of a recovery with other arguments ({changed}): rerun with the "
                "same arguments to continue, pass --restart to discard it, or choose another --out"
            )

        if restart and checkpoint.exists():
            shutil.rmtree(checkpoint)
        with _deterministic(device):
            student.to(device)
            teacher.model.to(device).eval()
            if state is None:
                progress("phase", name="held-out figures before recovery")
                from evoprune.backend.evaluate import dense_reference

                reference = dense_reference(teacher.model, heldout, batch_size=settings.batch)
                before = _heldout(student, heldout, reference, settings.batch)
                teacher_figures = _heldout(teacher.model, heldout, None, settings.batch)
                make_output_dir(out, "--out")
            else:
                before, teacher_figures = json.loads(state["heldout_before"]), json.loads(state["teacher_heldout"])
                reference = None
            model, trainable = _trainable(student, settings)
            optimizer = torch.optim.AdamW(
                [p for _, p in trainable], lr=settings.learning_rate, weight_decay=settings.weight_decay
            )
            from transformers import get_cosine_schedule_with_warmup

            scheduler = get_cosine_schedule_with_warmup(
                optimizer, round(settings.warmup * settings.steps), settings.steps
            )
            order = WindowOrder(len(train), settings.batch, settings.seed)
            log = {"loss": [], "kl": [], "ce": []}
            resumed: list[int] = []
            step = 0
            if state is not None:
                step = int(state["step"])
                weights = state["weights"]
                with torch.no_grad():
                    for name, p in trainable:
                        p.copy_(weights[name].to(p.device, p.dtype))
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                order.load_state_dict(state["order"])
                log = json.loads(state["log"])
                resumed = [*json.loads(state["resumed"]), step]
                _set_rng_state(state["rng"], device)

            def save(done: int) -> None:
                _save_state(
                    checkpoint,
                    {
                        "identity": json.dumps(identity, sort_keys=True),
                        "step": done,
                        "weights": {name: p.detach().to("cpu", copy=True) for name, p in trainable},
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "order": order.state_dict(),
                        "rng": _rng_state(device),
                        "log": json.dumps(log),
                        "resumed": json.dumps(resumed),
                        "heldout_before": json.dumps(before),
                        "teacher_heldout": json.dumps(teacher_figures),
                    },
                )

            progress("train", total=settings.steps, done=step)
            model.train()
            while step < settings.steps:
                ids = train[order.next()].to(device)
                with _mixed_precision(device, settings.amp):
                    with torch.no_grad():
                        teacher_logits = teacher.model(input_ids=ids).logits
                    student_logits = model(input_ids=ids).logits
                loss, kl, ce = distillation_loss(student_logits, teacher_logits, ids, settings.lm_weight)
                if not math.isfinite(float(loss.detach())):
                    raise EvopruneError(
                        f"the training loss became {float(loss.detach())} at step {step + 1}: lower --lr, or train in "
                        "float32 (--dtype float32); pass --restart with the new arguments"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                log["loss"].append(float(loss.detach()))
                log["kl"].append(float(kl))
                log["ce"].append(float(ce))
                recent = log["loss"][-RUNNING_LOSS_STEPS:]
                progress(
                    "step",
                    step=step,
                    total=settings.steps,
                    loss=log["loss"][-1],
                    kl=log["kl"][-1],
                    ce=log["ce"][-1],
                    lr=scheduler.get_last_lr()[0],
                    running_loss=sum(recent) / len(recent),
                )
                if settings.checkpoint_every and (step % settings.checkpoint_every == 0 or step == settings.steps):
                    save(step)
            model.eval()
            if settings.method == "lora":
                model = model.merge_and_unload()
            model.to(dtype=getattr(torch, export_dtype(export_dir)))
            progress("phase", name="held-out figures after recovery")
            if reference is None:
                from evoprune.backend.evaluate import dense_reference

                reference = dense_reference(teacher.model, heldout, batch_size=settings.batch)
            after = _heldout(model, heldout, reference, settings.batch)

        progress("phase", name=f"writing {out}")
        params = sum(p.numel() for p in model.parameters())
        record = {
            "method": settings.method,
            "steps": settings.steps,
            "teacher": teacher_spec,
            "teacher_fingerprint": teacher.fingerprint,
            "data": text.spec,
            "data_fingerprint": text.fingerprint,
            "source_export": str(export_dir.resolve()),
            "source_weights": identity["export_weights"],
            "settings": {**asdict(settings), "lr": settings.learning_rate, "dtype": dtype_name},
            "heldout_split": (
                f"the first {len(heldout) * settings.seq_len} tokens of the data in {settings.seq_len}-token windows; "
                f"training read the {len(train)} windows after them"
            ),
            "heldout_tokens": len(heldout) * settings.seq_len,
            "train_windows": len(train),
            "heldout_before": before,
            "heldout_after": after,
            "teacher_heldout": teacher_figures,
            "losses": log["loss"],
            "kl": log["kl"],
            "ce": log["ce"],
            "resumed_from": resumed,
            "duration_s": time.perf_counter() - start_time,  # of this call (a continuation: since it started)
        }
        new_plan = dict(plan or {})
        if "recovery" in new_plan:
            record["previous"] = new_plan["recovery"]
        new_plan["recovery"] = record
        model.to("cpu")
        partial = out / PARTIAL_DIR
        if partial.exists():
            shutil.rmtree(partial)
        write_export(model, tokenizer, partial, new_plan)
        for f in sorted(partial.iterdir()):
            os.replace(f, out / f.name)
        partial.rmdir()
        stored = None
        if target is not None:
            try:
                stored = _record(target, out, record)
            except EvopruneError as exc:
                notes.append(f"the recovery was not recorded in store '{target[0]}': {exc}")
        if checkpoint.exists():
            shutil.rmtree(checkpoint)
        return RecoveryResult(
            path=out,
            method=settings.method,
            steps=settings.steps,
            params=params,
            losses=log["loss"],
            kl=log["kl"],
            ce=log["ce"],
            heldout_before=before,
            heldout_after=after,
            teacher_heldout=teacher_figures,
            train_windows=len(train),
            heldout_windows=len(heldout),
            resumed_from=resumed,
            duration_s=time.perf_counter() - start_time,
            stored=stored,
            notes=notes,
        )
