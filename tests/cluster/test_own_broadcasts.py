"""A node's logged broadcasts kept until Redis hands them back (`coup.cluster.own_broadcasts`):
the push is recognised by its message id alone, and what never comes back does not pile up."""

from __future__ import annotations

from coup.cluster.envelope import Broadcast, encode_broadcast
from coup.cluster.own_broadcasts import OwnBroadcasts
from coup.core.adapter import BroadcastOptions
from coup.protocol.socketio import EncodedPacket

TO_ROOM = BroadcastOptions(frozenset({"study:1"}))


def sent(own: OwnBroadcasts[str], node_id: str, text: str = '2["said",{"text":"hi"}]') -> tuple[bytes, str]:
    """A broadcast `own` numbered and kept, and its envelope as Redis pushes it back."""
    number, mid = own.next_mid()
    packet = EncodedPacket(text)
    own.keep(number, "adapter", mid, packet, TO_ROOM)
    return encode_broadcast(Broadcast(node_id, mid, "/", ("study:1",), (), True, packet)), mid


def test_a_push_of_a_kept_broadcast_gives_it_back_once():
    own: OwnBroadcasts[str] = OwnBroadcasts("n1")
    envelope, mid = sent(own, "n1")
    assert own.take(envelope) == ("adapter", mid, EncodedPacket('2["said",{"text":"hi"}]'), TO_ROOM)
    assert own.take(envelope) is None  # a second copy (another room's channel) is decoded instead
    assert len(own) == 0


def test_another_nodes_push_is_not_taken_for_ours():
    ours: OwnBroadcasts[str] = OwnBroadcasts("n1")
    theirs: OwnBroadcasts[str] = OwnBroadcasts("n10")
    sent(ours, "n1")
    envelope, _ = sent(theirs, "n10")
    assert ours.take(envelope) is None
    assert len(ours) == 1


def test_a_previous_process_under_the_same_node_id_is_not_taken_for_ours():
    before: OwnBroadcasts[str] = OwnBroadcasts("n1")
    after: OwnBroadcasts[str] = OwnBroadcasts("n1")
    mids = {sent(after, "n1")[1] for _ in range(100)}
    envelopes = [sent(before, "n1")[0] for _ in range(100)]
    assert not mids & {before.next_mid()[1] for _ in range(100)}  # their numbers start apart
    assert all(after.take(envelope) is None for envelope in envelopes)


def test_pushes_that_never_come_back_are_forgotten_oldest_first():
    own: OwnBroadcasts[str] = OwnBroadcasts("n1", max_entries=8, max_bytes=1 << 20)
    envelopes = [sent(own, "n1")[0] for _ in range(20)]
    assert len(own) == 8
    assert own.take(envelopes[0]) is None
    assert own.take(envelopes[-1]) is not None


def test_the_kept_bytes_are_bounded():
    own: OwnBroadcasts[str] = OwnBroadcasts("n1", max_entries=1000, max_bytes=16 * 1024)
    for _ in range(100):
        sent(own, "n1", '2["said","' + "x" * 900 + '"]')
    assert len(own) * 900 <= 16 * 1024
    big, _ = sent(own, "n1", '2["said","' + "x" * 4096 + '"]')
    assert own.take(big) is None  # too large to hold: decoded again when it comes back
