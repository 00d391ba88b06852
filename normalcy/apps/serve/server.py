"""Start the service with uvicorn (what `normalcy serve` runs), with connection limits against slow clients.

uvicorn alone keeps a connection that never finishes its request headers open for ever, and counts it against
`limit_concurrency`: a few dozen such connections make every other client get 503. The protocol below closes a
connection whose headers are not complete within `header_timeout` seconds, and refuses more than
`max_client_connections` open connections from one client address. For production, put a reverse proxy in front
as well (docs/serve.md).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from normalcy.apps.serve.settings import ServeSettings

HEADER_TIMEOUT = 10.0  # seconds for a client to send complete request headers
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle keep-alive connection stays open
MAX_CLIENT_CONNECTIONS = 16  # open connections per client address
_TOO_MANY_BODY = b'{"detail":"too many open connections from this address; retry later"}'
TOO_MANY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(_TOO_MANY_BODY), _TOO_MANY_BODY))


def guarded_protocol(header_timeout: float = HEADER_TIMEOUT,
                     max_client_connections: int = MAX_CLIENT_CONNECTIONS) -> type[asyncio.Protocol]:
    """A uvicorn h11 protocol class with a request-header timeout and a per-client connection cap."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    if not header_timeout > 0 or max_client_connections < 1:
        raise ValueError("header_timeout must be > 0 and max_client_connections >= 1")
    open_per_client: Counter[str] = Counter()

    class GuardedH11Protocol(H11Protocol):
        """h11 protocol that drops slow-header connections and caps connections per client address."""

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._client_key = self.client[0] if self.client else ""
            open_per_client[self._client_key] += 1
            self._header_timer: asyncio.TimerHandle | None = None
            if open_per_client[self._client_key] > max_client_connections:
                transport.write(TOO_MANY)
                transport.close()
                return
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            import h11

            self._header_timer = None
            # their_state stays IDLE until a complete request line and headers have arrived
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()  # the next request on a kept-alive connection gets the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            open_per_client[self._client_key] -= 1
            if open_per_client[self._client_key] <= 0:
                del open_per_client[self._client_key]
            super().connection_lost(exc)

    return GuardedH11Protocol


def run(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
        limit_concurrency: int | None = 64, header_timeout: float = HEADER_TIMEOUT,
        max_client_connections: int = MAX_CLIENT_CONNECTIONS) -> int:
    """Serve until interrupted; returns 0, or 2 when start-up failed.

    The model is loaded before the server starts, so a missing or damaged model file raises its ModelFileError
    here (the CLI prints one line and exits 2) instead of a traceback from inside the server.
    """
    import uvicorn

    from normalcy.apps.serve.app import create_app
    from normalcy.store import load

    if settings.model_path is None:
        from normalcy.errors import ParameterError

        raise ParameterError("normalcy serve needs a model file")
    detector = load(settings.model_path)
    app = create_app(settings, detector=detector)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            limit_concurrency=limit_concurrency, timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
                            http=guarded_protocol(header_timeout, max_client_connections))
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 2
