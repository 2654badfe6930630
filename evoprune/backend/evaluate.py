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
    """Perplexity (and KL to the dense reference when given) of ``model`` on ``windows``, with
    standard errors.

    ``windows``: (n, seq_len) token ids. Returns ``ppl`` (exp of the mean next-token NLL in
    nats), ``nll`` and its standard error ``nll_se``, ``ppl_se`` (delta method:
    ``ppl * nll_se``), ``tokens`` (predicted tokens), and with a reference ``kl`` (nats per
    token) and ``kl_se``. Standard errors come from the spread of the per-window means, since
    neighbouring tokens' losses are correlated (one window: from the per-token spread, which
    understates it).

    Log-probabilities are read as ``logit - logsumexp`` at the few positions needed, so the full
    vocabulary-sized log-softmax is never materialised.
    """
    per_window, per_token, per_window_kl, per_token_kl = _window_means(model, windows, reference, batch_size)
    mean_nll = float(per_window.mean())
    nll_se = _standard_error(per_window, per_token)
    ppl = math.exp(mean_nll) if mean_nll < 700 else math.inf
    out = {
        "ppl": ppl,
        "ppl_se": ppl * nll_se if math.isfinite(ppl) else math.inf,
        "nll": mean_nll,
        "nll_se": nll_se,
        "tokens": float(per_window.numel() * (windows.shape[1] - 1)),
    }
    if per_window_kl is not None:
        out["kl"] = float(per_window_kl.mean())
        out["kl_se"] = _standard_error(per_window_kl, per_token_kl)
    return out


def window_nll(model, windows: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Mean next-token NLL (nats, float64) of ``model`` on each of ``windows`` ((n, seq_len) token
    ids): shape (n,). Their mean is ``quality()``'s ``nll``; paired differences between two models
    on the same windows are what tell near-equal candidates apart."""
    return _window_means(model, windows, None, batch_size)[0]


def _window_means(
    model, windows: torch.Tensor, reference: DenseReference | None, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Per-window mean NLL (n,); per-token NLL when there is one window; with a reference,
    per-window KL (n,) and, with one window, per-token KL."""
    nll_rows, kl_rows, token_nll, token_kl = [], [], [], []
    with torch.inference_mode():
        for start, batch in _batches(windows, batch_size, model.device):
            logits = model(input_ids=batch).logits[:, :-1].float()
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            targets = batch[:, 1:]
            nll = (lse - logits.gather(-1, targets[..., None]))[..., 0].double()
            nll_rows.append(nll.mean(dim=1))
            if len(windows) == 1:
                token_nll.append(nll.reshape(-1))
            if reference is not None:
                ref_idx = reference.indices[start : start + len(batch)]
                p_log = reference.logprobs[start : start + len(batch)]
                q_log = logits.gather(-1, ref_idx) - lse
                kl = (p_log.exp() * (p_log - q_log)).sum(-1)
                p_tail = _log1mexp(torch.logsumexp(p_log, -1))
                q_tail = _log1mexp(torch.logsumexp(q_log, -1))
                kl = (kl + p_tail.exp() * (p_tail - q_tail)).double()
                kl_rows.append(kl.mean(dim=1))
                if len(windows) == 1:
                    token_kl.append(kl.reshape(-1))
    per_token = torch.cat(token_nll) if token_nll else None
    per_window_kl = torch.cat(kl_rows) if reference is not None else None
    return torch.cat(nll_rows), per_token, per_window_kl, torch.cat(token_kl) if token_kl else None


def _standard_error(per_window: torch.Tensor, per_token: torch.Tensor | None) -> float:
    """Standard error of the mean of equal-length windows' means (per token with one window)."""
    values = per_window if per_window.numel() > 1 or per_token is None else per_token
    if values.numel() < 2:
        return 0.0
    return float(values.std(unbiased=True) / math.sqrt(values.numel()))


def perplexity(model, windows: torch.Tensor, batch_size: int = 4) -> float:
    """exp(mean NLL); ``inf`` or ``nan`` when the model has collapsed (the caller decides)."""
    return quality(model, windows, None, batch_size)["ppl"]
