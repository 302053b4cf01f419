"""Thin Tornado handlers that move bytes between HTTP/sockets and Engine.IO sessions.

They validate the request, ask `coup.engine.EngineServer` for the session and hand over
bytes. They know nothing of namespaces, rooms, studies or users.
"""
