"""Where real evaluations run: ``executors`` (the ``Executor`` contract, ``local``, the registry),
``ray_executor`` (``--executor ray``: the driver, one Ray actor per worker) and ``ray_workers`` (the
actor and what it inherits from the driver)."""
