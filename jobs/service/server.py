"""The uvicorn side of `anon serve`: one place for the server options the service's limits depend on.

uvicorn waits for request headers without any time limit (only idle keep-alive connections time out), so a
client can hold connections open forever by sending half a request. `header_timeout_protocol` closes a
connection whose request headers are not complete within `header_timeout_s`.
"""

from __future__ import annotations

import asyncio


def header_timeout_protocol(base: type[asyncio.Protocol], header_timeout_s: float) -> type[asyncio.Protocol]:
    """`base` (uvicorn's HTTP protocol class) with a request-header deadline per request."""

    class HeaderTimeoutProtocol(base):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def _waiting_for_headers(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is None or cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            transport = getattr(self, "transport", None)
            if transport is None or transport.is_closing() or transport.get_protocol() is not self:
                return  # closed already, or upgraded to a WebSocket (another protocol owns the transport now)
            if self._waiting_for_headers():
                transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_headers():
                self._arm()
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()  # a request is in progress: from here on the app's own limits apply

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    HeaderTimeoutProtocol.__name__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol


def denial_safe_ws_protocol():
    """uvicorn's sans-I/O WebSocket protocol, minus a false ERROR per denied handshake.

    When the app answers a handshake with an HTTP response (401, 400, ...) through the denial-response
    extension, uvicorn 0.5x does not mark the handshake complete and logs "ASGI callable returned without
    completing handshake" at ERROR for every refused client: anyone could flood the error log. Marking it
    complete once the denial body is sent is what the other uvicorn protocols do.
    """
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    class DenialSafeWebSocketProtocol(WebSocketsSansIOProtocol):
        async def send(self, message) -> None:
            await super().send(message)
            if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
                self.handshake_complete = True

    return DenialSafeWebSocketProtocol


def uvicorn_config(app, settings, **kwargs):
    """uvicorn.Config for the app with the service's limits (tests and `anon serve` use the same)."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    opts = dict(http=header_timeout_protocol(AutoHTTPProtocol, settings.header_timeout_s), ws=denial_safe_ws_protocol(),
                ws_max_size=settings.ws_max_frame_bytes + 8, timeout_keep_alive=5, server_header=False,
                # Keepalive pings go out, but a late pong does not close the stream: a queue-mode client that
                # is far ahead waits behind its own frames. Dead peers are closed by --ws-idle-s.
                ws_ping_timeout=None)
    opts.update(kwargs)
    return uvicorn.Config(app, **opts)
