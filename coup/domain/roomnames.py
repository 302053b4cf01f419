"""CoUp's room names: `user:{id}` (a user's sockets), `group:{id}`, `study:{id}` (a study chat)."""

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
