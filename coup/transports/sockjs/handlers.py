"""SockJS transports: sockjs-tornado's handlers, with what breaks on Tornado 6 fixed here.

Each class keeps the library's session plumbing and replaces what is wrong:

* the headers of the current protocol revision (sockjs-protocol's head, what sockjs-node
  and sockjs-client 1.x speak; the library targets 0.3.3): one-year
  ``Cache-Control``/``Expires`` (a real HTTP date) on cacheable answers,
  ``no-store, no-cache, no-transform, must-revalidate, max-age=0`` on session answers (so
  proxies neither recompress nor buffer a stream), the right ``Content-Type`` everywhere
  (also on ``xhr_send``'s 204, which Tornado strips; ``text/event-stream`` bare),
  ``Access-Control-Allow-Origin: *`` without credentials for a request without ``Origin``
  and the origin itself, ``null`` included, with credentials when the policy allows it,
  no automatic ETag on private answers, 405 with ``Allow`` and no body for a POST to a
  WebSocket URL; the iframe page of the current revision;
* heartbeats on the streaming transports (xhr-streaming, eventsource, htmlfile): the
  library attached them with heartbeats off;
* JSONP and htmlfile callbacks are validated (the library pasted any string into the
  script it served), JSONP answers start with ``/**/`` (so no answer can begin with bytes
  the client chose: the "Rosetta Flash" attack) and carry ``nosniff``, and htmlfile frames
  escape ``<``/``>`` so a message cannot end the ``<script>`` element;
* WebSocket: ``WebSocketClosedError`` from Tornado 6 no longer escapes ``send_pack`` into
  whoever was broadcasting; hybi-07/08 handshakes are accepted again; the message size
  is bounded; the ``Origin`` is checked against our policy; a session's close code and
  reason reach the client in the WebSocket close frame (``3000 Go away!``); hixie-76
  (what the protocol's ``test_haproxy`` speaks) is served when the ``hixie76`` setting is on;
* a streaming answer to an HTTP/1.0 client closes the connection when it ends (it has
  neither a length nor chunks, so the close is the only end-of-body marker).
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import re
import secrets
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from sockjs.tornado import static as sockjs_static
from sockjs.tornado import transports as sockjs_transports
from sockjs.tornado.transports import htmlfile as sockjs_htmlfile
from tornado import httputil
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketProtocol

from coup.transports.arrival import arrival_of, hung_up
from coup.transports.sockjs import hixie76

if TYPE_CHECKING:
    from coup.transports.sockjs.router import SockJSRouter

log = logging.getLogger(__name__)

CACHE_SECONDS = 31536000
#: what an xhr-streaming answer starts with, so that browsers hand the stream over at once
XHR_STREAMING_PRELUDE = "h" * 2048 + "\n"
NO_CACHE = "no-store, no-cache, no-transform, must-revalidate, max-age=0"
TEXT = "text/plain; charset=UTF-8"
JAVASCRIPT = "application/javascript; charset=UTF-8"
EVENT_STREAM = "text/event-stream"
#: what a JSONP/htmlfile callback may be: the protocol's ``[a-zA-Z0-9-_.]`` (sockjs-client
#: sends ``_jp.a1b2c3``), at most 32 characters like sockjs-node, far too short to smuggle
#: a file (Rosetta Flash)
CALLBACK = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
#: the iframe page of the current protocol revision (0.3.3 loaded the script after an
#: ``_sockjs_onload`` hook; sockjs-client 1.x bootstraps once its script has loaded)
IFRAME_PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="{sockjs_url}"></script>
  <script>
    document.domain = document.domain;
    SockJS.bootstrap_iframe();
  </script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"""


