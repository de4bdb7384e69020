"""Every Janus program's settings together: the ``JANUS_*`` names a start-up checks its environment
against.

One list for all of them, not each service's own: the image and the shared ConfigMap set some
variables for every service (``JANUS_HOST``, ``JANUS_PLANS``), and a name another service reads is
no typo. Each service still reads only its own class (``Service.settings_cls``).
"""

from __future__ import annotations

from services.gateway.settings import GatewaySettings
from services.metering.settings import MeteringSettings
from services.router.settings import RouterSettings
from services.worker.settings import WorkerSettings
from shared.settings import CommonSettings, variable_names


class CliSettings(CommonSettings, kw_only=True):
    """The operator CLI (``janus``): the common NATS settings and plans, and the BYOK key it seals with."""

    byok_key: str = ""


SETTINGS: tuple[type[CommonSettings], ...] = (
    GatewaySettings,
    RouterSettings,
    WorkerSettings,
    MeteringSettings,
    CliSettings,
)
KNOWN = variable_names(*SETTINGS)
