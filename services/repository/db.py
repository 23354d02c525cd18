"""The repository's tables (SQLAlchemy 2.0 declarative), the engine, the schema migrations and
the unit of work. SQLite in the data directory by default; PostgreSQL by URL
(postgresql+psycopg://...). The schema is made and changed only by the Alembic migrations
in ./migrations, run at server start (`upgrade`)."""
from __future__ import annotations

import contextlib
import datetime as dt
import pathlib
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

MIGRATIONS = pathlib.Path(__file__).resolve().parent / "migrations"

# Every state but TERMINATED: the default listing and what most queries look at.
NOT_TERMINATED = "state <> 'TERMINATED'"
# An owner is an identity (a DN, or sub@issuer): as wide as audit_entries.identity.
OWNER_WIDTH = 600


class UTCDateTime(sa.TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone: stored as naive UTC
    in a fixed-width text form, so that text order is time order)."""
    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the repository; use timezone-aware UTC")
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class WorkspaceRow(Base):
    __tablename__ = "workspaces"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    state: Mapped[str] = mapped_column(sa.String(16))
    state_message: Mapped[str] = mapped_column(sa.Text, default="")
    # When the state last moved (the clock of whoever moved it): older reports do not move it back.
    state_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    owner: Mapped[str] = mapped_column(sa.String(OWNER_WIDTH), default="")
    manager_name: Mapped[str | None] = mapped_column(sa.String(64))
    manager_address: Mapped[str] = mapped_column(sa.String(256), default="")
    host_identity: Mapped[str] = mapped_column(sa.String(128), default="")
    labels: Mapped[dict[str, str]] = mapped_column(sa.JSON)
    request_id: Mapped[str | None] = mapped_column(sa.String(128), unique=True)
    request_digest: Mapped[str] = mapped_column(sa.String(64), default="")
    create_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    update_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    termination_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # Destroy asked of the manager but not confirmed (it was unreachable): retried by the expiry loop.
    destroy_reason: Mapped[str] = mapped_column(sa.Text, default="")
    # The last event's sequence number: the next one is numbered without a query.
    event_seq: Mapped[int] = mapped_column(sa.Integer, default=0)
    # The workspace as its wire message (vws.v1.Workspace), rewritten at every flush of the row:
    # GetWorkspace answers with it after one indexed read, with no conversion.
    snapshot: Mapped[bytes] = mapped_column(sa.LargeBinary, default=b"")
    # The limits its manager put in place (model.Enforcement as JSON); null until realised.
    enforcement: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    # How far the work of the current state has got (model.Progress as JSON, update_time in ISO
    # form); null when nothing long is under way. Cleared whenever the state moves.
    progress: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    # The quota group it counts against (its holdings are summed over live workspaces by group).
    quota_group: Mapped[str] = mapped_column(sa.String(256), default="")
    # What the site's policy added to it (model.Customisation as JSON); null when nothing did.
    customisation: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)

    __table_args__ = (
        # Keyset listing, newest first: (create_time desc, id desc) scans these backwards.
        sa.Index("ix_workspaces_listing", "create_time", "id"),
        sa.Index("ix_workspaces_active_listing", "create_time", "id",
                 sqlite_where=sa.text(NOT_TERMINATED), postgresql_where=sa.text(NOT_TERMINATED)),
        sa.Index("ix_workspaces_state_listing", "state", "create_time", "id"),
        sa.Index("ix_workspaces_owner_listing", "owner", "create_time", "id"),
        sa.Index("ix_workspaces_manager_listing", "manager_name", "create_time", "id"),
        sa.Index("ix_workspaces_expiry", "termination_time",
                 sqlite_where=sa.text(NOT_TERMINATED), postgresql_where=sa.text(NOT_TERMINATED)),
        sa.Index("ix_workspaces_quota_group", "quota_group", "state"),
    )


class WorkspaceLabelRow(Base):
    """One row per label, for filtering (the workspace row keeps them too, as JSON, for reading)."""
    __tablename__ = "workspace_labels"

    workspace_id: Mapped[int] = mapped_column(sa.ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(63))

    __table_args__ = (sa.Index("ix_workspace_labels_key_value", "key", "value", "workspace_id"),)


class EventRow(Base):
    __tablename__ = "workspace_events"

    workspace_id: Mapped[int] = mapped_column(sa.ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    type: Mapped[str] = mapped_column(sa.String(32))
    previous_state: Mapped[str] = mapped_column(sa.String(16))
    state: Mapped[str] = mapped_column(sa.String(16))
    message: Mapped[str] = mapped_column(sa.Text, default="")
    source: Mapped[str] = mapped_column(sa.String(80), default="")


class ManagerRow(Base):
    __tablename__ = "managers"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    address: Mapped[str] = mapped_column(sa.String(256))
    kinds: Mapped[list[str]] = mapped_column(sa.JSON)
    backend: Mapped[str] = mapped_column(sa.String(64), default="")
    capacity: Mapped[dict[str, int]] = mapped_column(sa.JSON)
    allocated: Mapped[dict[str, int]] = mapped_column(sa.JSON)
    register_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    heartbeat_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    heartbeat_interval: Mapped[float] = mapped_column(sa.Float)
    # The identity of the certificate it registered with, and the account pool it leases from.
    identity: Mapped[str] = mapped_column(sa.String(600), default="")
    account_pool: Mapped[str] = mapped_column(sa.String(64), default="")


class UsageRow(Base):
    """A workspace's usage as its manager last reported it (cumulative figures). The owner,
    manager and account are copied here so that exports by owner and period read one table."""
    __tablename__ = "workspace_usage"

    workspace_id: Mapped[int] = mapped_column(sa.ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(OWNER_WIDTH), default="")
    manager_name: Mapped[str] = mapped_column(sa.String(64), default="")
    host_identity: Mapped[str] = mapped_column(sa.String(128), default="")
    start_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cpu_seconds: Mapped[float] = mapped_column(sa.Double, default=0.0)
    memory_current_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    memory_peak_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    memory_byte_seconds: Mapped[float] = mapped_column(sa.Double, default=0.0)
    disk_used_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    network_rx_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    network_tx_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    seconds_at_memory_limit: Mapped[float] = mapped_column(sa.Double, default=0.0)
    seconds_at_cpu_limit: Mapped[float] = mapped_column(sa.Double, default=0.0)
    oom_kills: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    samples: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    wall_seconds: Mapped[float] = mapped_column(sa.Double, default=0.0)
    # The workspace ended and these are its final figures: later non-final reports do not replace them.
    final: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    update_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.Index("ix_workspace_usage_owner_period", "owner", "end_time"),
        sa.Index("ix_workspace_usage_period", "end_time"),
    )


class ImageRow(Base):
    """An image in the catalogue; its files are rows of image_files."""
    __tablename__ = "images"

    name: Mapped[str] = mapped_column(sa.String(80), primary_key=True)  # images/{id}
    boot: Mapped[str] = mapped_column(sa.String(16))
    owner: Mapped[str] = mapped_column(sa.String(OWNER_WIDTH))
    visibility: Mapped[str] = mapped_column(sa.String(16))
    kernel_args: Mapped[str] = mapped_column(sa.Text, default="")
    description: Mapped[str] = mapped_column(sa.Text, default="")
    guest_agent: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    create_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        # ListImages for an owner: the public ones and the owner's, by name.
        sa.Index("ix_images_visibility_listing", "visibility", "name"),
        sa.Index("ix_images_owner_listing", "owner", "name"),
    )


class ImageFileRow(Base):
    """One file of an image, kept in the image store at `location` (content-addressed: images
    with the same file share one copy)."""
    __tablename__ = "image_files"

    image_name: Mapped[str] = mapped_column(sa.ForeignKey("images.name", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    format: Mapped[str] = mapped_column(sa.String(16))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    digest: Mapped[str] = mapped_column(sa.String(128))
    location: Mapped[str] = mapped_column(sa.String(1024))

    # Whether another image still uses a stored file, when one is deleted.
    __table_args__ = (sa.Index("ix_image_files_location", "location"),)


class RoleBindingRow(Base):
    """A role granted on a workspace to a member (`identity:<DN>` or `group:<FQAN or group>`).
    The owner's manager role is not a row: it follows from workspaces.owner."""
    __tablename__ = "role_bindings"

    workspace: Mapped[str] = mapped_column(sa.ForeignKey("workspaces.name", ondelete="CASCADE"), primary_key=True)
    member: Mapped[str] = mapped_column(sa.String(600), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(16))  # viewer, operator or manager
    granted_by: Mapped[str] = mapped_column(sa.String(600))
    grant_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    # Which workspaces a caller's members see (the listing's filter for non-owners).
    __table_args__ = (sa.Index("ix_role_bindings_member", "member", "workspace"),)


