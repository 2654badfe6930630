"""Recovery training of an export: knowledge distillation from the dense model it was pruned from.

Every structured-pruning recipe ends with a short training of the pruned model (LLM-Pruner:
LoRA; SliceGPT: fine-tuning; Minitron: distillation). ``recover`` does that for an evoprune
export and writes an export again (same shapes, loads with plain transformers and with
``evoprune.load_pruned``), with the recovery recorded in its ``plan.json``.

- Teacher: the dense model ``plan.json`` names (``source_model``, checked against the export's
  ``model_fingerprint``), or ``RecoverySettings.teacher``; it must share the export's vocabulary
  and tokenizer.
- Loss per step: ``(1 - lm_weight) * KL + lm_weight * CE``. KL is KL(teacher || student) at
  temperature 1 over the full vocabulary, at every position of every window, averaged over
  positions (nats per token); CE is the plain next-token cross-entropy on the text.
- ``method="lora"``: adapters through ``peft`` on every attention and MLP projection the
  export kept, merged into the weights at the end; ``method="full"``: every weight trains.
  AdamW, linear warm-up then cosine decay to 0 (``transformers.get_cosine_schedule_with_warmup``),
  gradients clipped at norm 1.
- Data (read like ``--data`` of a search, ``backend.data``): the first ``heldout_tokens``
  tokens of the text, in ``seq_len``-token windows, are the held-out split, measured before and
  after (perplexity, and KL to the teacher from its top-k log-probabilities); training reads
  only windows after them (at most ``train_tokens``, by default as many as the steps consume),
  in a seeded random order, reshuffled each pass over them.
- Faults: every ``checkpoint_every`` steps the trainable weights, the optimizer and scheduler,
  the data position and the random states go to ``OUT/.checkpoint/state.pt`` (written to a
  temporary file, then renamed). ``recover`` called again with the same arguments continues
  from it, and ends with the weights an uninterrupted run with the same seed ends with (on the
  same device and thread count). The checkpoint is removed when the export is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from evoprune.errors import EvopruneError

METHODS = ("lora", "full")
DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}
CHECKPOINT_DIR = ".checkpoint"
STATE_FILE = "state.pt"
PARTIAL_DIR = ".partial"
# The projections LoRA adapts, by module name, in every family evoprune exports (pruned_modeling):
# Llama/Mistral/Qwen attention and MLP, OPT's out_proj and fc1/fc2. lm_head and embeddings stay.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2")
RUNNING_LOSS_STEPS = 20  # the running loss progress reports is the mean of the last this many steps


@dataclass(frozen=True)
class RecoverySettings:
    """How ``recover`` trains. Every field but ``device`` and ``checkpoint_every`` decides the
    result, and a checkpoint continues only under the same values.

    ``lr``: peak learning rate (``None``: 2e-4 for ``lora``, 2e-5 for ``full``); ``warmup``:
    fraction of ``steps`` of linear warm-up. ``batch``: windows of ``seq_len`` tokens per step.
    ``lm_weight`` in [0, 1]: weight of the plain LM loss against the KL. ``train_tokens``: cap on
    the training text (``None``: ``steps * batch * seq_len``, or all there is). ``dtype``:
    ``None`` trains in the export's own dtype. ``checkpoint_every``: steps between checkpoints
    (0: none, the run cannot resume).
    """

    method: str = "lora"
    steps: int = 200
    seq_len: int = 512
    batch: int = 4
    lr: float | None = None
    warmup: float = 0.05
    weight_decay: float = 0.0
    lm_weight: float = 0.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    heldout_tokens: int = 4096
    train_tokens: int | None = None
    teacher: str | None = None
    seed: int = 0
    dtype: str | None = None
    device: str = "cpu"
    checkpoint_every: int = 50

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR.get(self.method, 0.0) if self.lr is None else self.lr

    def validate(self) -> None:
        """Raise EvopruneError naming the option and the fix for values that cannot train."""
        from evoprune.backend.pruner import DTYPES, check_device

        if self.method not in METHODS:
            raise EvopruneError(f"--method {self.method!r} is unknown: use lora or full")
        for name in ("steps", "batch", "heldout_tokens"):
            if getattr(self, name) < 1:
                raise EvopruneError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise EvopruneError(f"--seq-len must be at least 2 (a token and the next), got {self.seq_len}")
        if self.heldout_tokens < self.seq_len:
            raise EvopruneError(
                f"--heldout-tokens {self.heldout_tokens} is less than one window of --seq-len {self.seq_len}: raise it"
            )
        if self.train_tokens is not None and self.train_tokens < self.seq_len:
            raise EvopruneError(
                f"--train-tokens {self.train_tokens} is less than one window of --seq-len {self.seq_len}: raise it"
            )
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise EvopruneError(f"--lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.lm_weight <= 1.0:
            raise EvopruneError(f"--lm-weight must be between 0 (KL only) and 1 (LM loss only), got {self.lm_weight}")
        if not 0.0 <= self.warmup < 1.0:
            raise EvopruneError(f"--warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.weight_decay < 0:
            raise EvopruneError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.method == "lora":
            if self.lora_rank < 1:
                raise EvopruneError(f"--lora-rank must be at least 1, got {self.lora_rank}")
            if not 0.0 <= self.lora_dropout < 1.0:
                raise EvopruneError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.checkpoint_every < 0:
            raise EvopruneError(f"--checkpoint-every must be 0 (no checkpoints) or more, got {self.checkpoint_every}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise EvopruneError(f"--dtype {self.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
        check_device(self.device)

    def identity(self) -> dict:
        """The settings that decide the result (a checkpoint continues on another device)."""
        d = asdict(self)
        d.pop("device")
        d.pop("checkpoint_every")
        d["lr"] = self.learning_rate
        return d


@dataclass
class RecoveryResult:
    """What ``recover`` wrote and measured.

    ``losses``/``kl``/``ce``: per training step (nats per token); ``heldout_before`` /
    ``heldout_after``: the export before and the result after, on the held-out windows (``ppl``,
    ``ppl_se``, ``nll``, ``nll_se``, ``tokens``, and ``kl``/``kl_se`` to the teacher's top-k);
    ``teacher_heldout``: the teacher there. ``resumed_from``: the step each continuation
    started at (empty for an uninterrupted run). ``stored``: where the recovery was recorded
    (``store``, ``run``, ``evaluation``, ``id``), or None; ``notes``: what the caller should know
    (a store that could not be written).
    """

    path: Path
    method: str
    steps: int
    params: int
    losses: list[float]
    kl: list[float]
    ce: list[float]
    heldout_before: dict
    heldout_after: dict
    teacher_heldout: dict
    train_windows: int
    heldout_windows: int
    resumed_from: list[int] = field(default_factory=list)
    duration_s: float = 0.0
    stored: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# -- the loss --------------------------------------------------------------------------------
def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, input_ids: torch.Tensor, lm_weight: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, kl, ce)`` of one batch, each a scalar in nats per token.

    ``student_logits``, ``teacher_logits``: (batch, seq, vocab); ``input_ids``: (batch, seq).
    ``kl``: KL(teacher || student) of the next-token distributions at temperature 1 over the full
    vocabulary, averaged over all batch x seq positions; ``ce``: cross-entropy of the student on
    the next token, over the batch x (seq - 1) positions that have one. ``loss``:
    ``(1 - lm_weight) * kl + lm_weight * ce``; the term of weight 0 is left out of the graph.
    """
    if student_logits.shape != teacher_logits.shape:
        raise EvopruneError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1).mean()
    vocab = log_q.shape[-1]
    ce = F.nll_loss(log_q[:, :-1].reshape(-1, vocab), input_ids[:, 1:].reshape(-1))
    if lm_weight == 0:
        loss = kl
    elif lm_weight == 1:
        loss = ce
    else:
        loss = (1 - lm_weight) * kl + lm_weight * ce
    return loss, kl.detach(), ce.detach()


