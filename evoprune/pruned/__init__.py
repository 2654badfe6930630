"""A chosen allocation as a model: ``allocation`` (what ``--config`` names, and the plan file),
``export`` (physically pruned safetensors and ``load_pruned``), ``measure`` (time and weigh it),
``target`` and ``evaluate`` (task accuracy of a model, an export or stored configurations:
``evoprune evaluate``)."""
