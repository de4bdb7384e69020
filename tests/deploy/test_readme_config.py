"""The README's configuration reference lists exactly the variables the code reads, with their defaults.

Each service's table (plus the "Every service" one) must name every field of the service's settings
class as ``JANUS_<FIELD>``, and nothing the service does not read; a numeric or non-empty default in the
table must equal the class's. Services read the environment only through their settings, so a
renamed or dropped variable cannot linger in the documentation; the local stack's own variables must
occur in the tools' source.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from services.gateway.service import GatewayService
from services.gateway.settings import GatewaySettings
from services.metering.service import MeteringService
from services.metering.settings import MeteringSettings
from services.router.service import RouterService
from services.router.settings import RouterSettings
from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings
from shared.settings import PREFIX, CommonSettings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SERVICES: dict[str, tuple[type[CommonSettings], int]] = {
    "Gateway": (GatewaySettings, GatewayService.default_ops_port),
    "Router": (RouterSettings, RouterService.default_ops_port),
    "Worker": (WorkerSettings, WorkerService.default_ops_port),
    "Metering": (MeteringSettings, MeteringService.default_ops_port),
}
COMMON = "Every service"
TOOLS = "Local stack and tools"
_ROW = re.compile(r"^\| `(JANUS_[A-Z0-9_]+)` \| ([^|]*) \|", re.M)
_CODE = re.compile(r"`([^`]*)`")


def tables(readme: str = README) -> dict[str, dict[str, str]]:
    """{section title: {variable: default cell}} for the ### sections of ## Configuration."""
    start = readme.index("\n## Configuration\n")
    end = readme.index("\n## ", start + 1)
    out: dict[str, dict[str, str]] = {}
    for block in readme[start:end].split("\n### ")[1:]:
        title = block.split("\n", 1)[0].split(" (", 1)[0].strip()
        rows = _ROW.findall(block)
        names = [n for n, _ in rows]
        assert len(names) == len(set(names)), f"{title}: a variable is listed twice"
        out[title] = {n: cell.strip() for n, cell in rows}
    return out


TABLES = tables()


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def fields(cls: type[msgspec.Struct]) -> dict[str, object]:
    inst = cls()
    return {env_name(f): getattr(inst, f) for f in cls.__struct_fields__}


def shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()  # as written in the environment
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def test_the_sections_are_there() -> None:
    assert set(TABLES) >= {COMMON, TOOLS, *SERVICES}
    assert all(TABLES[t] for t in (COMMON, TOOLS, *SERVICES))


def test_every_service_table_holds_exactly_the_common_settings() -> None:
    assert set(TABLES[COMMON]) == set(fields(CommonSettings))


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_table_matches_its_settings(service: str) -> None:
    cls, _ = SERVICES[service]
    own = fields(cls)
    documented = {**TABLES[COMMON], **TABLES[service]}
    missing = set(own) - set(documented)
    assert not missing, f"{service}: settings missing from the README: {sorted(missing)}"
    assert set(TABLES[service]) <= set(own), f"{service}: documented but not settings of the service"


def default_mismatches(service: str, tabs: dict[str, dict[str, str]]) -> list[str]:
    cls, ops_port = SERVICES[service]
    own = fields(cls)
    out = []
    for table in (tabs[COMMON], tabs[service]):
        for name, cell in table.items():
            if name not in own:
                continue
            default = own[name]
            if name == "JANUS_OPS_PORT":  # 0 in the class: each service has its own port
                if f"{ops_port} {service.lower()}" not in cell:
                    out.append(f"{name}: {cell!r} does not give {ops_port} for the {service.lower()}")
                continue
            if default in ("", None):
                continue  # free text says what an empty value means
            code = _CODE.search(cell)
            if code is None or code.group(1) != shown(default):
                out.append(f"{name}: README says {cell!r}, the code {shown(default)}")
    return out


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_documented_defaults_are_the_codes(service: str) -> None:
    assert default_mismatches(service, TABLES) == []


def test_a_wrong_default_is_caught() -> None:
    row = "| `JANUS_MAX_TOKEN_BYTES` | `8192` |"
    assert row in README
    changed = tables(README.replace(row, "| `JANUS_MAX_TOKEN_BYTES` | `4096` |"))
    assert default_mismatches("Gateway", changed) == [
        "JANUS_MAX_TOKEN_BYTES: README says '`4096`', the code 8192"
    ]
    changed = tables(README.replace("9102 worker", "9109 worker"))
    assert [m.split(":")[0] for m in default_mismatches("Worker", changed)] == ["JANUS_OPS_PORT"]


def test_tool_variables_are_read_by_the_tools() -> None:
    tools = "\n".join(p.read_text() for p in (ROOT / "tools").rglob("*.py"))
    for name in TABLES[TOOLS]:
        assert f'"{name}"' in tools, f"{name} is documented for the tools but they do not read it"


def test_the_hs256_minimum_is_stated() -> None:
    from services.gateway import jwt_verify

    minimum = jwt_verify._MIN_SECRET_BYTES
    (row,) = [line for line in README.splitlines() if line.startswith("| `JANUS_JWT_SECRET` | empty |")]
    assert f"at least {minimum} bytes" in row
