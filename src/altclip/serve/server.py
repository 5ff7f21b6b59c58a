"""Running the app: where it may listen, and uvicorn."""

from __future__ import annotations

import ipaddress

from fastapi import FastAPI

from altclip.errors import InputError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may well resolve to a public address
        return False


def check_bind(host: str, token: str | None, untokened: tuple[str, ...] = (), allow_untokened: bool = False) -> None:
    """Anything but loopback needs a token: the API reads uploads and lists the collection's paths. Endpoints
    whose clients send no token (``untokened``: immich's, clip-retrieval's) go beyond loopback only when
    ``allow_untokened`` says so, a choice the command line names (``--compat-without-token``)."""
    if not is_loopback(host) and not token:
        raise InputError(
            f"--host {host} would let other machines reach the server; pass --token (every /api/* request must "
            f"then send Authorization: Bearer TOKEN), or keep the default --host 127.0.0.1"
        )
    if untokened and not is_loopback(host) and not allow_untokened:
        raise InputError(
            f"--host {host} would let other machines reach {' and '.join(untokened)} without any token (their "
            "clients send none): pass --compat-without-token to allow that, on a network you trust, or keep "
            "--host 127.0.0.1"
        )


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
