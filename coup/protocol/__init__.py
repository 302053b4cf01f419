"""Pure, sans-I/O codecs for Engine.IO v4, Socket.IO v5 and RFC 6455 framing.

Nothing in this package performs I/O, reads a clock or imports an event loop:
bytes and objects go in, bytes and objects come out. The I/O layers
(`coup.engine`, `coup.transports`) own sockets, timers and tasks.
"""

from coup.protocol.errors import DecodeError, EncodeError, ProtocolError

__all__ = ["DecodeError", "EncodeError", "ProtocolError"]
