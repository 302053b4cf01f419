"""The demo data set (fixed ids) and the demo JWT secret.

Demo mode makes a JWT secret up when `JWT_SECRET` is not set. So that a separate
`coup token 1` process signs tokens the running `coup serve --demo` accepts, the first
made-up secret is stored in the database itself (table `server_settings`, key
`demo_jwt_secret`) and every later demo process, and `coup token`, reads it from there.
A configured `JWT_SECRET` always wins and is never stored.
"""

from __future__ import annotations

import peewee as pw

from coup.domain.models import (
    MODELS,
    Group,
    GroupMember,
    Study,
    StudyMember,
    Task,
    User,
    database_proxy,
)

DEMO_SECRET_KEY = "demo_jwt_secret"

USERS = ((1, "Alice"), (2, "Bob"), (3, "Chloe"), (4, "Dan"), (5, "Eve"))
GROUPS = ((1, "Algorithms Club"),)
GROUP_MEMBERS = ((1, 1), (1, 2), (1, 3), (1, 4))  # (group, user)
STUDIES = ((1, 1, "Graph Theory"), (2, 1, "Dynamic Programming"))  # (id, group, name)
#: (study, user, role, status)
STUDY_MEMBERS = (
    (1, 1, "LEADER", "ACTIVE"), (1, 2, "MEMBER", "ACTIVE"), (1, 3, "MEMBER", "ACTIVE"), (1, 4, "MEMBER", "PENDING"),
    (2, 1, "LEADER", "ACTIVE"), (2, 4, "MEMBER", "ACTIVE"),
)
#: (id, study, title, status, assignee)
TASKS = ((1, 1, "Read chapter 3", "TODO", None), (2, 1, "Solve problem set", "IN_PROGRESS", 2))


class NotEmpty(RuntimeError):
    """The database already holds data; seeding would mix the demo with it."""


def seed_demo(*, reset: bool = False) -> None:
    """Load exactly the demo data. Synchronous (CLI, start-up, tests): run it off the IOLoop.

    Refuses a database that has users unless `reset`, which empties every table first
    (the stored demo secret survives, so issued demo tokens stay valid).
    """
    db = database_proxy
    with db.atomic():
        if reset:
            for model in reversed(MODELS):
                if model.__name__ != "ServerSetting":
                    model.delete().execute()
        elif User.select().exists():
            raise NotEmpty("the database already has users; use --reset to replace them with the demo data")
        User.insert_many([{"id": i, "name": n} for i, n in USERS]).execute()
        Group.insert_many([{"id": i, "name": n} for i, n in GROUPS]).execute()
        GroupMember.insert_many([{"group": g, "user": u} for g, u in GROUP_MEMBERS]).execute()
        Study.insert_many([{"id": i, "group": g, "name": n} for i, g, n in STUDIES]).execute()
        StudyMember.insert_many([{"study": s, "user": u, "role": r, "status": st}
                                 for s, u, r, st in STUDY_MEMBERS]).execute()
        Task.insert_many([{"id": i, "study": s, "title": t, "status": st, "assignee": a}
                          for i, s, t, st, a in TASKS]).execute()
        if isinstance(db.obj, pw.PostgresqlDatabase):
            _advance_sequences(db.obj)


def _advance_sequences(db: pw.Database) -> None:
    """Rows inserted with explicit ids leave PostgreSQL's id sequences behind: move them on."""
    for model in MODELS:
        pk = model._meta.primary_key
        if not isinstance(pk, pw.AutoField):
            continue
        table = model._meta.table_name
        db.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT setval(pg_get_serial_sequence(%s, %s), COALESCE((SELECT MAX(id) FROM " + f'"{table}"'
            + "), 0) + 1, false)", (table, "id"))
