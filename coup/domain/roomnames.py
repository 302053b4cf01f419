"""CoUp's room names: `user:{id}` (a user's sockets), `group:{id}`, `study:{id}` (a study chat).

Also the presence key of "user U is in study S's room" (`study:{S}/{U}`), counted per socket
like a user's own presence so a crashed node's share of a room is reported back.
"""

from __future__ import annotations

STUDY_PREFIX = "study:"


def user_room(user_id: int) -> str:
    return f"user:{user_id}"


def group_room(group_id: int) -> str:
    return f"group:{group_id}"


def study_room(study_id: int) -> str:
    return f"{STUDY_PREFIX}{study_id}"


def study_of(room: str) -> int | None:
    """The study id of a `study:{id}` room name, else None."""
    if not room.startswith(STUDY_PREFIX):
        return None
    rest = room[len(STUDY_PREFIX):]
    return int(rest) if rest.isascii() and rest.isdigit() else None


def member_key(study_id: int, user_id: int) -> str:
    """The presence key of one user in one study room."""
    return f"{STUDY_PREFIX}{study_id}/{user_id}"


def member_of(key: str) -> tuple[int, int] | None:
    """(study id, user id) of a `member_key`, else None."""
    room, sep, user = key.partition("/")
    study_id = study_of(room)
    if not sep or study_id is None or not (user.isascii() and user.isdigit()):
        return None
    return study_id, int(user)
