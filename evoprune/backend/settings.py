"""What decides how the backend measures: ``BackendSettings`` (model dtype and device, token counts of
the rungs, calibration and validation, importance criterion, compensation, level grid), checked
before anything loads, and ``check_device``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from evoprune.backend.compensation import COMPENSATIONS
from evoprune.backend.importance import CRITERIA
from evoprune.errors import EvopruneError, option_text


@dataclass(frozen=True)
class BackendSettings:
    """How configurations are scored, measured and encoded.

    ``calib_data`` is the text importance is scored on; ``None`` uses the evaluation text,
    with windows that do not overlap the evaluation windows. ``compensation`` is what replaces the
    removed units' contribution (``compensation.COMPENSATIONS``: ``none``, FLAP's ``bias``, or
    ``refit``, a least-squares re-fit of the kept weights and the bias).

    The fidelity ladder: every configuration is first measured on ``eval_tokens`` tokens (the
    pairs the surrogate learns from); the promising ones are measured again on each rung of
    ``ladder`` (token counts, comma-separated; ``auto``: 4 x ``eval_tokens``; ``none``: no
    ladder), as EvoPress's multi-step selection and DarwinLM's 1k-8k token schedule do.
    ``ladder_windows`` says where a rung reads: ``disjoint`` (the default), windows after every
    lower rung's, so the figure that promotes a configuration never ranks it on the rung it climbs
    to (the winner's curse, BENCHMARKS.md "Does the figure the search chooses by rank like held-out
    text?"); ``nested``, windows that extend the first rung's (how runs recorded before this
    setting measured). The picks are then measured on ``validation_tokens`` (``None``: 2 x
    ``eval_tokens``; 0: none) of windows disjoint from every rung and from the calibration
    windows, so the figure a pick is reported with was never selected on.
    """

    criterion: str = "obs"  # best on held-out text with refit (BENCHMARKS.md, "Importance criteria and compensation")
    compensation: str = "refit"
    eval_tokens: int = 2048
    calib_tokens: int = 16384
    seq_len: int = 512
    batch_size: int = 4
    head_unit: str = "query_head"
    attn_levels: int = 0
    mlp_levels: int = 8
    mlp_multiple: int = 1
    calib_data: str | None = None
    kl_top_k: int = 32
    dtype: str = "float32"
    device: str = "cpu"  # where evaluation runs; not part of what a run measured (see identity())
    ladder: str = "auto"
    validation_tokens: int | None = None
    ladder_windows: str = "disjoint"

    @property
    def ladder_tokens(self) -> tuple[int, ...]:
        """Token counts of the rungs above the first, increasing (empty: no ladder)."""
        spec = str(self.ladder).strip().lower()
        if spec in ("none", "", "0", "off"):
            return ()
        if spec == "auto":
            return (4 * self.eval_tokens,)
        try:
            rungs = tuple(int(v) for v in spec.replace(" ", "").split(","))
        except ValueError:
            raise EvopruneError(
                f"--ladder {self.ladder!r} is not a list of token counts: use e.g. 8192 or 4096,16384, auto or none"
            ) from None
        return rungs

    @property
    def validation_token_count(self) -> int:
        return 2 * self.eval_tokens if self.validation_tokens is None else self.validation_tokens

    @property
    def search_tokens(self) -> int:
        """Tokens of the windows the rungs read: the largest rung when they are nested; every
        rung's whole windows one after another when disjoint."""
        if self.ladder_windows == "nested":
            return max((self.eval_tokens, *self.ladder_tokens))
        return self.seq_len * sum(self.rung_window_counts)

    @property
    def rung_window_counts(self) -> tuple[int, ...]:
        """Windows of each rung, the first rung's first: ``seq_len``-token windows, rounded up."""
        return tuple(-(-t // self.seq_len) for t in (self.eval_tokens, *self.ladder_tokens))

    @classmethod
    def from_record(cls, record: dict) -> BackendSettings:
        """Settings as a store or an export recorded them. Records written before the fidelity
        ladder existed measured without one: they read as ``ladder="none"`` and no validation
        split, so their windows (and the calibration windows after them) are cut as they were."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        if "ladder" not in record:
            values.update(ladder="none", validation_tokens=0)
        if "ladder_windows" not in record:
            values.update(ladder_windows="nested")
        return cls(**values)

    def identity(self) -> dict:
        """The settings that decide the measurements: a run continues on another device."""
        d = asdict(self)
        d.pop("device")
        if d["compensation"] == "none":  # runs recorded before compensation existed keep their identity
            d.pop("compensation")
        if d["ladder_windows"] == "nested":  # likewise for runs recorded before disjoint rungs
            d.pop("ladder_windows")
        return d

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise EvopruneError(f"--dtype {self.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
        check_device(self.device)
        for name in ("eval_tokens", "calib_tokens", "seq_len", "batch_size", "kl_top_k"):
            if getattr(self, name) < 1:
                option = option_text(name, config_only=("batch_size", "kl_top_k"))
                raise EvopruneError(f"{option} must be at least 1, got {getattr(self, name)}")
        if self.eval_tokens < self.seq_len or self.calib_tokens < self.seq_len:
            raise EvopruneError(
                f"--eval-tokens {self.eval_tokens} and --calib-tokens {self.calib_tokens} must each be at least "
                f"one window of --seq-len {self.seq_len} tokens: raise them or lower --seq-len"
            )
        rungs = (self.eval_tokens, *self.ladder_tokens)
        if any(b <= a for a, b in zip(rungs, rungs[1:], strict=False)):
            raise EvopruneError(
                f"--ladder rungs must increase above --eval-tokens {self.eval_tokens}, got {self.ladder!r}"
            )
        if self.validation_token_count and self.validation_token_count < self.seq_len:
            raise EvopruneError(
                f"--validation-tokens must be 0 (none) or at least one window of --seq-len {self.seq_len} tokens"
            )
        if self.ladder_windows not in LADDER_WINDOWS:
            raise EvopruneError(
                f"ladder_windows {self.ladder_windows!r} is unknown: use one of {', '.join(LADDER_WINDOWS)}"
            )
        if self.criterion not in CRITERIA:
            raise EvopruneError(f"importance criterion {self.criterion!r} is unknown: use one of {', '.join(CRITERIA)}")
        if self.compensation not in COMPENSATIONS:
            raise EvopruneError(
                f"--compensation {self.compensation!r} is unknown: use one of {', '.join(COMPENSATIONS)}"
            )


DTYPES = ("float32", "bfloat16", "float16")
LADDER_WINDOWS = ("disjoint", "nested")


def check_device(device: str) -> None:
    """Refuse a device this torch cannot use, with the fix, before anything is loaded."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise EvopruneError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        built = "with" if torch.version.cuda else "without"
        raise EvopruneError(
            f"--device {device}: no CUDA device is visible (this torch {torch.__version__} was built {built} "
            "CUDA): use --device cpu, or install a CUDA build of torch on a machine with a GPU"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise EvopruneError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise EvopruneError(f"--device {device}: MPS is not available on this machine: use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise EvopruneError(f"--device {device!r} is not supported: use cpu, cuda, cuda:N or mps")
