"""Choosing from a store: ``plan`` (the best evaluated configuration under a budget, with more
evaluations on request) and ``compare`` (methods side by side at one budget). Both may run
searches, so they sit above the engine; the fronts they read are ``evoprune.objectives.pareto``."""
