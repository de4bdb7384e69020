"""Print a dev JWT: ``python -m tools.token --user alice --plan pro [--email a@example.com]``.

Signed HS256 with ``JANUS_JWT_SECRET`` (the local stack's dev secret when unset). Claims: ``sub``
(user id), ``email``, ``plan`` (tier), ``iat``, ``exp``.
"""

from __future__ import annotations

import argparse
import os
import time

import jwt

from services.gateway.jwt_verify import DEV_JWT_SECRET as DEV_SECRET


def make_token(
    user: str,
    plan: str,
    email: str | None = None,
    *,
    secret: str | None = None,
    ttl_seconds: int = 30 * 24 * 3600,
    **extra: object,
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "plan": plan, "iat": now, "exp": now + ttl_seconds}
    if email:
        claims["email"] = email
    claims.update(extra)
    return jwt.encode(claims, secret or os.environ.get("JANUS_JWT_SECRET") or DEV_SECRET, algorithm="HS256")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--user", required=True)
    ap.add_argument("--plan", default="free")
    ap.add_argument("--email", default=None)
    ap.add_argument("--ttl", type=int, default=30 * 24 * 3600, help="seconds until the token expires")
    a = ap.parse_args()
    print(make_token(a.user, a.plan, a.email or None, ttl_seconds=a.ttl))


if __name__ == "__main__":
    main()
