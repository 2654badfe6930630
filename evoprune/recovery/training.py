"""The parts of a recovery training: the loss (``distillation_loss``: KL to the teacher plus
optional LM loss), the seeded order of windows (``WindowOrder``), what trains (LoRA targets or every
weight), deterministic kernels, and checkpoints that resume bit for bit.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from evoprune.errors import EvopruneError
from evoprune.recovery.settings import LORA_TARGETS, STATE_FILE, RecoverySettings


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