AUDIT_APPEND_ONLY = "the audit trail is append-only"


class AuditEntryRow(Base):
    """One state-changing call as it was answered. Never updated or deleted: triggers made by
    the migration refuse both, whoever asks."""
    __tablename__ = "audit_entries"

    # BIGINT on PostgreSQL; INTEGER on SQLite, where only an INTEGER PRIMARY KEY autoincrements.
    sequence: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                                          autoincrement=True)
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    identity: Mapped[str] = mapped_column(sa.String(600), default="")
    attributes: Mapped[list[str]] = mapped_column(sa.JSON)
    source: Mapped[str] = mapped_column(sa.String(256), default="")
    service: Mapped[str] = mapped_column(sa.String(128), default="")
    action: Mapped[str] = mapped_column(sa.String(128), default="")
    target: Mapped[str] = mapped_column(sa.String(256), default="")
    outcome: Mapped[str] = mapped_column(sa.String(32), default="")
    message: Mapped[str] = mapped_column(sa.Text, default="")

    __table_args__ = (
        sa.Index("ix_audit_entries_identity", "identity", "sequence"),
        sa.Index("ix_audit_entries_target", "target", "sequence"),
    )


# ----------------------------------------------------------------------------- engine

def default_url(data_dir: pathlib.Path) -> str:
    return f"sqlite:///{pathlib.Path(data_dir) / 'repository.db'}"


