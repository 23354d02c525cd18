"""initial schema: the workspaces, their labels and history, and the managers' registry

Revision ID: 0001
Revises: (none)
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NOT_TERMINATED = sa.text("state <> 'TERMINATED'")


def upgrade() -> None:
    op.create_table(
        "managers",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=256), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=False),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("capacity", sa.JSON(), nullable=False),
        sa.Column("allocated", sa.JSON(), nullable=False),
        sa.Column("register_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_interval", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_managers")),
    )
    op.create_table(
        "workspaces",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("state_message", sa.Text(), nullable=False),
        sa.Column("state_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("owner", sa.String(length=256), nullable=False),
        sa.Column("manager_name", sa.String(length=64), nullable=True),
        sa.Column("manager_address", sa.String(length=256), nullable=False),
        sa.Column("host_identity", sa.String(length=128), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("request_digest", sa.String(length=64), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("termination_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroy_reason", sa.Text(), nullable=False),
        sa.Column("event_seq", sa.Integer(), nullable=False),
        sa.Column("snapshot", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspaces")),
        sa.UniqueConstraint("name", name=op.f("uq_workspaces_name")),
        sa.UniqueConstraint("request_id", name=op.f("uq_workspaces_request_id")),
    )
    op.create_index("ix_workspaces_listing", "workspaces", ["create_time", "id"])
    op.create_index("ix_workspaces_active_listing", "workspaces", ["create_time", "id"],
                    sqlite_where=NOT_TERMINATED, postgresql_where=NOT_TERMINATED)
    op.create_index("ix_workspaces_state_listing", "workspaces", ["state", "create_time", "id"])
    op.create_index("ix_workspaces_owner_listing", "workspaces", ["owner", "create_time", "id"])
    op.create_index("ix_workspaces_manager_listing", "workspaces", ["manager_name", "create_time", "id"])
    op.create_index("ix_workspaces_expiry", "workspaces", ["termination_time"],
                    sqlite_where=NOT_TERMINATED, postgresql_where=NOT_TERMINATED)
    op.create_table(
        "workspace_events",
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("previous_state", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=80), nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"],
                                name=op.f("fk_workspace_events_workspace_id_workspaces"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("workspace_id", "seq", name=op.f("pk_workspace_events")),
    )
    op.create_table(
        "workspace_labels",
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=63), nullable=False),
        sa.Column("value", sa.String(length=63), nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"],
                                name=op.f("fk_workspace_labels_workspace_id_workspaces"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("workspace_id", "key", name=op.f("pk_workspace_labels")),
    )
    op.create_index("ix_workspace_labels_key_value", "workspace_labels", ["key", "value", "workspace_id"])


def downgrade() -> None:
    op.drop_table("workspace_labels")
    op.drop_table("workspace_events")
    op.drop_table("workspaces")
    op.drop_table("managers")
