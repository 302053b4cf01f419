"""The consistent-hash ring that names each room's owner (`coup.cluster.ring`)."""

from __future__ import annotations

from coup.cluster.ring import Ring


def test_a_ring_gives_a_room_the_same_owner_each_time_it_is_asked() -> None:
    """Owners are remembered per ring (a lookup is an MD5 and a bisect); remembering changes none."""
    rooms = [f"study:{i}" for i in range(3000)]
    ring = Ring(["n0", "n1", "n2"], 0)
    first = [ring.owner(r) for r in rooms]
    fresh = Ring(["n0", "n1", "n2"], 0)  # remembers nothing yet
    assert [ring.owner(r) for r in rooms] == first == [fresh.owner(r) for r in rooms]
    assert set(first) == {"n0", "n1", "n2"}
    smaller = ring.without(frozenset({"n1"}))
    assert [smaller.owner(r) for r in rooms] != first  # n1's rooms moved
