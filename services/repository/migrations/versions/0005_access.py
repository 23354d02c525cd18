"""access: role_bindings, the append-only audit_entries, a workspace's quota group and
customisation, a manager's identity and account pool

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

REFUSAL = "the audit trail is append-only"

# The database itself refuses to change or remove an entry, whatever client asks.
_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER audit_entries_no_update BEFORE UPDATE ON audit_entries "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END",
    f"CREATE TRIGGER audit_entries_no_delete BEFORE DELETE ON audit_entries "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END",
]
_POSTGRES_TRIGGERS = [
    f"CREATE FUNCTION audit_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    f"BEGIN RAISE EXCEPTION '{REFUSAL}' USING ERRCODE = 'insufficient_privilege'; END $$",
    "CREATE TRIGGER audit_entries_no_change BEFORE UPDATE OR DELETE ON audit_entries "
    "FOR EACH ROW EXECUTE FUNCTION audit_entries_append_only()",
    "CREATE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON audit_entries "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_entries_append_only()",
]


def upgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("quota_group", sa.String(length=256), nullable=False, server_default=""))
        batch.add_column(sa.Column("customisation", sa.JSON(), nullable=True))
    op.create_index("ix_workspaces_quota_group", "workspaces", ["quota_group", "state"])
    with op.batch_alter_table("managers") as batch:
        batch.add_column(sa.Column("identity", sa.String(length=600), nullable=False, server_default=""))
        batch.add_column(sa.Column("account_pool", sa.String(length=64), nullable=False, server_default=""))
    op.create_table(
        "role_bindings",
        sa.Column("workspace", sa.String(length=64), nullable=False),
        sa.Column("member", sa.String(length=600), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("granted_by", sa.String(length=600), nullable=False),
        sa.Column("grant_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["workspace"], ["workspaces.name"],
                                name=op.f("fk_role_bindings_workspace_workspaces"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("workspace", "member", name=op.f("pk_role_bindings")),
    )
    op.create_index("ix_role_bindings_member", "role_bindings", ["member", "workspace"])
    op.create_table(
        "audit_entries",
        sa.Column("sequence", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("identity", sa.String(length=600), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=256), nullable=False),
        sa.Column("service", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=128), nullable=False),
        sa.Column("target", sa.String(length=256), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_audit_entries")),
    )
    op.create_index("ix_audit_entries_identity", "audit_entries", ["identity", "sequence"])
    op.create_index("ix_audit_entries_target", "audit_entries", ["target", "sequence"])
    dialect = op.get_bind().dialect.name
    for statement in _POSTGRES_TRIGGERS if dialect == "postgresql" else _SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    # Dropping the table drops its triggers; the function outlives it on PostgreSQL.
    op.drop_index("ix_audit_entries_target", table_name="audit_entries")
    op.drop_index("ix_audit_entries_identity", table_name="audit_entries")
    op.drop_table("audit_entries")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_entries_append_only()")
    op.drop_index("ix_role_bindings_member", table_name="role_bindings")
    op.drop_table("role_bindings")
    with op.batch_alter_table("managers") as batch:
        batch.drop_column("account_pool")
        batch.drop_column("identity")
    op.drop_index("ix_workspaces_quota_group", table_name="workspaces")
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("customisation")
        batch.drop_column("quota_group")
