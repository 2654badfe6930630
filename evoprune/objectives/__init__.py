"""What a configuration is worth and how configurations compare, with or without a search.

- ``spec``: the objectives (``ppl``, ``kl``, ``acc:TASK``, ``params``, ``flops``, ``memory``,
  ``latency``) on their minimised scales, budgets as constraints, ``CostEvaluator``
- ``cost``: the cost model (exact parameters and FLOPs, memory, a measured latency table)
- ``pareto``: fronts of evaluated configurations, choice by fidelity, knee, hypervolume
"""
