"""Engine.IO server: sessions, heartbeats, outbound queues and the upgrade dance.

Transports (`coup.transports`) feed bytes in and take bytes out; this package decides what
they mean. It knows nothing of Socket.IO namespaces or of the CoUp domain: the layer above
registers itself as each session's `SessionHandler`.
"""
