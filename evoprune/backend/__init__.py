"""The LLM side: loading, importance scoring, masked evaluation and physical pruning."""
