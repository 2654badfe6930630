"""What decides a recovery training (``RecoverySettings``, checked before anything loads) and what it
reports (``RecoveryResult``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evoprune.errors import EvopruneError

METHODS = ("lora", "full")
DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}
CHECKPOINT_DIR = ".checkpoint"
STATE_FILE = "state.pt"
PARTIAL_DIR = ".partial"
# The projections LoRA adapts, by module name, in every family evoprune exports (pruned_modeling):
# Llama/Mistral/Qwen attention and MLP, OPT's out_proj and fc1/fc2. lm_head and embeddings stay.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2")
AMP_DTYPES = ("bfloat16", "float16")
RUNNING_LOSS_STEPS = 20  # the running loss progress reports is the mean of the last this many steps


@dataclass(frozen=True)
class RecoverySettings:
    """How ``recover`` trains. Every field but ``device`` and ``checkpoint_every`` decides the
    result, and a checkpoint continues only under the same values.

    ``lr``: peak learning rate (``None``: 2e-4 for ``lora``, 2e-5 for ``full``); ``warmup``:
    fraction of ``steps`` of linear warm-up. ``batch``: windows of ``seq_len`` tokens per step.
    ``lm_weight`` in [0, 1]: weight of the plain LM loss against the KL. ``train_tokens``: cap on
    the training text (``None``: ``steps * batch * seq_len``, or all there is). ``dtype``:
    ``None`` trains in the export's own dtype. ``amp``: ``bfloat16`` or ``float16`` runs the
    forward passes of teacher and student under ``torch.autocast`` (mixed precision: the weights,
    their gradients and AdamW's state stay in ``dtype``, the matrix products run in ``amp``; on a
    CPU with AMX a step of SmolLM2-135M takes about two thirds of the time, on one without native
    bfloat16 (AVX2 only) many times longer, and ``recover`` notes so); ``None``: every
    product in ``dtype``. The held-out figures before and after are always computed without it.
    ``checkpoint_every``: steps between checkpoints (0: none, the run cannot resume).
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
    amp: str | None = None
    device: str = "cpu"
    checkpoint_every: int = 50

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR.get(self.method, 0.0) if self.lr is None else self.lr

    def validate(self) -> None:
        """Raise EvopruneError naming the option and the fix for values that cannot train."""
        from evoprune.backend.settings import DTYPES, check_device

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
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise EvopruneError(f"--amp {self.amp!r} is unknown: use {' or '.join(AMP_DTYPES)}, or leave it out")
        check_device(self.device)

    def identity(self) -> dict:
        """The settings that decide the result (a checkpoint continues on another device)."""
        d = asdict(self)
        d.pop("device")
        d.pop("checkpoint_every")
        d["lr"] = self.learning_rate
        if d["amp"] is None:  # recoveries recorded before --amp existed have the same identity
            d.pop("amp")
        return d


@dataclass
class RecoveryResult:
    """What ``recover`` wrote and measured.

    ``losses``/``kl``/``ce``: per training step (nats per token; ``kl`` over the full vocabulary);
    ``heldout_before`` / ``heldout_after``: the export before and the result after, on the held-out
    windows (``ppl``, ``ppl_se``, ``nll``, ``nll_se``, ``tokens``, and ``kl``/``kl_se`` to the
    teacher's top 32 tokens per position plus one bucket for the rest: a lower bound of the
    full-vocabulary KL, ``backend.evaluate``);
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
