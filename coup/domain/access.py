"""Authorisation of study actions: the one place that says who may act in a study."""

from __future__ import annotations

from coup.core import ClientError
from coup.domain import queries
from coup.domain.database import Database
from coup.domain.errors import client_error, not_found


async def membership_error(db: Database, study_id: int, user_id: int) -> ClientError | None:
    """None when the user is an ACTIVE member of the study; else why not (NOT_FOUND, NOT_MEMBER)."""
    try:
        status = await db.run(queries.membership, study_id, user_id)
    except LookupError:
        return not_found("스터디")
    return None if status == queries.ACTIVE else client_error("NOT_MEMBER")


async def require_active(db: Database, study_id: int, user_id: int) -> None:
    """Raise the refusal unless the user is an ACTIVE member of the study."""
    error = await membership_error(db, study_id, user_id)
    if error is not None:
        raise error
