"""Recovery training of an export: knowledge distillation from the dense model it was pruned from.

Every structured-pruning recipe ends with a short training of the pruned model (LLM-Pruner:
LoRA; SliceGPT: fine-tuning; Minitron: distillation). ``recover`` does that for an evoprune
export and writes an export again (same shapes, loads with plain transformers and with
``evoprune.load_pruned``), with the recovery recorded in its ``plan.json``.

Modules: ``settings`` (``RecoverySettings``, ``RecoveryResult``), ``training`` (loss, window order, checkpoints),
``inputs`` (plan, teacher, windows, the store record), ``run`` (``recover``), ``finalists``
(``recover_finalists``: a search's best configurations ranked after recovery, as DarwinLM selects).

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
  same device and thread count). The checkpoint is removed when the export is written. One
  recovery at a time per ``OUT``: it holds an OS lock on ``OUT.lock`` beside it from the check
  of ``OUT`` until the export is written, and a second one is refused in one line.
"""
