"""The consistent-hash ring that gives every room an owner node.

Every node builds the same ring from the same live-node set (uhashring, ketama, virtual
nodes), so owners agree whenever membership views agree. They may briefly disagree during
a change; correctness never depends on agreement (see `coup.cluster.rooms`). The epoch is
the registry's membership version: it tells which view a ring was built from.
"""

from __future__ import annotations

from collections.abc import Iterable

from uhashring import HashRing

#: owners a ring remembers (rooms); past that it starts again
_OWNERS_KEPT = 100_000


class Ring:
    """`nodes`: the live nodes. Rooms are owned by those not `draining` (a node on its way
    out keeps serving its sessions but hands its rooms over); by all when all are draining."""

    __slots__ = ("_owners", "_ring", "_without", "draining", "epoch", "nodes", "vnodes")

    def __init__(self, nodes: Iterable[str], epoch: int, vnodes: int = 160, draining: Iterable[str] = ()) -> None:
        self.nodes: tuple[str, ...] = tuple(sorted(set(nodes)))
        self.draining: frozenset[str] = frozenset(draining) & frozenset(self.nodes)
        self.epoch = epoch
        self.vnodes = vnodes
        owners = [n for n in self.nodes if n not in self.draining] or self.nodes
        self._ring = HashRing(nodes={n: {"vnodes": vnodes} for n in owners}, hash_fn="ketama") \
            if owners else None
        #: rings without some of our nodes (`without`), built once each
        self._without: dict[frozenset[str], Ring] = {}
        #: owners looked up so far: a ring never changes, and a ketama lookup (an MD5 and a
        #: bisect) cost ~2-4 µs, twice per routed room command (caller and owner)
        self._owners: dict[str, str] = {}

    def without(self, nodes: frozenset[str]) -> Ring:
        """This ring as it will be once `nodes` are gone (they died and are not reaped yet):
        the owners it gives are the ones every node will agree on after the reap."""
        if not nodes & set(self.nodes):
            return self
        ring = self._without.get(nodes)
        if ring is None:
            ring = self._without[nodes] = Ring(set(self.nodes) - nodes, self.epoch, self.vnodes, self.draining)
        return ring

    def owner(self, key: str) -> str | None:
        """The node that owns `key`; None when no node is alive (the caller decides)."""
        node = self._owners.get(key)
        if node is not None:
            return node
        ring = self._ring
        if ring is None:
            return None
        found: str = ring.get_node(key)
        if len(self._owners) >= _OWNERS_KEPT:
            self._owners.clear()
        self._owners[key] = found
        return found

    def moved(self, other: Ring, keys: Iterable[str]) -> float:
        """The share of `keys` whose owner differs between this ring and `other`."""
        keys = list(keys)
        if not keys:
            return 0.0
        return sum(1 for k in keys if self.owner(k) != other.owner(k)) / len(keys)

    def __repr__(self) -> str:
        return f"<Ring epoch={self.epoch} nodes={list(self.nodes)} draining={sorted(self.draining)}>"
