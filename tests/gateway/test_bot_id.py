"""X-Bot-ID is the free-form application name the product documents: any printable text up to 128
bytes reaches metering as sent; anything else is a clear 400, never a 500."""

from __future__ import annotations

import aiohttp
import pytest

from services.gateway.app import bot_id
from shared.errors import InvalidRequest
from tests.gateway import fakes as F
from tests.gateway.conftest import Gateway, auth
from tests.gateway.test_flow import CHAT, assert_error

ACCEPTED = ["my-bot", "bad bot id!", "Support Bot (été) #2", "客服机器人", "a/b?c=d&e", "x" * 128, "é" * 64]
REFUSED = [
    "x" * 129,
    "é" * 65,
    "tab\there",
    "bell\x07",
    "nul\x00",
    "del\x7f",
    "line\u2028sep",
    "bad\udcffutf8",
]


@pytest.mark.parametrize("name", ACCEPTED)
def test_printable_text_up_to_128_bytes_is_a_bot_id(name: str) -> None:
    assert bot_id(name) == name


@pytest.mark.parametrize("name", REFUSED)
def test_longer_or_unprintable_is_refused(name: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        bot_id(name)
    assert err.value.status == 400 and err.value.param == "X-Bot-ID" and err.value.code == "invalid_bot_id"


async def test_the_gateway_passes_a_free_form_bot_id_and_refuses_a_long_one(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    await fakes.start({"pa": F.answer})
    name = "Support Bot (été) #2"
    async with http.post(
        gateway.url + "/v1/chat/completions", json=CHAT, headers={**auth(), "X-Bot-ID": name}
    ) as r:
        assert r.status == 200, await r.text()
        await r.read()
    assert fakes.reserves[-1].bot == name
    async with http.post(
        gateway.url + "/v1/chat/completions", json=CHAT, headers={**auth(), "X-Bot-ID": "x" * 129}
    ) as r:
        assert r.status == 400
        assert_error(await r.read(), "invalid_bot_id")
