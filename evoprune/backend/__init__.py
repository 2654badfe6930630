"""The LLM side: loading, importance scoring, masked evaluation and physical pruning, behind the
``PruningBackend`` facade (``pruner``); ``synthetic`` is a stand-in backend for benchmarks of the engine."""