class WindowOrder:
    """Which training windows each step reads: a random permutation of all of them from a seeded
    ``torch.Generator``, read ``batch`` at a time, a new permutation for each pass; the state
    (generator, permutation, position) goes into checkpoints."""

    def __init__(self, n_windows: int, batch: int, seed: int):
        self.n = n_windows
        self.batch = batch
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0
        self.passes = 0

    def next(self) -> torch.Tensor:
        """The next ``batch`` window indices, (batch,) int64."""
        taken = []
        need = self.batch
        while need:
            if self.pos >= len(self.order):
                self.order = torch.randperm(self.n, generator=self.generator)
                self.pos = 0
                self.passes += 1
            chunk = self.order[self.pos : self.pos + need]
            taken.append(chunk)
            self.pos += len(chunk)
            need -= len(chunk)
        return torch.cat(taken)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "pos": self.pos, "passes": self.passes}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.pos, self.passes = state["order"], int(state["pos"]), int(state["passes"])


# -- inputs ----------------------------------------------------------------------------------
def _read_plan(export_dir: Path) -> dict | None:
    from evoprune.export import PLAN_FILE

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


def _lora_targets(model: nn.Module) -> list[str]:
    """Full names of the projections LoRA adapts: the kept attention and MLP linears (zero-width
    stand-ins of removed sub-layers excluded)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.rsplit(".", 1)[-1] in LORA_TARGETS
        and min(module.in_features, module.out_features) > 0
    ]


def _heldout(model, windows, reference, batch: int) -> dict:
    from evoprune.backend.evaluate import quality

    return quality(model, windows, reference, batch)


@contextmanager
def _deterministic(device: torch.device):
    """Deterministic kernels where torch has them (warn where it has none), restored afterwards."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs to be deterministic
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


