"""The tests' own kit: NATS cluster helpers, metric parsing, programs some tests drive.

The processes themselves come from ``tools.localnats`` and ``tools.localstack``, the same code that
``make run`` and the benchmark start, so the tests run what users run.
"""
