"""owners as wide as identities: workspaces.owner, workspace_usage.owner and images.owner from
256 to 600 characters (a DN or sub@issuer, as audit_entries.identity and role_bindings.member)

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("workspaces", "workspace_usage", "images")


def _widths(old: int, new: int) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        for table in TABLES:
            # PostgreSQL widens a varchar in the catalogue alone: no rewrite, indexes kept.
            op.alter_column(table, "owner", type_=sa.String(length=new), existing_type=sa.String(length=old),
                            existing_nullable=False)
        return
    # SQLite stores a column's declared type only in the table's CREATE statement and never
    # enforces a VARCHAR's length, so nothing on disk changes. A batch rebuild (copy, DROP TABLE,
    # rename) would run the ON DELETE CASCADE of workspace_events, workspace_usage and
    # role_bindings at the DROP: foreign keys cannot be turned off inside the migration's
    # transaction. Instead, SQLite's documented way for a change that leaves the stored content
    # alone (https://sqlite.org/lang_altertable.html, "Making Other Kinds Of Table Schema
    # Changes"): rewrite the statement in sqlite_schema and raise the schema version, in the
    # same transaction as everything else the upgrade does.
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    before, after = f"owner VARCHAR({old}) NOT NULL", f"owner VARCHAR({new}) NOT NULL"
    bind.exec_driver_sql("PRAGMA writable_schema=ON")
    try:
        for table in TABLES:
            sql = bind.exec_driver_sql("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?",
                                       (table,)).scalar()
            if sql is None or sql.count(before) != 1:
                raise RuntimeError(f"{table}: its CREATE statement does not declare `{before}` once:\n{sql}")
            bind.exec_driver_sql("UPDATE sqlite_schema SET sql = ? WHERE type = 'table' AND name = ?",
                                 (sql.replace(before, after), table))
        bind.exec_driver_sql(f"PRAGMA schema_version={version + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema=RESET")


def upgrade() -> None:
    _widths(256, 600)


def downgrade() -> None:
    _widths(600, 256)
