"""Gateway settings; each field ``foo`` is read from ``JANUS_FOO``."""

from __future__ import annotations

from shared.settings import CommonSettings


class GatewaySettings(CommonSettings, kw_only=True):
    host: str = "127.0.0.1"  # containers set 0.0.0.0
    port: int = 8080
    max_body_bytes: int = 4 * 1024 * 1024
    default_max_tokens: int = 4096  # the output cap per choice held and sent when a client sets none
    # a caller whose budget cannot hold the full cap gets a shorter one, down to this many tokens
    # per choice (finish_reason "length" tells them); below it the request is refused with 429
    min_output_tokens: int = 256
    # the worker's first frame (its Accepted, or the answer itself when that is quicker) comes within this
    first_frame_timeout_seconds: float = 5.0
    stall_timeout_seconds: float = 30.0  # between frames; workers heartbeat well inside it
    # a stream waiting this long for its first token (or silent this long) gets an SSE comment;
    # below the 30-60 s idle timeout of common cloud load balancers
    sse_keepalive_seconds: float = 15.0
    max_attempts: int = 3
    route_timeout_seconds: float = 2.0
    reserve_timeout_seconds: float = 2.0
    usage_timeout_seconds: float = 2.0
    # a settlement JetStream did not acknowledge is retried until this; keep it far below metering's
    # de-duplication window (20 min), which is what makes the retries safe
    settle_deadline_seconds: float = 60.0
    # settlements finishing within this many ms of each other go as one message of at most
    # settle_bundle_max (1: each alone, the form metering read before bundles; see the README's
    # "Rollback"). Off the request path; the hold becomes the charge up to this much later.
    settle_bundle_max: int = 64
    settle_bundle_ms: float = 20.0
    cancel_wait_seconds: float = 5.0  # after a cancel, how long to wait for the worker's usage
    # a write to a client that does not read for this long ends the request (499), charged for
    # what was produced: a stalled reader must not keep a request, its worker and its hold alive
    stream_write_timeout_seconds: float = 30.0
    # embeddings: vectors x dimensions one request may ask for (a 413 beyond, before any upstream
    # call): what keeps four concurrent requests inside a worker's and a gateway's memory limit
    max_embedding_values: int = 1_572_864  # 1,024 x 1,536 (512 x 3,072)
    # bytes of one worker reply the gateway holds (queued frames and a buffered answer's slices); a
    # worker sending more is cut off with a 502, however it misbehaves
    max_reply_bytes: int = 48 * 1024 * 1024
    # credit leases (services/gateway/leases.py): the most requests one lease of a user is asked to
    # hold (0: every request is reserved with metering), and how long a lease may sit unused before
    # it goes back, so its credits are never parked away from the user's other gateways for longer.
    # A lease is asked for about ten seconds of the user's recent requests; 256 keeps that up to
    # about 25 requests a second, and a busier user's lease still lasts a while (128 ms at 2,000 a
    # second) instead of a reserve and a budget write every few dozen requests. Metering grants at
    # most a quarter of what each pool has left, whatever is asked
    lease_requests: int = 256
    lease_idle_seconds: float = 2.0
    # JANUS_BYOK_KEY, the worker's key for users' own provider keys: lets PUT /v1/byok seal them.
    # Never logged; empty: keys can be listed and deleted over HTTP but not stored.
    byok_key: str = ""

    # --- authentication: at least one of secret, public keys or JWKS URL must be set
    jwt_secret: str = ""  # HS256
    jwt_public_keys: str = ""  # RS*/PS*/ES*: PEM file paths, comma-separated
    jwt_jwks_url: str = ""  # RS*/PS*/ES*: keys fetched and cached by kid
    jwt_issuer: str = ""  # when set, the 'iss' claim must equal it
    jwt_audience: str = ""  # when set (comma-separated), the 'aud' claim must name one of them
    jwt_leeway_seconds: float = 10.0  # clock skew allowed on exp, nbf and iat
    jwks_refresh_seconds: float = 600.0  # background refresh of the JWKS
    jwks_min_refresh_seconds: float = 30.0  # at most one fetch per interval for unknown kids
    jwks_timeout_seconds: float = 5.0
    max_token_bytes: int = 8192  # a longer bearer token is refused before any parsing
    auth_cache_size: int = 10_000
    # a verified JWT is trusted from the cache at most this long, then its signature is checked again
    # (against the key set of that moment: a key the identity provider withdrew stops working)
    auth_cache_seconds: float = 300.0
    # a development stack (make run, compose, the dev overlay): the published development JWT secret
    # is accepted only then
    dev_stack: bool = False
    # a JWT whose "roles" list (or "role" string) names this may read the operator view
    # (GET /v1/admin/overview); empty: nobody may
    admin_role: str = "janus-admin"
    api_key_cache_seconds: float = 30.0  # a found key; revocations evict it at once
    api_key_negative_cache_seconds: float = 2.0  # an unknown key

    # --- HTTPS served by the gateway itself (when nothing in front of it ends TLS) and browsers
    tls_cert: str = ""  # PEM certificate chain file; with tls_key, the gateway speaks only https
    tls_key: str = ""  # PEM private key file
    http_redirect_port: int = 0  # with TLS: a plain-HTTP listener answering 308 to https; 0: none
    cors_origins: str = ""  # comma-separated origins browsers may call from ("*": any); empty: no CORS

    # --- the HTTP edge against hostile or slow clients
    max_header_bytes: int = 16 * 1024  # one header line (so an 8 KiB token still reaches auth)
    max_headers: int = 100
    header_timeout_seconds: float = 10.0  # from a request's first byte to the end of its headers
    body_timeout_seconds: float = 60.0  # to read the whole body once the handler asks for it
    keepalive_timeout_seconds: float = 75.0  # an idle keep-alive connection is closed after this
    lingering_seconds: float = 2.0  # reading an unread body's rest before closing
