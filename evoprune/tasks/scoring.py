"""Multiple-choice scoring by log-likelihood, with the lm-evaluation-harness's definitions.

For each question the model scores every continuation (``" " + choice``) after the context:
the summed log-probability of the continuation's tokens. ``acc`` is 1 when the highest sum is
the right choice; ``acc_norm`` when the highest sum divided by the choice's length in characters
is (the harness's ``acc_norm``: ``len(choice)``, the choice without the leading delimiter).
Ties go to the first choice, as ``numpy.argmax`` does in the harness.

Tokens are split as the harness's ``HFLM`` splits them: trailing whitespace of the context moves
to the continuation, ``context + continuation`` and ``context`` are encoded with the tokenizer's
default special tokens, and the continuation is what the whole encoding has past the context's
length. An empty context, or one that encodes to no tokens (only whitespace), is replaced by
the BOS token (EOS when there is none).

Every choice of a question shares the context, so the context runs once and its KV cache serves
all continuations (one more forward pass, batched over the choices, unless every continuation is
a single token, as in MMLU). This computes the same log-likelihoods as separate forward passes
up to float rounding, in a third of the tokens on ARC.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from evoprune.errors import EvopruneError
from evoprune.tasks.spec import Question


def prefix_token_id(tokenizer) -> int:
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if bos is not None else tokenizer.eos_token_id


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as the harness splits them."""
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if cont[:1] != [prefix] else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    if not ctx:
        # A context of only whitespace (or one the tokenizer drops) encodes to nothing without
        # a BOS: score it as the harness scores an empty context, after the prefix token.
        return [prefix_token_id(tokenizer)], whole
    return ctx, whole[len(ctx) :]


def max_positions(model) -> int:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


class _Forward:
    """A model's forward pass with its cache argument, whatever this transformers calls it."""

    def __init__(self, model):
        params = inspect.signature(model.forward).parameters
        self.model = model
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep_arg = "logits_to_keep" in params

    def __call__(self, ids: torch.Tensor, cache=None, last_only: bool = False):
        kwargs = {"input_ids": ids.to(self.model.device), "use_cache": True}
        if cache is not None:
            kwargs[self.cache_arg] = cache
        if last_only and self.keep_arg:
            kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs)
        new_cache = out.get("cache") if "cache" in out else out.get("past_key_values")
        return out.logits, new_cache


def context_overflow(ctx: list[int], conts: Sequence[list[int]], limit: int) -> int:
    """Tokens to cut from the left of the shared context ``ctx`` so that the longest choice fits the
    model's ``limit`` positions (0: it fits)."""
    return max(0, len(ctx) + max(len(c) for c in conts) - limit - 1)


def question_loglikelihoods(forward: _Forward, ctx: list[int], conts: Sequence[list[int]], limit: int) -> list[float]:
    """Summed log-probabilities of each continuation after the shared context ``ctx``, left-truncated
    by ``context_overflow`` (as lm-evaluation-harness truncates)."""
    ctx = ctx[context_overflow(ctx, conts, limit) :]
    logits, cache = forward(torch.tensor([ctx]), last_only=True)
    first = F.log_softmax(logits[0, -1].float(), dim=-1)
    totals = [float(first[c[0]]) for c in conts]
    rest = [i for i, c in enumerate(conts) if len(c) > 1]
    if rest:
        width = max(len(conts[i]) - 1 for i in rest)
        # Right padding: a causal model's real positions never see the padding after them.
        batch = torch.tensor([conts[i][:-1] + [conts[i][-1]] * (width - len(conts[i]) + 1) for i in rest])
        cache.batch_repeat_interleave(len(rest))
        logits, _ = forward(batch, cache=cache)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        for row, i in enumerate(rest):
            targets = torch.tensor(conts[i][1:], device=logprobs.device)
            totals[i] += float(logprobs[row, : len(targets)].gather(-1, targets[:, None]).sum())
    return totals


def predictions(loglikelihoods: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(pred, pred_norm): the best choice by summed log-likelihood, and per character of the choice."""
    lls = np.asarray(loglikelihoods, dtype=float)
    return int(np.argmax(lls)), int(np.argmax(lls / np.array([float(len(c)) for c in choices])))


@dataclass(frozen=True)
class Scored:
    """One question's outcome."""

    index: int
    gold: int
    loglikelihoods: tuple[float, ...]
    pred: int
    pred_norm: int
    truncated: bool = False  # its context was cut from the left to fit the model's positions

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "gold": self.gold,
            "pred": self.pred,
            "pred_norm": self.pred_norm,
            "truncated": self.truncated,
            "loglikelihoods": list(self.loglikelihoods),
        }


def score_questions(
    model, tokenizer, questions: Sequence[Question], progress: Callable[[int, int], None] | None = None
) -> list[Scored]:
    """Score every question with ``model`` as it is now (masked or not)."""
    forward = _Forward(model)
    limit = max_positions(model)
    out = []
    with torch.inference_mode():
        for n, q in enumerate(questions):
            # Every choice gets the same context tokens (the same string, encoded alone).
            pairs = [encode_pair(tokenizer, q.context, c) for c in q.continuations]
            ctx, conts = pairs[0][0], [c for _, c in pairs]
            if not all(conts):
                raise EvopruneError(f"question {q.index + 1}: a choice encodes to no tokens of its own")
            if max(len(c) for c in conts) > limit:
                # No context would be left to score the choice after: refuse rather than crash.
                raise EvopruneError(
                    f"question {q.index + 1}: a choice of {max(len(c) for c in conts)} tokens is longer than the "
                    f"model's {limit} positions: drop the question from the task data"
                )
            lls = question_loglikelihoods(forward, ctx, conts, limit)
            cut = context_overflow(ctx, conts, limit) > 0
            out.append(Scored(q.index, q.gold, tuple(lls), *predictions(lls, q.choices), truncated=cut))
            if progress is not None:
                progress(n + 1, len(questions))
    return out


def accuracy(scored: Sequence[Scored], metrics: Sequence[str] = ("acc", "acc_norm")) -> dict[str, float]:
    """Mean accuracy over the questions (micro average: every question counts once)."""
    n = len(scored)
    values = {
        "acc": sum(s.pred == s.gold for s in scored) / n,
        "acc_norm": sum(s.pred_norm == s.gold for s in scored) / n,
    }
    return {m: values[m] for m in metrics}


def stderr(p: float, n: int) -> float:
    """Standard error of a mean of n 0/1 outcomes (the harness's sample standard deviation / sqrt n)."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else math.nan
