"""Reports on a store: ``report`` (the HTML report), ``plots`` (its figures), ``surrogate_report``
(cross-validated surrogate ranking on a run's pairs), ``search_predictions`` (the search's own
predictions against its measurements) and ``prediction_metrics`` (the figures both use)."""
