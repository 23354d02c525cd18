"""The schema comes only from the migrations: they upgrade an empty database, and the models
and the migrations agree (what `alembic check` checks), on SQLite and PostgreSQL."""
from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from vws.repository import db


def test_upgrade_from_empty_and_no_drift(database_url):
    engine = db.make_engine(database_url)
    try:
        with engine.connect() as c:
            assert sa.inspect(c).get_table_names() == []
        db.upgrade(engine)
        db.upgrade(engine)  # a second start changes nothing
        with engine.connect() as c:
            tables = set(sa.inspect(c).get_table_names())
            assert {"workspaces", "workspace_events", "workspace_labels", "managers", "role_bindings", "audit_entries",
                    "alembic_version"} <= tables
            head = ScriptDirectory.from_config(db.alembic_config()).get_current_head()
            assert MigrationContext.configure(c).get_current_revision() == head
            diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), db.Base.metadata)
            assert diff == [], diff
            command.check(db.alembic_config(connection=c))  # raises on drift
            indexes = {i["name"] for i in sa.inspect(c).get_indexes("workspaces")}
            assert {"ix_workspaces_listing", "ix_workspaces_active_listing", "ix_workspaces_state_listing",
                    "ix_workspaces_owner_listing", "ix_workspaces_manager_listing", "ix_workspaces_expiry",
                    "ix_workspaces_quota_group"} <= indexes
    finally:
        engine.dispose()


def test_downgrade_to_empty(database_url):
    engine = db.make_engine(database_url)
    try:
        db.upgrade(engine)
        with engine.begin() as c:
            command.downgrade(db.alembic_config(connection=c), "base")
        with engine.connect() as c:
            assert set(sa.inspect(c).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
