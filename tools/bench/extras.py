"""Other benchmarks that plug into the same report, loosely: each runs only if its module exists.

- ``tools.bench_metering``: the metering ledger's benchmark; its ``run()`` (preferred) or ``main()``.
- ``tools.eval_routing``: the router's decision-time benchmark, ``bench()``.
- ``tools.bench.floor``: what aiohttp and nats-py alone cost per request and per bus message on
  this machine, the floor under Janus's figures, ``run()``.

A section may be sync or async and may return anything JSON-like (a dict of figures is best); what
it returns lands under ``extras.<name>`` in ``bench-results/latest.json``. A missing module or
function is skipped with a printed note; a section that raises is recorded as its error, so one
broken section never costs the rest of the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import io
import sys
import traceback
from collections.abc import Callable
from typing import Any

import msgspec

# (section name, module, function names tried in order)
SECTIONS: list[tuple[str, str, tuple[str, ...]]] = [
    ("metering", "tools.bench_metering", ("run", "main")),
    ("routing", "tools.eval_routing", ("bench",)),
    ("floor", "tools.bench.floor", ("run",)),
]


def _find(module: str, names: tuple[str, ...]) -> tuple[Callable[[], Any] | None, str]:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return None, f"{module} not present"
        raise
    for name in names:
        fn = getattr(mod, name, None)
        if callable(fn):
            return fn, f"{module}.{name}"
    return None, f"{module} has none of {', '.join(names)}()"


def _call(fn: Callable[[], Any]) -> tuple[Any, str]:
    """Call with no arguments and an empty argv (a ``main()`` may parse sys.argv); keep its output."""
    saved = sys.argv
    sys.argv = [getattr(fn, "__module__", "bench")]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            result = fn()
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
    finally:
        sys.argv = saved
    return result, out.getvalue()


async def _await(aw: Any) -> Any:
    return await aw


def _jsonable(value: Any) -> Any:
    try:
        return msgspec.to_builtins(value, str_keys=True)
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def run_extras(only: set[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Run every present section; returns (results by section, printed notes)."""
    results: dict[str, Any] = {}
    notes: list[str] = []
    for section, module, names in SECTIONS:
        if only is not None and section not in only:
            continue
        try:
            fn, where = _find(module, names)
        except Exception as exc:  # a section that cannot even import is its owner's bug, not ours
            notes.append(f"extra {section}: import of {module} failed: {exc!r}")
            results[section] = {"error": repr(exc)}
            continue
        if fn is None:
            notes.append(f"extra {section}: skipped ({where})")
            continue
        print(f"running extra section {section} ({where}) ...", flush=True)
        try:
            value, printed = _call(fn)
        except SystemExit as exc:
            value, printed = {"exit": exc.code}, ""
        except Exception as exc:
            notes.append(f"extra {section}: {where} raised {exc!r}")
            results[section] = {"error": repr(exc), "traceback": traceback.format_exc()[-2000:]}
            continue
        entry: dict[str, Any] = {"source": where, "result": _jsonable(value)}
        if printed.strip():
            entry["output"] = printed[-4000:]
            print(printed.rstrip(), flush=True)
        results[section] = entry
    return results, notes