def _consume(future: Any) -> None:
    """Read a write future's outcome, so a closed peer is not logged as an unretrieved error."""
    if not future.cancelled():
        future.exception()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def cors_headers(origin: str | None, allowed: bool, requested: str | None) -> list[tuple[str, str]]:
    """The CORS headers of a session or info answer (`_ProtocolMixin.preflight`, the front door's
    `SockJSDoor`), in the order they are written."""
    headers = [("Vary", "Origin")]
    if origin is None:
        headers.append(("Access-Control-Allow-Origin", "*"))
    elif allowed:
        headers += [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true")]
    else:
        return headers
    if requested:
        headers.append(("Access-Control-Allow-Headers", requested))
    return headers


class _ProtocolMixin:
    """Headers, CORS and origin checks every SockJS URL shares."""

    server: SockJSRouter
    request: httputil.HTTPServerRequest
    #: methods announced to a CORS preflight
    access_methods = "OPTIONS, POST"
    #: when the server read this request (`coup.transports.arrival`); None: not known
    arrival: int | None = None

    if TYPE_CHECKING:
        def set_header(self, name: str, value: Any) -> None: ...
        def add_header(self, name: str, value: Any) -> None: ...
        def set_status(self, status_code: int, reason: str | None = None) -> None: ...
        def write(self, chunk: Any) -> None: ...
        def finish(self, chunk: Any = None) -> Any: ...
        def handle_session_cookie(self) -> None: ...

    def enable_cache(self) -> None:
        self.set_header("Cache-Control", f"public, max-age={CACHE_SECONDS}")
        self.set_header("Expires", httputil.format_timestamp(time.time() + CACHE_SECONDS))
        self.set_header("Access-Control-Max-Age", str(CACHE_SECONDS))

    def disable_cache(self) -> None:
        self.set_header("Cache-Control", NO_CACHE)

    def compute_etag(self) -> str | None:
        return None  # Tornado would add an ETag (and answer 304) to private GET answers

    def origin_allowed(self) -> bool:
        return self.server.origin_allowed(self.request.headers.get("Origin"), self.request.headers.get("Host"))

    def preflight(self) -> None:
        """CORS headers of a session or info answer.

        No ``Origin``: ``*`` and no credentials. Any allowed origin, ``null`` (a page from
        ``file://`` or a sandboxed frame) included, is echoed with credentials, as the
        current protocol revision says (0.3.3 answered ``null`` with ``*``, which browsers
        refuse together with credentials).
        """
        headers = self.request.headers
        for name, value in cors_headers(headers.get("Origin"), self.origin_allowed(),
                                        headers.get("Access-Control-Request-Headers")):
            self.set_header(name, value)

    def refuse(self, status: int, text: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", TEXT)
        self.finish(text)

    def options(self, *args: Any, **kwargs: Any) -> None:
        self.enable_cache()
        self.handle_session_cookie()
        self.preflight()
        if not self.origin_allowed():
            self.set_status(403)
            self.finish()
            return
        self.set_header("Access-Control-Allow-Methods", self.access_methods)
        self.set_header("Allow", self.access_methods)
        self.set_status(204)
        self.finish()

    def take_callback(self) -> bool:
        """Read and check the ``c`` (callback) argument of JSONP/htmlfile; False: refused (500)."""
        # strip=False: a callback of spaces is invalid, not missing
        callback = self.get_argument("c", None, strip=False)  # type: ignore[attr-defined]
        if not callback:
            self.refuse(500, '"callback" parameter required')
            return False
        if CALLBACK.fullmatch(callback) is None:
            self.refuse(500, 'invalid "callback" parameter')
            return False
        self.callback = callback
        return True

    def open_request(self) -> bool:
        """Common start of a session request; False (and a 403 sent) for a foreign origin."""
        self.arrival = arrival_of(self.request)  # before anything else is read on this connection
        self.preflight()
        self.handle_session_cookie()
        self.disable_cache()
        if not self.origin_allowed():
            log.info("sockjs: refused %s from origin %r", self.request.path, self.request.headers.get("Origin"))
            self.refuse(403, "Origin not allowed")
            return False
        return True


# ---------------------------------------------------------------------- static URLs


class GreetingsHandler(_ProtocolMixin, sockjs_static.GreetingsHandler):  # type: ignore[misc]
    def get(self) -> None:
        self.enable_cache()
        self.set_header("Content-Type", TEXT)
        self.write("Welcome to SockJS!\n")


class InfoHandler(_ProtocolMixin, sockjs_static.InfoHandler):  # type: ignore[misc]
    access_methods = "OPTIONS, GET"

    def get(self) -> None:
        self.preflight()
        self.disable_cache()
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(_json({
            "websocket": self.server.websockets_enabled,
            "cookie_needed": self.server.cookie_needed,
            "origins": ["*:*"],
            "entropy": secrets.randbelow(2**32),
        }))


class IFrameHandler(_ProtocolMixin, sockjs_static.IFrameHandler):  # type: ignore[misc]
    def get(self) -> None:
        body = iframe_page(self.server.settings["sockjs_url"])
        etag = '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'
        self.enable_cache()
        self.set_header("ETag", etag)
        if etag in self.request.headers.get("If-None-Match", ""):
            self.set_status(304)  # Tornado drops the Content-Type of a 304
            return
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.write(body)


def iframe_page(sockjs_url: str) -> bytes:
    return IFRAME_PAGE.format(sockjs_url=html.escape(sockjs_url, quote=True)).encode("utf-8")


# ---------------------------------------------------------------------- HTTP transports


class _TransportMixin(_ProtocolMixin):
    """A request that carries (or waits for) a session's frames."""

    _done: asyncio.Future[None] | None = None
    session: Any
    active: bool

    if TYPE_CHECKING:
        def flush(self, include_footers: bool = False) -> Any: ...
        def _attach_session(self, session_id: str, start_heartbeat: bool = False) -> bool: ...
        def _detach(self) -> None: ...
        def safe_finish(self) -> None: ...
        _finished: bool

    def _finished_future(self) -> asyncio.Future[None]:
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        return self._done

    async def wait_finished(self) -> None:
        """Hold the handler until the answer is finished or the client hung up."""
        if not self._finished and hung_up(self.request):
            self.on_connection_close()  # gone before we waited: Tornado will not say so
        await self._finished_future()

    def _resolve(self) -> None:
        done = self._finished_future()
        if not done.done():
            done.set_result(None)

    def on_finish(self) -> None:
        self._resolve()

    def on_connection_close(self) -> None:
        super().on_connection_close()  # type: ignore[misc]
        self._resolve()

    def can_send_close(self) -> bool:
        """May a close frame be written on this request now? (See SockJSSession.close.)"""
        return self.active and not self._finished

    def write_frame(self, frame: str) -> None:
        """Write one frame and flush; a vanished client closes the session instead of raising."""
        self.active = False
        try:
            self.write(frame)
            self.flush().add_done_callback(self.send_complete)
        except StreamClosedError:
            if self.session is not None:
                self.session.delayed_close()
            self._detach()

    def send_complete(self, future: Any = None) -> None:
        if future is not None:
            _consume(future)
        super().send_complete(future)  # type: ignore[misc]


class _PollingMixin(_TransportMixin):
    """One request, one answer: the frames queued so far, or a wait for the next one."""

    def write_frame(self, frame: str) -> None:
        super().write_frame(frame)
        # Free the session now, not when the flush completes (as the library did): the
        # client may already have read this answer and sent its next poll, which would
        # otherwise find the session busy and get "Another connection still open".
        self._detach()

    def overtook(self, other: Any) -> bool:
        """Is this poll still waiting on its session although the server read `other` first?

        Tornado can bring a request to its handler before one it read earlier (see
        `coup.transports.arrival`); the earlier one is owed the session.
        """
        theirs = getattr(other, "arrival", None)
        return (self.session is not None and self.active and not self._finished
                and self.arrival is not None and theirs is not None and theirs < self.arrival)

    def give_way(self, frame: str) -> None:
        """Answer this waiting poll with `frame` and free its session, as if it had come second."""
        # detach first: if this client is gone, write_frame must not close the session
        self._detach()
        self.send_pack(frame)

    async def poll(self, session_id: str) -> None:
        if not self.open_request():
            return
        if self._attach_session(session_id, False) and self.session is not None:
            # (not attached: answered already with a close frame, or closed inside on_open)
            if self.session.send_queue:
                self.session.flush()
            else:
                self.session.start_heartbeat()
        await self.wait_finished()

    def frame(self, message: str) -> str:
        raise NotImplementedError

    def send_pack(self, message: str, binary: bool = False) -> None:
        self.set_header("Content-Type", JAVASCRIPT)
        self.write_frame(self.frame(message))


class XhrPollingHandler(_PollingMixin, sockjs_transports.XhrPollingTransport):  # type: ignore[misc]
    async def post(self, session_id: str) -> None:
        await self.poll(session_id)

    def frame(self, message: str) -> str:
        return message + "\n"


class JsonpPollingHandler(_PollingMixin, sockjs_transports.JSONPTransport):  # type: ignore[misc]
    access_methods = "OPTIONS, GET"

    async def get(self, session_id: str) -> None:
        if self.take_callback():
            # with the /**/ prefix no browser takes the answer for anything but a script
            self.set_header("X-Content-Type-Options", "nosniff")
            await self.poll(session_id)

    def frame(self, message: str) -> str:
        return f"/**/{self.callback}({_json(message)});\r\n"


def parse_messages(body: str) -> list[Any] | str:
    """The messages of an ``xhr_send``/``jsonp_send`` body, or the error text to answer with."""
    if not body:
        return "Payload expected."
    try:
        messages = json.loads(body)
    except ValueError:
        return "Broken JSON encoding."
    if not isinstance(messages, list):
        return "Payload expected."
    return messages


class _SendMixin(_ProtocolMixin):
    """``xhr_send`` / ``jsonp_send``: messages from the client to its session."""

    def deliver(self, session_id: str, body: str) -> bool:
        """Hand the body's messages to the session; False when an error answer was sent."""
        session = self._get_session(session_id)  # type: ignore[attr-defined]
        if session is None or session.is_closed:
            self.set_status(404)
            return False
        messages = parse_messages(body)
        if isinstance(messages, str):
            self.refuse(500, messages)
            return False
        failure = deliver_messages(session, messages)
        if failure is not None:
            self.refuse(500, failure)
            return False
        return True


def deliver_messages(session: Any, messages: list[Any]) -> str | None:
    """Hand a send request's messages to its session; the 500's text if the handler failed
    (the session is closed then)."""
    try:
        session.on_messages(messages)
    except Exception:
        log.exception("sockjs: message handler failed")
        session.close()
        return "Message handler failed."
    return None


class XhrSendHandler(_SendMixin, sockjs_transports.XhrSendHandler):  # type: ignore[misc]
    def post(self, session_id: str) -> None:
        if not self.open_request():
            return
        if self.deliver(session_id, self.request.body.decode("utf-8", "replace")):
            self.set_status(204)
            self.set_header("Content-Type", TEXT)

    def _clear_representation_headers(self) -> None:
        # The protocol wants text/plain on this 204 (Firefox otherwise parses it as XML);
        # Tornado strips Content-Type from every 204, so keep it here.
        self.clear_header("Content-Encoding")
        self.clear_header("Content-Language")


class JsonpSendHandler(_SendMixin, sockjs_transports.JSONPSendHandler):  # type: ignore[misc]
    def post(self, session_id: str) -> None:
        if not self.open_request():
            return
        body = self.request.body.decode("utf-8", "replace")
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype == "application/x-www-form-urlencoded":
            body = parse_qs(body).get("d", [""])[0]
        if self.deliver(session_id, body):
            self.set_header("Content-Type", TEXT)
            self.write("ok")


class _StreamingMixin(_TransportMixin):
    """One long answer carrying frame after frame, until `response_limit` bytes went out."""

    content_type = JAVASCRIPT

    if TYPE_CHECKING:
        def notify_sent(self, data_len: int) -> None: ...

    def prelude(self) -> str:
        raise NotImplementedError

    def frame(self, message: str) -> str:
        raise NotImplementedError

    async def stream(self, session_id: str) -> None:
        if not self.open_request():
            return
        if self.request.version != "HTTP/1.1":
            # no length, no chunks: only the connection's close ends an HTTP/1.0 body, and
            # Tornado would keep a "Connection: keep-alive" 1.0 connection open
            connection: Any = self.request.connection
            if hasattr(connection, "_disconnect_on_finish"):
                connection._disconnect_on_finish = True
        self.set_header("Content-Type", self.content_type)
        self.write(self.prelude())
        self.flush().add_done_callback(_consume)
        if not self._attach_session(session_id, True):  # heartbeats on (the library had them off)
            self.finish()
            return
        if self.session is not None:
            self.session.flush()
        await self.wait_finished()

    def send_pack(self, message: str, binary: bool = False) -> None:
        frame = self.frame(message)
        self.notify_sent(len(frame))
        self.write_frame(frame)

    def can_send_close(self) -> bool:
        return not self._finished  # a stream can take the close frame behind what it is sending


class XhrStreamingHandler(_StreamingMixin, sockjs_transports.XhrStreamingTransport):  # type: ignore[misc]
    async def post(self, session_id: str) -> None:
        await self.stream(session_id)

    def prelude(self) -> str:
        return XHR_STREAMING_PRELUDE

    def frame(self, message: str) -> str:
        return message + "\n"


class EventSourceHandler(_StreamingMixin, sockjs_transports.EventSourceTransport):  # type: ignore[misc]
    content_type = EVENT_STREAM
    access_methods = "OPTIONS, GET"

    async def get(self, session_id: str) -> None:
        await self.stream(session_id)

    def prelude(self) -> str:
        return "\r\n"

    def frame(self, message: str) -> str:
        return f"data: {message}\r\n\r\n"


class HtmlFileHandler(_StreamingMixin, sockjs_transports.HtmlFileTransport):  # type: ignore[misc]
    content_type = "text/html; charset=UTF-8"
    access_methods = "OPTIONS, GET"

    async def get(self, session_id: str) -> None:
        if not self.take_callback():
            return
        await self.stream(session_id)

    def prelude(self) -> str:
        return str(sockjs_htmlfile.HTMLFILE_HEAD % self.callback)

    def frame(self, message: str) -> str:
        script = _json(message).replace("<", "\\u003c").replace(">", "\\u003e")
        return f"<script>\np({script});\n</script>\r\n"


# ---------------------------------------------------------------------- WebSocket


class _WebSocketMixin:
    """What both WebSocket endpoints (framed and raw) fix in the library's handler."""

    server: SockJSRouter
    request: httputil.HTTPServerRequest
    session: Any
    ws_connection: WebSocketProtocol | None

    if TYPE_CHECKING:
        def write_message(self, message: Any, binary: bool = False) -> Any: ...
        def set_status(self, status_code: int, reason: str | None = None) -> None: ...
        def set_header(self, name: str, value: Any) -> None: ...
        def clear_header(self, name: str) -> None: ...
        def finish(self, chunk: Any = None) -> Any: ...
        def on_close(self) -> None: ...
        def close(self, code: int | None = None, reason: str | None = None) -> None: ...
        def _detach(self) -> None: ...
        _transforms: Any

    async def _execute(self, transforms: Any, *args: Any, **kwargs: Any) -> None:
        if self.request.method != "GET":
            # 405 with Allow and nothing else (the library answered with an HTML body)
            self._transforms = transforms
            self.set_status(405)
            self.set_header("Allow", "GET")
            self.clear_header("Content-Type")
            self.finish()
            return
        await super()._execute(transforms, *args, **kwargs)  # type: ignore[misc]

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        # hybi-07 and -08 frame exactly like RFC 6455 (13); Tornado 6 answers them 426
        headers = self.request.headers
        version = headers.get("Sec-WebSocket-Version")
        if version not in ("7", "8"):
            return super().get_websocket_protocol()  # type: ignore[misc,no-any-return]
        headers["Sec-WebSocket-Version"] = "13"
        try:
            return super().get_websocket_protocol()  # type: ignore[misc,no-any-return]
        finally:
            headers["Sec-WebSocket-Version"] = version

    def check_origin(self, origin: str) -> bool:
        return self.server.origin_allowed(origin, self.request.headers.get("Host"))

    @property
    def max_message_size(self) -> int:
        return self.server.max_message_size

    def send_pack(self, message: str, binary: bool = False) -> None:
        try:
            future = self.write_message(message, binary)
        except (WebSocketClosedError, StreamClosedError):
            # Tornado 6 raises this for a closing connection; the library let it reach
            # whoever was sending (a broadcast to a whole room)
            asyncio.get_running_loop().call_soon(self.on_close)
            return
        future.add_done_callback(_consume)

    def can_send_close(self) -> bool:
        return self.ws_connection is not None and not self.ws_connection.is_closing()

    def session_closed(self) -> None:
        """The session closed: end the WebSocket with the session's code and reason.

        The library closed it without either; the protocol wants ``3000 Go away!`` in the
        raw endpoint's close frame (the framed endpoint sent it as a ``c`` frame already).
        """
        session = self.session
        code, reason = (session.close_reason or (None, None)) if session is not None else (None, None)
        try:
            self.close(websocket_close_code(code), reason)
        except (WebSocketClosedError, StreamClosedError):
            pass
        finally:
            self._detach()


def websocket_close_code(code: int | None) -> int | None:
    """The session's close code, if RFC 6455 lets an endpoint send it; else a normal closure.

    SockJS codes such as 2010 or 1002 mean something else (or nothing) in a WebSocket
    close frame, and clients fail the connection on a reserved one.
    """
    if code is None:
        return None
    return code if code in (1000, 1001) or 3000 <= code <= 4999 else 1000


class WebSocketHandler(_WebSocketMixin, sockjs_transports.WebSocketTransport):  # type: ignore[misc]
    """``/<server>/<session>/websocket``: SockJS framing over a WebSocket (hixie-76 if enabled)."""

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        if self.server.settings.get("hixie76") and hixie76.is_request(self.request.headers):
            return hixie76.Hixie76Protocol(self, self.max_message_size)
        return super().get_websocket_protocol()

    def on_message(self, message: str | bytes) -> None:
        """One frame of JSON messages; broken JSON ends the connection abruptly, as the protocol says.

        The library did the same, but logged the client's broken JSON as a server error.
        """
        session = self.session
        if not message or session is None:
            return  # the protocol ignores empty frames
        try:
            decoded = json.loads(message)
        except ValueError:
            log.info("sockjs: broken JSON on a WebSocket from %s; closing", self.request.remote_ip)
            self.abort_connection()
            return
        session.on_messages(decoded if isinstance(decoded, list) else [decoded])


class RawWebSocketHandler(_WebSocketMixin, sockjs_transports.RawWebSocketTransport):  # type: ignore[misc]
    """``/websocket``: one WebSocket message per SockJS message, no framing, no heartbeat."""