# -- checkpoints -----------------------------------------------------------------------------
def _save_state(path: Path, state: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path / STATE_FILE)


def _load_state(path: Path) -> dict | None:
    file = path / STATE_FILE
    if not file.is_file():
        return None
    try:
        return torch.load(file, map_location="cpu", weights_only=True)  # no pickled code runs
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint becomes one clear line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EvopruneError(
            f"the checkpoint '{file}' cannot be read ({reason}): pass --restart to start the recovery again"
        ) from None


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def _store_target(store: str | Path | None, plan: dict | None, export_dir: Path) -> tuple[Path, int, int] | None:
    """``(store path, run id, evaluation id)`` to record the recovery against, or None.

    An explicit ``store`` must exist and hold the evaluation plan.json names, with the export's
    levels (EvopruneError otherwise); ``"auto"`` uses plan.json's store when all that holds.
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
    except EvopruneError:
        if auto:
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


def _noop(*_args, **_kwargs) -> None:
    return None


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
    ``progress(event, **info)``: ``phase`` (name), ``train`` (total, done), ``step`` (step,
    total, loss, kl, ce, lr, running_loss).

    Raises ``EvopruneError`` before training on bad input: not an export, no teacher to be had,
    a teacher of another vocabulary or tokenizer, data too short for the held-out split and one
    training window, invalid settings, a non-empty ``out``, a checkpoint of other arguments, or a
    ``store`` that does not hold the export's evaluation; during training, when the loss becomes
    non-finite (the last checkpoint stays).
    """
    from evoprune.backend.data import load_text
    from evoprune.backend.loading import quiet_transformers
    from evoprune.export import export_dtype, load_pruned, read_export_config, write_export

    settings = settings or RecoverySettings()
    progress = progress or _noop
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
    context = getattr(config, "max_position_embeddings", None)
    if context is not None and settings.seq_len > context:
        raise EvopruneError(
            f"--seq-len {settings.seq_len} is longer than the model's context of {context} tokens: "
            f"use --seq-len {context} or less"
        )
    _check_out(out, export_dir, force)
    text = load_text(data)
    target = _store_target(store, plan, export_dir)
    checkpoint = out / CHECKPOINT_DIR
    state = None if restart else _load_state(checkpoint)

    quiet_transformers()
    dtype_name = settings.dtype or export_dtype(export_dir)
    dtype = getattr(torch, dtype_name)
    device = torch.device(settings.device)
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
            out.mkdir(parents=True, exist_ok=True)
        else:
            before, teacher_figures = json.loads(state["heldout_before"]), json.loads(state["teacher_heldout"])
            reference = None
        model, trainable = _trainable(student, settings)
        optimizer = torch.optim.AdamW(
            [p for _, p in trainable], lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        from transformers import get_cosine_schedule_with_warmup

        scheduler = get_cosine_schedule_with_warmup(optimizer, round(settings.warmup * settings.steps), settings.steps)
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
            with torch.no_grad():
                teacher_logits = teacher.model(input_ids=ids).logits
            loss, kl, ce = distillation_loss(model(input_ids=ids).logits, teacher_logits, ids, settings.lm_weight)
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
    stored, notes = None, []
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


def _trainable(student: nn.Module, settings: RecoverySettings) -> tuple[nn.Module, list[tuple[str, nn.Parameter]]]:
    """The model to train (``student`` itself, or it wrapped by peft) and its trainable
    parameters by name, in a fixed order (the optimizer's)."""
    torch.manual_seed(settings.seed)  # LoRA's initialisation, then dropout, draw from here
    if settings.method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=_lora_targets(student),
            bias="none",
        )
        with warnings.catch_warnings():  # transformers' deprecation notices for what peft calls
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(student, config)
    else:
        model = student
    return model, [(n, p) for n, p in model.named_parameters() if p.requires_grad]
