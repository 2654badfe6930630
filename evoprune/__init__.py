"""evoprune: decide how much to prune in each layer of a pretrained causal language model.

The Python API is what the CLI calls::

    import evoprune
    result = evoprune.search("smollm2-135m", "builtin", "runs.db", evoprune.SearchSettings(evals=24))
    with evoprune.Store("runs.db") as store:
        for point in evoprune.pareto_front(store, result.run):
            print(point.params_fraction, point.metrics["ppl"], point.levels)
"""

__version__ = "0.1.0"

from evoprune.backend.pruner import PruningBackend
from evoprune.backend.settings import BackendSettings
from evoprune.engine.run import ActiveLearningSearch, SearchResult, prepare_backend, search
from evoprune.engine.settings import SearchSettings
from evoprune.errors import EvopruneError
from evoprune.objectives.pareto import ParetoPoint, pareto_front
from evoprune.pruned.export import export_from_store, export_pruned, load_pruned
from evoprune.recovery.run import recover
from evoprune.recovery.settings import RecoveryResult, RecoverySettings
from evoprune.space import ArchSpec, SearchSpace
from evoprune.store import Store

__all__ = [
    "ActiveLearningSearch",
    "ArchSpec",
    "BackendSettings",
    "EvopruneError",
    "ParetoPoint",
    "PruningBackend",
    "RecoveryResult",
    "RecoverySettings",
    "SearchResult",
    "SearchSettings",
    "SearchSpace",
    "Store",
    "export_from_store",
    "export_pruned",
    "load_pruned",
    "pareto_front",
    "prepare_backend",
    "recover",
    "search",
]
