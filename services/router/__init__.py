"""The router: catalog, plan-tier gating, smart routing for ``"model": "auto"``, ordered fallbacks
and a per-deployment health view. The policy is pure (``policy``, ``targets``, ``health``,
``scorer``, ``features``); ``service`` is the thin NATS edge."""
