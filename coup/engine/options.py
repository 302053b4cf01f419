"""Engine.IO server settings (defaults are the reference server's)."""

from __future__ import annotations

from dataclasses import dataclass

from coup.protocol.websocket import Unmask, unmask


@dataclass(frozen=True, slots=True)
class EngineOptions:
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    #: largest message or polling body a client may send, in bytes
    max_payload: int = 1_000_000
    #: frames one WebSocket message may be split into
    max_fragments: int = 4096
    #: seconds a WebSocket may take between the probe and the UPGRADE packet
    upgrade_timeout: float = 10.0
    transports: tuple[str, ...] = ("polling", "websocket")
    allow_upgrades: bool = True
    #: outbound bytes a session may have queued before it counts as a slow consumer
    max_buffered_bytes: int = 8 * 1024 * 1024
    #: packets one polling POST may carry
    max_packets_per_post: int = 256
    #: permessage-deflate: accept a client's offer (Node's engine.io default: off)
    ws_compression: bool = False
    #: with compression, messages shorter than this many bytes go uncompressed (Node's `threshold`)
    ws_compression_threshold: int = 1024
    #: prepended to every session id; a cluster uses it to route a sid to its node
    sid_prefix: str = ""
    #: XORs a client frame's payload with its mask: the protocol's pure-Python one unless the
    #: transports layer passes a C one (`coup.transports.websocket.native_unmask`: 20x faster
    #: on large messages, bench/README.md "Large messages")
    ws_unmask: Unmask = unmask

    def __post_init__(self) -> None:
        if self.ping_interval <= 0 or self.ping_timeout <= 0:
            raise ValueError("ping_interval and ping_timeout must be positive")
        if self.max_payload < 1024:
            raise ValueError("max_payload must be at least 1024 bytes")
        if self.ws_compression_threshold < 0:
            raise ValueError("ws_compression_threshold must not be negative")
        unknown = set(self.transports) - {"polling", "websocket"}
        if unknown or not self.transports:
            raise ValueError(f"unknown transports: {sorted(unknown)}")

    @property
    def timer_slack(self) -> float:
        """How late a ping, a connect timeout or a closing grace period may run so that many
        sessions share a loop wake-up: 1 % of the heartbeat, at most 0.25 s (ten thousand
        sessions at 25 s / 20 s: four wake-ups a second). Small enough that a client's
        timers, and the official suite's, see pings at the interval it announced; a ping
        timeout never runs late."""
        return min(0.25, self.ping_interval / 100, self.ping_timeout / 100)
