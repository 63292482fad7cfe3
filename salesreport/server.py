"""What ``serve`` starts: the HTTPS files it checks, the address it binds, and Granian."""

from __future__ import annotations

import errno
import socket
import ssl
from pathlib import Path


class ServeError(Exception):
    """A bad ``serve`` argument: its message is printed, and serve exits with 2."""


def _no_password() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal for an encrypted key.
    return b""


def tls_files(cert: str | None, key: str | None) -> tuple[Path, Path] | None:
    """The certificate and key to serve HTTPS with, or None for plain HTTP."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ServeError("serve: --tls-cert and --tls-key go together: give both (HTTPS), or neither (plain HTTP)")
    paths = Path(cert), Path(key)
    for flag, path in zip(("--tls-cert", "--tls-key"), paths, strict=True):
        try:
            path.read_bytes()
        except OSError as exc:
            raise ServeError(f"serve: cannot read {flag} {path}: {exc.strerror or exc}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(paths[0], paths[1], _no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ServeError(f"serve: --tls-key {key} is not the private key of --tls-cert {cert}") from None
        raise ServeError(
            f"serve: --tls-cert {cert} and --tls-key {key} are not a PEM certificate and its unencrypted "
            f"private key ({exc.reason or exc})"
        ) from None
    return paths


def granian(address: str, port: int, workers: int, tls: tuple[Path, Path] | None) -> None:
    """Serve the app with Granian until it is stopped (SIGTERM, SIGINT)."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings

    Granian(
        "salesreport.api:create_app",
        factory=True,
        address=address,
        port=port,
        interface=Interfaces.ASGI,
        # uvloop, not asyncio's own loop: asyncpg's round trips cost half the CPU (BENCHMARKS.md, "Notes").
        loop=Loops.uvloop,
        workers=workers,
        http=HTTPModes.http1,
        backlog=2048,
        http1_settings=HTTP1Settings(header_read_timeout=10_000),
        # A worker that dies (killed by the kernel for memory, a crash in native code) is started again;
        # without this one dead worker would stop the whole server, the other workers with it.
        respawn_failed_workers=True,
        log_access=False,
        ssl_cert=tls[0] if tls else None,
        ssl_key=tls[1] if tls else None,
    ).serve()


def bind_address(host: str, port: int) -> tuple[str, str | None]:
    """The IP address to serve ``host`` on (Granian takes addresses, not names),
    and why ``host:port`` cannot be served on, or None.

    Granian binds with SO_REUSEPORT, so a second server on a port in use would
    start, and the kernel would split the requests between the two (perhaps
    two databases). A bind without it tells.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        return host, str(exc)
    family, kind, proto, _name, address = infos[0]
    ip = str(address[0])
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past connections in TIME_WAIT do not count
        try:
            probe.bind(address)
        except OSError as exc:
            in_use = exc.errno == errno.EADDRINUSE
            return ip, "the address is in use (is another server running?)" if in_use else str(exc)
    return ip, None
