"""Quality of the (masked) model on token windows: perplexity and KL divergence to the dense model.

KL uses only the dense model's top-k log-probabilities per token (cached once), plus one
bucket for the rest of the vocabulary: KL between the two distributions coarsened to
(top-k tokens, everything else). That is a lower bound of the full KL, exact when the tail
mass is zero, and needs k numbers per token instead of the whole vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DenseReference:
    """The dense model's top-k next-token log-probabilities on the evaluation windows."""

    indices: torch.Tensor  # (windows, seq-1, k) int64
    logprobs: torch.Tensor  # (windows, seq-1, k) float32


def _batches(windows: torch.Tensor, batch_size: int, device: torch.device):
    for start in range(0, len(windows), batch_size):
        yield start, windows[start : start + batch_size].to(device)


def dense_reference(model, windows: torch.Tensor, k: int = 32, batch_size: int = 4) -> DenseReference:
    idx, lp = [], []
    with torch.inference_mode():
        for _, batch in _batches(windows, batch_size, model.device):
            logprobs = F.log_softmax(model(input_ids=batch).logits[:, :-1].float(), dim=-1)
            top = logprobs.topk(k, dim=-1)
            idx.append(top.indices)
            lp.append(top.values)
    return DenseReference(torch.cat(idx), torch.cat(lp))


def _log1mexp(logsum: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable near 0."""
    x = logsum.clamp(max=-1e-7)
    return torch.where(x > -0.693, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def quality(
    model, windows: torch.Tensor, reference: DenseReference | None = None, batch_size: int = 4
) -> dict[str, float]:
    """Perplexity (and KL to the dense reference when given) of ``model`` on ``windows``.

    Log-probabilities are read as ``logit - logsumexp`` at the few positions needed, so the full
    vocabulary-sized log-softmax is never materialised.
    """
    nll_total, kl_total, count = 0.0, 0.0, 0
    with torch.inference_mode():
        for start, batch in _batches(windows, batch_size, model.device):
            logits = model(input_ids=batch).logits[:, :-1].float()
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            targets = batch[:, 1:]
            nll_total += float((lse - logits.gather(-1, targets[..., None])).sum())
            count += targets.numel()
            if reference is not None:
                ref_idx = reference.indices[start : start + len(batch)]
                p_log = reference.logprobs[start : start + len(batch)]
                q_log = logits.gather(-1, ref_idx) - lse
                kl = (p_log.exp() * (p_log - q_log)).sum(-1)
                p_tail = _log1mexp(torch.logsumexp(p_log, -1))
                q_tail = _log1mexp(torch.logsumexp(q_log, -1))
                kl_total += float((kl + p_tail.exp() * (p_tail - q_tail)).sum())
    mean_nll = nll_total / count
    out = {"ppl": math.exp(mean_nll) if mean_nll < 700 else math.inf}
    if reference is not None:
        out["kl"] = kl_total / count
    return out


def perplexity(model, windows: torch.Tensor, batch_size: int = 4) -> float:
    """exp(mean NLL); ``inf`` or ``nan`` when the model has collapsed (the caller decides)."""
    return quality(model, windows, None, batch_size)["ppl"]
