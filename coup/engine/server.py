"""The Engine.IO server: validates requests, opens sessions and keeps the sid table."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from coup.engine.adoption import NoAdoption, SessionAdopter
from coup.engine.errors import EngineErrorCode, EngineRequestError, UpgradeRefused
from coup.engine.handshake import HandshakeInfo
from coup.engine.options import EngineOptions
from coup.engine.polling import PollingTransport
from coup.engine.session import Session, SessionState
from coup.engine.timers import TimerQueue
from coup.engine.transport import NotUpgradable
from coup.engine.websocket import WebSocketTransport, WriteCoalescer
from coup.metrics import Metrics
from coup.protocol import jsonutil
from coup.protocol.engineio import PROTOCOL_VERSION, OpenInfo, encode_text
from coup.protocol.wire import Outbound

log = logging.getLogger(__name__)

ConnectionCallback = Callable[[Session], None]


class EngineServer:
    """Owns every session of this process; the transports ask it for them by sid."""

    def __init__(self, options: EngineOptions | None = None,
                 on_connection: ConnectionCallback | None = None, *,
                 loop: asyncio.AbstractEventLoop | None = None, metrics: Metrics | None = None) -> None:
        """`loop` defaults to the running loop at first use; tests pass one with a fake clock.
        `metrics`: where every layer of this node counts (None: nothing is counted)."""
        self.options = options or EngineOptions()
        self.metrics = metrics
        self.on_connection = on_connection
        self.sessions: dict[str, Session] = {}
        self._loop: asyncio.AbstractEventLoop | None = loop
        self._timers: TimerQueue | None = None
        self._coalescer: WriteCoalescer | None = None
        self._open_templates: dict[str, tuple[str, str]] = {}
        #: takes over sessions held by other processes (a cluster sets it)
        self.adopter: SessionAdopter = NoAdoption()
        #: sessions being taken over here, by sid
        self._adoptions: dict[str, asyncio.Task[Any]] = {}

    # ------------------------------------------------------------------ loop-bound helpers

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def timers(self) -> TimerQueue:
        if self._timers is None:
            self._timers = TimerQueue(self.loop)
        return self._timers

    @property
    def coalescer(self) -> WriteCoalescer:
        if self._coalescer is None:
            self._coalescer = WriteCoalescer(self.loop, self.metrics)
        return self._coalescer

    def now(self) -> float:
        return self.loop.time()

    # ------------------------------------------------------------------ request checks

    def check_request(self, query: Mapping[str, str]) -> str:
        """Validate the query of an Engine.IO request and return its transport name.

        Checked in the reference's order, with its codes: the transport first (0), then
        the protocol version (5: anything but ``EIO=4``, including a missing or garbled one).
        """
        transport = query.get("transport")
        if transport not in self.options.transports:
            raise EngineRequestError(EngineErrorCode.UNKNOWN_TRANSPORT, f"transport {transport!r}")
        eio = query.get("EIO")
        if eio != str(PROTOCOL_VERSION):
            raise EngineRequestError(EngineErrorCode.UNSUPPORTED_PROTOCOL_VERSION, f"EIO={eio!r}")
        return transport

    def get(self, sid: str, *, closing: bool = False) -> Session:
        """The open session `sid`; with `closing`, also one still delivering its last packets."""
        session = self.sessions.get(sid)
        if session is not None:
            session.run_overdue_timer()
        if session is None or not (session.open or (closing and session.state is SessionState.CLOSING)):
            raise EngineRequestError(EngineErrorCode.UNKNOWN_SID, f"sid {sid[:40]!r}")
        return session

    def new_sid(self) -> str:
        return self.options.sid_prefix + secrets.token_urlsafe(15)

    # ------------------------------------------------------------------ opening sessions

    def _open_info(self, sid: str, transport: str) -> Outbound:
        """The OPEN packet: the JSON of `OpenInfo`, its constant part encoded once per transport."""
        template = self._open_templates.get(transport)
        if template is None:
            opts = self.options
            upgrades = ("websocket",) if (transport == "polling" and opts.allow_upgrades
                                          and "websocket" in opts.transports) else ()
            info = OpenInfo("", upgrades, int(opts.ping_interval * 1000), int(opts.ping_timeout * 1000),
                            opts.max_payload)
            text = encode_text(info.to_packet())
            head = '0{"sid":""'
            assert text.startswith(head)
            template = self._open_templates[transport] = ('0{"sid":', text[len(head):])
        return Outbound(template[0] + jsonutil.dumps(sid) + template[1])

    def _register(self, session: Session, first: Outbound) -> None:
        self.sessions[session.sid] = session
        if self.metrics is not None:
            self.metrics.opened[session.transport.name] += 1
        session.send(first)
        session.set_timer(session.heartbeat.deadline, slack=self.options.timer_slack)
        if self.on_connection is not None:
            self.on_connection(session)

    def open_polling(self, handshake: HandshakeInfo) -> Session:
        """A handshake over polling: the caller answers the GET with `transport.poll()`."""
        transport = PollingTransport(self.loop)
        session = Session(self.new_sid(), self, handshake, transport, self.now())
        transport.session = session
        self._register(session, self._open_info(session.sid, "polling"))
        return session

    def open_websocket(self, handshake: HandshakeInfo) -> tuple[Session, WebSocketTransport]:
        """A handshake directly over WebSocket: the OPEN packet is queued on the new transport."""
        session = Session(self.new_sid(), self, handshake, _Unattached(), self.now())
        transport = WebSocketTransport(session, self.coalescer, probing=False)
        session.transport = transport
        self._register(session, self._open_info(session.sid, "websocket"))
        return session, transport

    def probe_websocket(self, sid: str) -> WebSocketTransport:
        """A WebSocket that wants to take over a polling session (the upgrade)."""
        if sid not in self.sessions and self.options.allow_upgrades and sid not in self._adoptions \
                and self.adopter.can_adopt(sid):
            adopting = Session(sid, self, HandshakeInfo({}, {}, "", "", False, time.time()), _Unattached(),
                               self.now())
            adopting.state = SessionState.ADOPTING
            return WebSocketTransport(adopting, self.coalescer, probing=True)
        session = self.get(sid)
        if not self.options.allow_upgrades:
            raise EngineRequestError(EngineErrorCode.BAD_REQUEST, "upgrades are disabled")
        if session.upgraded or session.upgrading is not None or session.transport.name != "polling":
            raise UpgradeRefused("session already upgraded or upgrading")
        return WebSocketTransport(session, self.coalescer, probing=True)

    # ------------------------------------------------------------------ sessions moving here

    def begin_adoption(self, session: Session, transport: WebSocketTransport) -> None:
        """The probe of a session held elsewhere: answer it once its home started the upgrade."""
        if session.sid in self._adoptions:
            transport.refuse_probe()
            return
        self._track_adoption(session.sid, self._begin_adoption(session, transport))

    def _track_adoption(self, sid: str, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._adoptions[sid] = task
        task.add_done_callback(lambda _: self._adoptions.pop(sid, None) if self._adoptions.get(sid) is task else None)

    async def _begin_adoption(self, session: Session, transport: WebSocketTransport) -> None:
        try:
            started = await self.adopter.begin(session.sid)
        except Exception:
            log.exception("session %s: starting its move here failed", session.sid)
            started = False
        if not started:
            log.info("session %s: its home refused the upgrade here", session.sid)
            transport.refuse_probe()
            return
        session.upgrading = transport
        transport.answer_probe()

    def complete_adoption(self, session: Session, transport: WebSocketTransport) -> None:
        """UPGRADE on the WebSocket of a session held elsewhere: take it over."""
        self._track_adoption(session.sid, self._adopt(session, transport))

    async def _adopt(self, session: Session, transport: WebSocketTransport) -> None:
        session.transport = transport
        session.upgrading = None
        session.upgraded = True
        try:
            adopted = await self.adopter.adopt(session)
        except Exception:
            log.exception("session %s: taking it over failed", session.sid)
            adopted = False
        if not adopted or session.state is not SessionState.ADOPTING:
            transport.close("transport error", graceful=False)  # the client reconnects
            return
        if session.sid in self.sessions:
            log.warning("session %s moved here while one of that id was open; keeping the first", session.sid)
            transport.close("transport error", graceful=False)
            return
        self.sessions[session.sid] = session
        session.finish_adoption()
        if transport.closed:  # the WebSocket went away while the session moved: end it properly
            session.transport_closed(transport, "transport close")

    def forget(self, session: Session) -> None:
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]

    # ------------------------------------------------------------------ shutdown

    def close_all(self, reason: str = "server shutting down") -> None:
        for session in list(self.sessions.values()):
            session.close(reason, graceful=False)
        if self._timers is not None:
            self._timers.close()


class _Unattached(NotUpgradable):
    """Placeholder transport for the instant between creating a session and its transport."""

    name = "none"

    def send(self, out: Outbound) -> None:  # pragma: no cover - replaced before use
        raise RuntimeError("session has no transport yet")

    def close(self, reason: str, *, graceful: bool) -> None:  # pragma: no cover
        pass
