"""CoUp Realtime: a Socket.IO server on Tornado for the CoUp study-group app."""

__version__ = "0.1.0"
