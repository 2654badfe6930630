"""Does ``recover --amp`` pay on this machine? One distillation step in float32 and under autocast.

A model of SmolLM2-135M's shapes (30 layers, hidden 576, MLP 1536, vocabulary 49,152; random
weights, so no download) trains as ``recover --method full`` does: teacher forward without
gradients, student forward, ``distillation_loss``, backward, AdamW. Each precision runs
``--repeats`` steps, alternating, after one warm-up step each; the figure is the median. Also one
linear layer's product (2,048 x 576 by 576 x 1,536) and what ``recover`` would note about ``--amp``
here (``evoprune.recovery.run.amp_note``). Writes the "Mixed precision on this CPU" section of
``BENCHMARKS.md``::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/amp.py [--batch 1] [--seq-len 512] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._markdown import write_section  # noqa: E402
from evoprune.recovery.run import amp_note  # noqa: E402
from evoprune.recovery.training import distillation_loss  # noqa: E402

SECTION = "Mixed precision on this CPU"
PRECISIONS = ("float32", "bfloat16")


def smollm2_shaped(layers: int = 30) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).float()


def _autocast(precision: str):
    return nullcontext() if precision == "float32" else torch.autocast("cpu", dtype=getattr(torch, precision))


def step_seconds(teacher, student, optimizer, ids: torch.Tensor, precision: str) -> float:
    start = time.perf_counter()
    with _autocast(precision):
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids).logits
        student_logits = student(input_ids=ids).logits
    loss, _, _ = distillation_loss(student_logits, teacher_logits, ids)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def product_seconds(precision: str, repeats: int = 5) -> float:
    a, w = torch.randn(2048, 576), torch.randn(1536, 576)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with _autocast(precision):
            a @ w.T
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def cpu_name() -> str:
    """The CPU's model name as Linux reports it (``platform.processor()`` elsewhere)."""
    info = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")]
    return names[0] if names else platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layers", type=int, default=30, help="decoder layers (30: SmolLM2-135M; fewer for a quick check)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    teacher = smollm2_shaped(args.layers).eval()
    student = copy.deepcopy(teacher).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)
    ids = torch.randint(0, 49152, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    steps: dict[str, list[float]] = {k: [] for k in PRECISIONS}
    for k in PRECISIONS:
        step_seconds(teacher, student, optimizer, ids, k)  # warm-up: allocations, oneDNN kernels
    for _ in range(args.repeats):
        for k in PRECISIONS:
            steps[k].append(step_seconds(teacher, student, optimizer, ids, k))
    step = {k: statistics.median(v) for k, v in steps.items()}
    product = {k: product_seconds(k) for k in PRECISIONS}
    note = amp_note(torch.device("cpu"), "bfloat16")
    body = "\n".join(
        [
            f"Command: `OMP_NUM_THREADS={torch.get_num_threads()} .venv/bin/python benchmarks/amp.py --batch "
            f"{args.batch} --seq-len {args.seq_len} --repeats {args.repeats} --layers {args.layers}`. CPU: "
            f"{cpu_name()} (torch's CPU capability {torch.backends.cpu.get_cpu_capability()}), torch "
            f"{torch.__version__}. One `recover --method full` step of a SmolLM2-135M-shaped model ({args.layers} "
            f"layers, random weights) on {args.batch} x {args.seq_len} tokens, median of {args.repeats}, precisions "
            "alternating.",
            "",
            "| | float32 | `--amp bfloat16` | bfloat16 / float32 |",
            "|---|---:|---:|---:|",
            f"| one distillation step (s) | {step['float32']:.2f} | {step['bfloat16']:.2f} | "
            f"{step['bfloat16'] / step['float32']:.2f}x |",
            f"| one product 2048x576 by 576x1536 (ms) | {1e3 * product['float32']:.1f} | "
            f"{1e3 * product['bfloat16']:.1f} | {product['bfloat16'] / product['float32']:.2f}x |",
            "",
            f"`recover --amp bfloat16` here notes: {note}" if note else "`recover --amp bfloat16` notes nothing here.",
        ]
    )
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
