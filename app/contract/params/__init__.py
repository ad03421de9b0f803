"""Parameter models of every method, one module per family.

Each family module defines ``SPECS: list[MethodSpec]``. ``app.contract.methods`` collects them.
These models are the single source of truth for names, defaults, bounds and documentation of
method parameters: the gateway validates requests with them (unknown keys are refused) and
publishes their JSON schema at ``GET /v1/methods``; the worker passes the validated values to
the explainer function as keyword arguments (a test checks that the two agree).
"""
