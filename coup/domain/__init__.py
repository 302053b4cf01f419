"""CoUp, the study-group app, on the Socket.IO core: authentication, study rooms, chat,
read receipts, presence, notifications, tasks, the peewee models and the HTTP API.

Talks to the core only through its public API (`SocketServer`, `Namespace`, `Socket`,
`BroadcastOperator`, `ClientError`, `ConnectRefused`, `server.presence`, `server.rooms`);
never imports transports, the protocol codec or Redis.

`coup.domain.service.CoupDomain` wires the parts together; this file imports nothing, so
importing one module of the domain does not load peewee, PyJWT and the HTTP API.
"""
