"""CoUp's tables (peewee). Rows never leave the database threads: queries turn them into
plain dicts (`coup.domain.queries`), so no lazy foreign-key load ever runs on the IOLoop.

Models bind to `database_proxy`, which `coup.domain.database.Database` points at the
configured database: one database per process.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import peewee as pw

database_proxy = pw.DatabaseProxy()

MEMBER_STATUSES = ("ACTIVE", "PENDING", "INACTIVE")
TASK_STATUSES = ("TODO", "IN_PROGRESS", "DONE")


def utcnow() -> dt.datetime:
    """Naive UTC, cut to milliseconds: what ISO-8601 `createdAt` shows is exactly what is stored."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(value: dt.datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and `Z`, as JavaScript's `toISOString()` writes it."""
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


class JSONField(pw.TextField):
    """JSON stored as text: the same on SQLite and PostgreSQL."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def python_value(self, value: Any) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class User(BaseModel):
    id = pw.AutoField()
    name = pw.CharField(max_length=100)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "users"


class Group(BaseModel):
    id = pw.AutoField()
    name = pw.CharField(max_length=200)

    class Meta:
        table_name = "groups"


class GroupMember(BaseModel):
    id = pw.AutoField()
    group_id: int
    user_id: int
    group = pw.ForeignKeyField(Group, backref="members", on_delete="CASCADE")
    user = pw.ForeignKeyField(User, backref="group_memberships", on_delete="CASCADE")

    class Meta:
        table_name = "group_members"
        indexes = ((("group", "user"), True),)


class Study(BaseModel):
    id = pw.AutoField()
    group_id: int
    group = pw.ForeignKeyField(Group, backref="studies", on_delete="CASCADE")
    name = pw.CharField(max_length=200)

    class Meta:
        table_name = "studies"


class StudyMember(BaseModel):
    id = pw.AutoField()
    study_id: int
    user_id: int
    study = pw.ForeignKeyField(Study, backref="members", on_delete="CASCADE")
    user = pw.ForeignKeyField(User, backref="study_memberships", on_delete="CASCADE")
    role = pw.CharField(max_length=20, default="MEMBER")
    status = pw.CharField(max_length=10, default="ACTIVE")

    class Meta:
        table_name = "study_members"
        indexes = ((("study", "user"), True), (("user", "status"), False))


class Message(BaseModel):
    id = pw.AutoField()
    study_id: int
    user_id: int
    study = pw.ForeignKeyField(Study, backref="messages", on_delete="CASCADE")
    user = pw.ForeignKeyField(User, backref="messages", on_delete="CASCADE")
    #: per-study sequence number: monotonic and gap-free, assigned by the room's single writer
    seq = pw.BigIntegerField()
    content = pw.TextField()
    file_id = pw.BigIntegerField(null=True)
    #: made up by the client so a retry is stored once; unique per user
    client_message_id = pw.CharField(max_length=64, null=True)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "messages"
        indexes = (
            (("study", "seq"), True),
            (("user", "client_message_id"), True),
            (("study", "id"), False),
        )


class MessageRead(BaseModel):
    id = pw.AutoField()
    message_id: int
    user_id: int
    message = pw.ForeignKeyField(Message, backref="reads", on_delete="CASCADE")
    user = pw.ForeignKeyField(User, backref="reads", on_delete="CASCADE")
    read_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "message_reads"
        indexes = ((("message", "user"), True),)


class Notification(BaseModel):
    id = pw.AutoField()
    user_id: int
    study_id: int | None
    user = pw.ForeignKeyField(User, backref="notifications", on_delete="CASCADE")
    type = pw.CharField(max_length=64)
    message = pw.TextField()
    study = pw.ForeignKeyField(Study, null=True, on_delete="CASCADE")
    data = JSONField(null=True)
    created_at = pw.DateTimeField(default=utcnow)
    read_at = pw.DateTimeField(null=True)

    class Meta:
        table_name = "notifications"
        indexes = ((("user", "id"), False), (("user", "read_at"), False))


class Task(BaseModel):
    id = pw.AutoField()
    study_id: int
    assignee_id: int | None
    updated_by_id: int | None
    study = pw.ForeignKeyField(Study, backref="tasks", on_delete="CASCADE")
    title = pw.CharField(max_length=300)
    status = pw.CharField(max_length=20, default="TODO")
    assignee = pw.ForeignKeyField(User, null=True, backref="tasks", on_delete="SET NULL")
    updated_by = pw.ForeignKeyField(User, null=True, on_delete="SET NULL")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "tasks"


class ServerSetting(BaseModel):
    """Server state kept with the data (the demo JWT secret lives here)."""

    key = pw.CharField(max_length=100, primary_key=True)
    value = pw.TextField()

    class Meta:
        table_name = "server_settings"


#: every table, in dependency order (create in this order, drop in reverse)
MODELS: tuple[type[BaseModel], ...] = (
    User, Group, GroupMember, Study, StudyMember, Message, MessageRead, Notification, Task, ServerSetting,
)
