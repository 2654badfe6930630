"""Where real evaluations run: ``executors`` (the ``Executor`` contract, ``local``, the registry)
and ``ray_executor`` (``--executor ray``: one Ray actor per worker)."""
