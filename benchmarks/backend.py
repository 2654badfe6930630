"""Backend figures on SmolLM2-135M: evaluation overhead of the masks, exactness of exports, and the
measured speed and size of a pruned export next to the dense model and the cost model's prediction.

    python benchmarks/backend.py        # writes the "Backend" section of BENCHMARKS.md
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._markdown import write_section  # noqa: E402
from evoprune.backend.pruner import load_backend  # noqa: E402
from evoprune.backend.settings import BackendSettings  # noqa: E402
from evoprune.engine.design import structured_families  # noqa: E402
from evoprune.objectives.cost import CostModel, LatencyTable, measure_model  # noqa: E402
from evoprune.pruned.export import export_pruned, load_pruned  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    settings = BackendSettings(eval_tokens=1024, calib_tokens=2048, seq_len=256)
    backend = load_backend("smollm2-135m", "builtin", settings)
    model, windows, space = backend.loaded.model, backend.eval_windows, backend.space
    tokens = windows.numel()

    def dense_forward():
        with torch.inference_mode():
            for start in range(0, len(windows), settings.batch_size):
                model(input_ids=windows[start : start + settings.batch_size])

    smooth = structured_families(space)["smooth"]
    fractions = space.params_matrix(np.array(smooth)) / space.arch.dense_params()
    x = smooth[int(np.argmin(np.abs(fractions - 0.70)))]
    repeats = 5
    t_dense = timed(dense_forward, repeats)
    t_masked_dense = timed(lambda: backend.evaluate(space.lower), repeats)
    t_masked_pruned = timed(lambda: backend.evaluate(x), repeats)

    tokens_in = windows[:1]
    masks = backend._masks()
    masks.apply(backend.plan(x))
    with torch.inference_mode():
        masked_logits = model(input_ids=tokens_in).logits
    masks.reset()
    with tempfile.TemporaryDirectory() as tmp:
        result = export_pruned(backend, x, Path(tmp) / "export")
        pruned, _ = load_pruned(Path(tmp) / "export")
        with torch.inference_mode():
            export_logits = pruned(input_ids=tokens_in).logits
        max_diff = float((masked_logits - export_logits).abs().max())
        m_dense = measure_model(model, seq_len=256, repeats=15)
        m_pruned = measure_model(pruned, seq_len=256, repeats=15)
    table = LatencyTable.measure(model.config, space, seq_len=256, repeats=15)
    cost = CostModel(space)
    pred_dense, pred_pruned = table.predict_ms(space, space.lower), table.predict_ms(space, x)
    c_dense, c_pruned = cost.cost(space.lower), cost.cost(x)
    mib = 2**20
    body = f"""
Command: `python benchmarks/backend.py` (SmolLM2-135M, float32, {torch.get_num_threads()} torch threads on this
machine's 2 cores; {tokens} evaluation tokens in windows of 256, batches of {settings.batch_size}).

**Evaluation overhead of the masks.** Plain dense forward over the evaluation windows: {t_dense:.2f} s
({tokens / t_dense:.0f} tokens/s). A configuration evaluated through the masks (forward, perplexity and KL to
the cached dense top-{settings.kl_top_k}): the dense configuration {t_masked_dense:.2f} s
({tokens / t_masked_dense:.0f} tokens/s, **{t_dense / t_masked_dense:.0%} of the plain forward's
throughput**); the pruned configuration below {t_masked_pruned:.2f} s ({tokens / t_masked_pruned:.0f}
tokens/s, {t_dense / t_masked_pruned:.0%}): the index views run matmuls of the pruned shapes, so pruned
configurations evaluate faster than the dense model. Medians of {repeats} runs.

**Exactness.** The smooth depth profile nearest 70% of the parameters
({result.params_fraction:.1%} kept, {result.params / 1e6:.2f}M parameters): the masked model's logits and
the exported model's logits reloaded from disk differ by at most {max_diff:.2e} (float32).
`tests/test_real_model.py` checks the same in a fresh process that can import only torch and
transformers, and that the parameter count the cost model predicts equals the reloaded model's.

**Speed and size of the export** (forward of 1 x 256 tokens, median of 15; weight memory from the
parameters):

| model | parameters | weight memory | measured latency | predicted latency (table) | FLOPs/token (2k context) |
|---|---|---|---|---|---|
| dense | {m_dense.params / 1e6:.2f}M | {m_dense.weight_bytes / mib:.1f} MiB | {m_dense.latency_ms:.1f} ms | {pred_dense:.1f} ms | {c_dense.flops_per_token / 1e6:.0f}M |
| pruned export | {m_pruned.params / 1e6:.2f}M | {m_pruned.weight_bytes / mib:.1f} MiB | {m_pruned.latency_ms:.1f} ms | {pred_pruned:.1f} ms | {c_pruned.flops_per_token / 1e6:.0f}M |
| ratio | {m_pruned.params / m_dense.params:.2f} | {m_pruned.weight_bytes / m_dense.weight_bytes:.2f} | {m_pruned.latency_ms / m_dense.latency_ms:.2f} | {pred_pruned / pred_dense:.2f} | {c_pruned.flops_per_token / c_dense.flops_per_token:.2f} |

The cost model's parameter count equals the export's exactly ({c_pruned.params} vs {m_pruned.params}).
The latency table times one real decoder layer per attention and MLP width (plus the fixed embedding /
LM-head part and the per-layer overhead) and sums them; measured and predicted latency are taken in
the same run. Latency figures are sensitive to other load on these shared 2-core machines.
"""
    write_section("Backend: evaluation overhead, exactness, export speed and size", body)
    print(body)


if __name__ == "__main__":
    main()
