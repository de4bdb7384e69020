"""The catalog (providers, deployments, models, prices) and the plans, decoded from YAML by msgspec.

Both are read from files the settings name (``JANUS_CATALOG``, ``JANUS_PLANS``), with the offline
defaults in ``config/``. A bad file fails at startup with the path of the bad field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from shared import subjects

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CATALOG = ROOT / "config" / "catalog.yaml"
DEFAULT_PLANS = ROOT / "config" / "plans.yaml"

Capability = Literal["streaming", "tools", "json", "vision", "embeddings"]


class Deployment(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    base_url: str = ""
    api_key_env: str = ""  # the *name* of the environment variable holding the key
    weight: float = 1.0
    region: str = ""  # for providers that sign per region (Bedrock)
    options: dict[str, str] = {}
    # upstream calls one worker pod makes to this deployment at once (0: only the provider's cap);
    # for an upstream with a concurrency quota of its own, or one whose slowness should not take
    # the provider's whole share
    max_concurrency: int = 0


class Provider(msgspec.Struct, forbid_unknown_fields=True):
    id: str  # also the worker pool's subject token
    kind: Literal["fake", "openai_compat", "anthropic", "gemini", "bedrock", "ollama", "cohere"]
    deployments: list[Deployment]
    options: dict[str, str] = {}
    # users may register their own key for it (PUT /v1/byok/{id}): only a provider that takes a key
    # at all, on every deployment; a keyless one (a self-hosted Ollama) would serve for free
    byok: bool = False
    # upstream calls one worker pod makes to this provider at once (0: JANUS_PROVIDER_MAX_CONCURRENCY),
    # so a provider that hangs fills its own share, never the calls of the others
    max_concurrency: int = 0


class Price(msgspec.Struct, forbid_unknown_fields=True):
    """USD per 1M tokens."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None  # defaults to ``input`` when absent


class Defaults(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Sampling parameters a model is served with when the client's request leaves them out."""

    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None


class Serving(msgspec.Struct, forbid_unknown_fields=True):
    deployment: str
    model: str  # the provider's name for the model
    weight: float | None = None  # overrides the deployment's weight for this model


class Model(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    owned_by: str
    serve: list[Serving]
    kind: Literal["chat", "embeddings"] = "chat"
    aliases: list[str] = []
    created: int = 1712100000
    context_window: int = 128_000
    max_output_tokens: int = 16_384
    capabilities: list[Capability] = msgspec.field(default_factory=lambda: ["streaming"])
    price: Price = msgspec.field(default_factory=Price)
    quality: int = 1  # quality class used by the auto policy: higher is stronger
    dimensions: int | None = None  # embeddings
    response_name: str | None = None  # what responses call it (defaults to ``id``)
    defaults: Defaults | None = None

    @property
    def name_in_responses(self) -> str:
        return self.response_name or self.id


class Catalog(msgspec.Struct, forbid_unknown_fields=True, dict=True):
    providers: list[Provider]
    models: list[Model]

    def __post_init__(self) -> None:
        self.provider_by_id: dict[str, Provider] = {}
        self.deployment_by_id: dict[str, tuple[Provider, Deployment]] = {}
        self.model_by_name: dict[str, Model] = {}
        for i, p in enumerate(self.providers):
            if p.id in self.provider_by_id:
                raise msgspec.ValidationError(f"duplicate provider id {p.id!r} - at `$.providers`")
            if problem := subjects.provider_id_problem(p.id):
                raise msgspec.ValidationError(f"provider id {problem} - at `$.providers[{i}].id`")
            if p.byok and (p.kind == "fake" or not all(d.api_key_env for d in p.deployments)):
                raise msgspec.ValidationError(
                    f"provider {p.id!r} takes no API key on every deployment, so it cannot take users' "
                    f"keys - at `$.providers[{i}].byok`"
                )
            self.provider_by_id[p.id] = p
            for d in p.deployments:
                if d.id in self.deployment_by_id:
                    raise msgspec.ValidationError(f"duplicate deployment id {d.id!r} - at `$.providers`")
                self.deployment_by_id[d.id] = (p, d)
        for i, m in enumerate(self.models):
            for name in (m.id, *m.aliases):
                if name in self.model_by_name:
                    raise msgspec.ValidationError(f"duplicate model name {name!r} - at `$.models[{i}]`")
                self.model_by_name[name] = m
            for j, s in enumerate(m.serve):
                if s.deployment not in self.deployment_by_id:
                    raise msgspec.ValidationError(
                        f"unknown deployment {s.deployment!r} - at `$.models[{i}].serve[{j}].deployment`"
                    )

    def model(self, name: str) -> Model | None:
        return self.model_by_name.get(name)

    def takes_user_keys(self, provider: str) -> bool:
        p = self.provider_by_id.get(provider)
        return p is not None and p.byok

    def byok_providers(self) -> list[str]:
        return [p.id for p in self.providers if p.byok]


class SessionPool(msgspec.Struct, forbid_unknown_fields=True):
    credits: int
    hours: float


class WeeklyPool(msgspec.Struct, forbid_unknown_fields=True):
    credits: int
    reset_weekday: int = 0  # 0 = Monday (datetime.weekday())
    reset_time: str = "00:00"  # HH:MM, UTC


class TokenQuota(msgspec.Struct, forbid_unknown_fields=True):
    input: int | None = None
    output: int | None = None


class Plan(msgspec.Struct, forbid_unknown_fields=True):
    session: SessionPool
    weekly: WeeklyPool
    default_model: str  # what "auto" picks when nothing better is known
    auto_models: list[str] = []  # the models "auto" may choose for this tier
    monthly_tokens: TokenQuota = msgspec.field(default_factory=TokenQuota)
    requests_per_minute: int | None = None


class Plans(msgspec.Struct, forbid_unknown_fields=True):
    plans: dict[str, Plan]
    default_plan: str = "free"

    def get(self, name: str) -> Plan | None:
        return self.plans.get(name)


class ConfigError(Exception):
    """A configuration file or variable is wrong; the message names the file and the field."""


def _load(path: Path, typ: type) -> object:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return msgspec.yaml.decode(data, type=typ)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    p = Path(path or DEFAULT_CATALOG)
    cat = _load(p, Catalog)
    assert isinstance(cat, Catalog)
    return cat


def load_plans(path: str | os.PathLike[str] | None = None, catalog: Catalog | None = None) -> Plans:
    p = Path(path or DEFAULT_PLANS)
    plans = _load(p, Plans)
    assert isinstance(plans, Plans)
    if plans.default_plan not in plans.plans:
        raise ConfigError(f"{p}: default_plan {plans.default_plan!r} is not a plan - at `$.default_plan`")
    if catalog is not None:
        for name, plan in plans.plans.items():
            for field, models in (("default_model", [plan.default_model]), ("auto_models", plan.auto_models)):
                for m in models:
                    if catalog.model(m) is None:
                        raise ConfigError(f"{p}: unknown model {m!r} - at `$.plans.{name}.{field}`")
    return plans
