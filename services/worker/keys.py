"""Provider API keys, by deployment, as the catalog names them (``api_key_env: OPENAI_API_KEY``).

Read from the environment, or, when ``JANUS_PROVIDER_KEYS_DIR`` is set, from the file of that name in
the directory (a mounted Kubernetes Secret: one file per key). Kubernetes replaces a mounted Secret's
files when the Secret changes, so the directory is checked every ``JANUS_PROVIDER_KEYS_REFRESH_SECONDS``
and a rotated key is used from its next call on, without a restart. Values are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from shared.catalog import Provider
from shared.logging import get_logger
from shared.settings import variable

log = get_logger("worker.keys")


class ProviderKeys:
    def __init__(self, providers: list[Provider], directory: str = "") -> None:
        self.names = {d.id: d.api_key_env for p in providers for d in p.deployments if d.api_key_env}
        self.dir = Path(directory) if directory else None
        self._keys: dict[str, str | None] = {}
        self._seen: dict[str, float] = {}  # variable -> mtime of its file when last read
        self._values: dict[str, str | None] = {}  # variable -> the key its file held then
        self._task: asyncio.Task[None] | None = None
        self.refresh()
        for deployment, var in self.names.items():
            if not self._keys.get(deployment):
                log.warning("api_key_missing", deployment=deployment, variable=var)

    def get(self, deployment: str) -> str | None:
        return self._keys.get(deployment)

    def _read(self, var: str) -> str | None:
        """The key in ``var``'s file (read again only when the file changed), else in the environment."""
        if self.dir is not None:
            path = self.dir / var
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                self._seen.pop(var, None)
            else:
                if self._seen.get(var) != mtime:
                    self._values[var] = path.read_text().strip() or None
                    self._seen[var] = mtime
                return self._values.get(var)
        return variable(var) or None

    def refresh(self) -> list[str]:
        """Read the keys again; returns the deployments whose key changed."""
        changed = []
        for deployment, var in self.names.items():
            key = self._read(var)
            if key != self._keys.get(deployment):
                self._keys[deployment] = key
                changed.append(deployment)
        return changed

    def start(self, interval: float) -> None:
        if self.dir is not None and interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._watch(interval))

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                changed = await asyncio.to_thread(self.refresh)
            except OSError as exc:
                log.warning("api_keys_unreadable", error=type(exc).__name__)
                continue
            if changed:
                # the deployments, never the values
                log.info("api_keys_reloaded", deployments=changed)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
