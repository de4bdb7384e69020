"""A stand-in for another team's benchmark section, used to test the plug-in hook."""

from __future__ import annotations

import sys


async def run() -> dict[str, object]:
    print("sample section ran")
    return {"decisions_per_second": 123.0, "argv": list(sys.argv)}
