"""Taking over a session that lives in another process: the WebSocket upgrade that lands elsewhere.

Behind a router without affinity, the upgrade request of a polling session may reach a
node other than the one holding the session (its home). Relaying the WebSocket through
Redis for its whole life would turn every delivery to that client into a Redis message,
so the session moves instead: to the node the WebSocket reached. The engine only knows
the steps; a cluster implements them (`coup.cluster.moves`); one process has nothing to
adopt (`NoAdoption`).

1. probe (``2probe``): `begin(sid)` asks the home to start the upgrade (it answers the
   waiting poll with NOOP and holds its outbound packets); then ``3probe`` goes out;
2. ``5`` (UPGRADE): `adopt(session)` takes the session over (its queue, its sockets, their
   rooms) and fills in `session`; packets the client sends meanwhile wait in the session
   and are handled once it is adopted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from coup.engine.session import Session


class SessionAdopter(Protocol):
    def can_adopt(self, sid: str) -> bool:
        """Is `sid` a session another live process holds and could hand over?"""

    async def begin(self, sid: str) -> bool:
        """Ask the home to start the upgrade; False: it cannot (unknown sid, already upgrading)."""

    async def adopt(self, session: Session) -> bool:
        """Take the session over into `session` (same sid, not yet registered); False: refused."""


class NoAdoption:
    """One process: every session is here or nowhere."""

    def can_adopt(self, sid: str) -> bool:
        return False

    async def begin(self, sid: str) -> bool:
        return False

    async def adopt(self, session: Session) -> bool:
        return False
