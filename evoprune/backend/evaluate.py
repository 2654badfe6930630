"""Quality of the (masked) model on token windows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def window_nll(model, windows: torch.Tensor, batch_size: int = 4) -> tuple[float, int]:
    """Summed next-token negative log-likelihood over all windows, and the number of tokens scored."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            logits = model(input_ids=batch).logits[:, :-1].float()
            targets = batch[:, 1:]
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
            total += float(nll)
            count += targets.numel()
    return total, count


def perplexity(model, windows: torch.Tensor, batch_size: int = 4) -> float:
    """exp(mean NLL); ``inf`` or ``nan`` when the model has collapsed (the caller decides)."""
    total, count = window_nll(model, windows, batch_size)
    mean = total / count
    return math.exp(mean) if mean < 700 else math.inf
