"""Timings and names of the cluster layer (defaults match the issue: ~1 s heartbeat, dead after ~3)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    #: every Redis key and channel starts with this, so several apps can share one Redis
    prefix: str = "coup"
    #: seconds between two heartbeats of a node
    heartbeat_interval: float = 1.0
    #: a node whose last heartbeat is older than this is dead (three missed heartbeats)
    dead_after: float = 3.0
    #: how often a node looks for dead nodes and re-reads the membership
    check_interval: float = 0.5
    #: how often a node publishes a probe to itself to prove its subscription still hears
    probe_interval: float = 1.0
    #: a probe not heard back within this many seconds means the subscription is deaf
    probe_timeout: float = 2.0
    connect_timeout: float = 2.0
    #: reconnect backoff: first delay, doubled after each failure up to the cap (with jitter)
    reconnect_min: float = 0.05
    reconnect_max: float = 1.0
    #: seconds a room command may take on its owner before the caller gives up (retryable)
    call_timeout: float = 5.0
    #: seconds a cluster-wide query (fetch_sockets, remote join/leave) waits for every node
    request_timeout: float = 5.0
    #: seconds a dropped socket's presence lingers (a reconnect inside it announces nothing)
    presence_grace: float = 0.0
    #: virtual nodes per node on the consistent-hash ring
    vnodes: int = 160

    def key(self, *parts: str) -> str:
        """A Redis key or channel name under our prefix."""
        return ":".join((self.prefix, *parts))
