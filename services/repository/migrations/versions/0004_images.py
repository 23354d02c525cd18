"""the image catalogue (images, image_files) and workspaces.progress

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("boot", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=256), nullable=False),
        sa.Column("visibility", sa.String(length=16), nullable=False),
        sa.Column("kernel_args", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("guest_agent", sa.Boolean(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_images")),
    )
    op.create_index("ix_images_visibility_listing", "images", ["visibility", "name"])
    op.create_index("ix_images_owner_listing", "images", ["owner", "name"])
    op.create_table(
        "image_files",
        sa.Column("image_name", sa.String(length=80), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=128), nullable=False),
        sa.Column("location", sa.String(length=1024), nullable=False),
        sa.ForeignKeyConstraint(["image_name"], ["images.name"],
                                name=op.f("fk_image_files_image_name_images"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("image_name", "role", name=op.f("pk_image_files")),
    )
    op.create_index("ix_image_files_location", "image_files", ["location"])
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("progress", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("progress")
    op.drop_index("ix_image_files_location", table_name="image_files")
    op.drop_table("image_files")
    op.drop_index("ix_images_owner_listing", table_name="images")
    op.drop_index("ix_images_visibility_listing", table_name="images")
    op.drop_table("images")
