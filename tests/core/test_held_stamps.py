"""Held packets with vector offsets (recovery log groups, docs/cluster.md#redis-cluster).

The live copy of a replayed entry and the replayed one differ in text (the stamps differ), so
the hold drops the live copy by the entry it names; and no held packet leaves with a stamp
below what the client holds by then, or the next restore would replay what it has.
"""

from __future__ import annotations

from typing import Any

from coup.core.hold import HeldPackets, Stamped
from coup.protocol.socketio import EncodedPacket
from coup.protocol.wire import Outbound


class _Session:
    sid = "s"
    server: Any = None

    def __init__(self) -> None:
        self.sent: list[Outbound] = []

    def send(self, out: Outbound) -> None:
        self.sent.append(out)


def _held(*packets: Outbound) -> tuple[HeldPackets, _Session]:
    session = _Session()
    held = HeldPackets(session, 1 << 20)  # type: ignore[arg-type]
    for out in packets:
        held.send(out)
    return held, session


def _event(name: str) -> EncodedPacket:
    return EncodedPacket(f'2["m","{name}"]')


def test_a_stamped_packet_carries_its_vector_as_the_last_argument() -> None:
    out = Stamped(_event("a"), (1, 7), (5, 7, 0))
    assert out.text == '42["m","a","5.7.0"]'
    assert out.at_least((4, 6, 0)) is out
    assert out.at_least((6, 0, 2)).text == '42["m","a","6.7.2"]'


def test_a_replayed_entry_drops_its_held_live_copy_by_identity_and_held_ones_are_stamped_no_lower() -> None:
    live_copy = Stamped(_event("x"), (1, 7), (3, 7))  # the node had heard group 0 up to 3 only
    newer = Stamped(_event("y"), (0, 4), (4, 7))
    ack = Outbound("43[1]")
    held, session = _held(live_copy, ack, newer)
    replayed = [Stamped(_event("w"), (0, 9), (9, 6)), Stamped(_event("x"), (1, 7), (9, 7))]
    held.release(replayed)
    assert [out.text for out in session.sent] == ['42["m","w","9.6"]', '42["m","x","9.7"]', "43[1]",
                                                  '42["m","y","9.7"]']  # raised to what the client holds


def test_a_moved_socket_gets_nothing_stamped_below_its_old_nodes_offsets() -> None:
    held, session = _held(Stamped(_event("y"), (0, 4), (4, 2)), Stamped(_event("z"), (1, 9), (5, 9)))
    held.release([], floor=(8, 3))
    assert [out.text for out in session.sent] == ['42["m","y","8.3"]', '42["m","z","8.9"]']


def test_one_group_keeps_comparing_texts() -> None:
    same = Outbound('42["m","x","17"]')
    held, session = _held(same, Outbound('42["m","y","18"]'))
    held.release([Outbound('42["m","x","17"]')])
    assert [out.text for out in session.sent] == ['42["m","x","17"]', '42["m","y","18"]']
