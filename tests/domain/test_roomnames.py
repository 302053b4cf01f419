"""Room names and the "user in study room" presence keys read back exactly what they wrote."""

from __future__ import annotations

import pytest

from coup.domain.roomnames import member_key, member_of, study_of, study_room


@pytest.mark.parametrize(("key", "member"), [
    ("study:1/2", (1, 2)), ("study:12/345", (12, 345)),
    ("7", None), ("study:1", None), ("study:x/2", None), ("study:1/", None), ("study:1/-2", None),
    ("group:1/2", None), ("study:1/2/3", None),
])
def test_member_keys_parse_back(key: str, member: tuple[int, int] | None) -> None:
    assert member_of(key) == member
    if member is not None:
        assert member_key(*member) == key


@pytest.mark.parametrize(("room", "study"), [("study:1", 1), ("study:42", 42), ("study:", None), ("study:a", None),
                                           ("study:\u0661", None), ("user:1", None)])
def test_study_of(room: str, study: int | None) -> None:
    assert study_of(room) == study
    if study is not None:
        assert study_room(study) == room
