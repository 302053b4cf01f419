"""CoUp, the study-group app, on the Socket.IO core: authentication, study rooms, chat,
read receipts, presence, notifications, tasks, the peewee models and the HTTP API.

Talks to the core only through its public API (`SocketServer`, `Namespace`, `Socket`,
`BroadcastOperator`, `ClientError`, `ConnectRefused`, `server.presence`, `server.rooms`);
never imports transports, the protocol codec or Redis.
"""

from coup.domain.service import CoupDomain

__all__ = ["CoupDomain"]
