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


def test_owners_widen_to_identities_keeping_every_row(database_url):
    """0006 widens the owner columns from 256 to 600 characters. On SQLite it rewrites the
    tables' declarations in place: a rebuild's DROP TABLE would cascade to the history, usage
    and bindings."""
    engine = db.make_engine(database_url)
    try:
        db.upgrade(engine, "0005")
        dn = "/DC=org/DC=example/O=Grid/OU=Physics/CN=Alice Example " + "x" * 180  # 235 characters
        now = "2030-01-01 12:00:00+00:00"
        with engine.begin() as c:
            c.execute(sa.text(
                "INSERT INTO workspaces (id, name, spec, state, state_message, state_time, owner, manager_address, "
                "host_identity, labels, request_digest, create_time, update_time, termination_time, destroy_reason, "
                "event_seq, snapshot, quota_group) VALUES (1, 'workspaces/w1', '{}', 'RUNNING', '', :t, :o, '', '', "
                "'{}', '', :t, :t, :t, '', 1, :s, '')"), {"t": now, "o": dn, "s": b""})
            c.execute(sa.text(
                "INSERT INTO workspace_events (workspace_id, seq, time, type, previous_state, state, message, source) "
                "VALUES (1, 1, :t, 'CREATED', 'UNSPECIFIED', 'PENDING', 'recorded', 'factory')"), {"t": now})
        db.upgrade(engine)
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT owner FROM workspaces")).scalars().all() == [dn]
            assert c.execute(sa.text("SELECT count(*) FROM workspace_events")).scalar() == 1
            widths = {t: next(col["type"].length for col in sa.inspect(c).get_columns(t) if col["name"] == "owner")
                      for t in ("workspaces", "workspace_usage", "images")}
            assert widths == dict.fromkeys(widths, db.OWNER_WIDTH) and db.OWNER_WIDTH == 600
            if c.dialect.name == "sqlite":
                assert c.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            assert compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), db.Base.metadata) == []
        long = "/CN=" + "y" * (db.OWNER_WIDTH - 4)
        with engine.begin() as c:  # PostgreSQL enforces the width: 600 fits now
            c.execute(sa.text("UPDATE workspaces SET owner = :o"), {"o": long})
            assert c.execute(sa.text("SELECT owner FROM workspaces")).scalar() == long
            c.execute(sa.text("UPDATE workspaces SET owner = :o"), {"o": dn})
        with engine.begin() as c:
            command.downgrade(db.alembic_config(connection=c), "0005")
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM workspace_events")).scalar() == 1
    finally:
        engine.dispose()
