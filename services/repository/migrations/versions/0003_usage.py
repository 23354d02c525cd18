"""workspace_usage: what each workspace used, as its manager last reported it

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workspace_usage",
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=256), nullable=False),
        sa.Column("manager_name", sa.String(length=64), nullable=False),
        sa.Column("host_identity", sa.String(length=128), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cpu_seconds", sa.Double(), nullable=False),
        sa.Column("memory_current_bytes", sa.BigInteger(), nullable=False),
        sa.Column("memory_peak_bytes", sa.BigInteger(), nullable=False),
        sa.Column("memory_byte_seconds", sa.Double(), nullable=False),
        sa.Column("disk_used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("network_rx_bytes", sa.BigInteger(), nullable=False),
        sa.Column("network_tx_bytes", sa.BigInteger(), nullable=False),
        sa.Column("seconds_at_memory_limit", sa.Double(), nullable=False),
        sa.Column("seconds_at_cpu_limit", sa.Double(), nullable=False),
        sa.Column("oom_kills", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("wall_seconds", sa.Double(), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"],
                                name=op.f("fk_workspace_usage_workspace_id_workspaces"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("workspace_id", name=op.f("pk_workspace_usage")),
    )
    # Export by owner over a period, and by period alone.
    op.create_index("ix_workspace_usage_owner_period", "workspace_usage", ["owner", "end_time"])
    op.create_index("ix_workspace_usage_period", "workspace_usage", ["end_time"])


def downgrade() -> None:
    op.drop_index("ix_workspace_usage_period", table_name="workspace_usage")
    op.drop_index("ix_workspace_usage_owner_period", table_name="workspace_usage")
    op.drop_table("workspace_usage")
