"""A client that sends its bytes one at a time: for the tests of a server's bounds on slow clients."""

from __future__ import annotations

import socket
import time


def trickle(sock: socket.socket, data: bytes, bound: float, pause: float = 0.05) -> bytes:
    """Send ``data`` a byte at a time, waiting up to ``pause`` for an answer after each, until the
    server answers, closes the connection, or ``bound`` seconds pass. Returns what it answered
    (nothing if it closed without a word); the socket is left open for the caller to read on."""
    start = time.monotonic()
    sock.settimeout(pause)
    raw = b""
    for b in data:
        try:
            sock.sendall(bytes([b]))
            raw += sock.recv(65536)
        except TimeoutError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            break
        if raw or time.monotonic() - start > bound:
            break
    return raw