def make_engine(url: str, autocommit: bool = False) -> Engine:
    """SQLite: WAL, a busy timeout, foreign keys on, and write transactions that take the write
    lock up front (BEGIN IMMEDIATE) so that two writers never deadlock on a lock upgrade."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                                  pool_size=16, max_overflow=16)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # SQLAlchemy, not pysqlite, says when to BEGIN
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Point reads of a large table: map the file rather than copy pages through read().
            cur.execute("PRAGMA mmap_size=1073741824")
            cur.execute("PRAGMA cache_size=-16384")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            options = conn.get_execution_options()
            if options.get("vws_autocommit"):
                return  # a lone SELECT: no transaction needed
            conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("vws_write") else "BEGIN")
        return engine
    # No pre-ping: it would cost every GetWorkspace a round trip. Connections are recycled instead.
    return sa.create_engine(url, pool_size=16, max_overflow=16, pool_recycle=1800,
                            **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}))


def alembic_config(engine: Engine | None = None, connection: sa.Connection | None = None):
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Brings the schema to `revision` (the latest by default); the only way tables are made."""
    from alembic import command
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection=connection), revision)


class UnitOfWork:
    """One transaction: `with uow(write=True) as session:` commits on success, rolls back on any
    error. Writers on SQLite take the write lock at BEGIN."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._idle: list = []  # point_read's connections (list pop and append are atomic)
        self._disposed = False
        self._writer = engine.execution_options(vws_write=True)
        if engine.dialect.name == "sqlite":
            self._reader = engine.execution_options(vws_autocommit=True)
        else:
            # Its own pool, always in autocommit: switching a pooled connection back and forth
            # would cost round trips on every read.
            self._reader = make_engine(engine.url.render_as_string(hide_password=False), autocommit=True)

    def dispose(self) -> None:
        self._disposed = True
        self._close_idle()
        if self._reader.engine is not self.engine:
            self._reader.dispose()
        self.engine.dispose()

    def __call__(self, write: bool = False) -> "_Transaction":
        return _Transaction(Session(bind=self._writer if write else self.engine, expire_on_commit=False))

    @contextlib.contextmanager
    def point_read(self) -> Iterator[Any]:
        """`with uow.point_read() as connection:` a DBAPI connection in autocommit for one point
        read on the hottest path (Get). Idle ones wait in a list: taking one is a pop, not a
        pool checkout and its reset on return. One that failed is closed, not kept."""
        try:
            connection = self._idle.pop()
        except IndexError:
            pooled = self._reader.raw_connection()
            pooled.detach()  # ours from now on: closed by us, not returned to the pool
            connection = pooled.dbapi_connection
        try:
            yield connection
        except BaseException:
            connection.close()
            raise
        self._idle.append(connection)
        if self._disposed:
            self._close_idle()

    def _close_idle(self) -> None:
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:
                return


class _Transaction:
    def __init__(self, session: Session):
        self.session = session
        self._tx = None

    def __enter__(self) -> Session:
        self._tx = self.session.begin()
        self._tx.__enter__()
        return self.session

    def __exit__(self, *exc) -> None:
        try:
            self._tx.__exit__(*exc)
        finally:
            self.session.close()
