"""A branch's contract tables read straight from its CRM database (SQLAlchemy).

``data=sql data.url=postgresql://user@host/crm`` (``fedcrm data validate --url``,
node config ``data-url``) names the database; the data spec's ``sql`` section
says where the two tables are, each a table name or a ``SELECT`` whose column
names are the contract's (``SELECT cust_no AS customer_id, ...``). Rows are
streamed with a server-side cursor inside one read-only transaction, checked
chunk by chunk like a file (``line`` = row index + 2), and typed values
(timestamps, dates, booleans, decimals) are read as their contract text.

Credentials: a URL given on a command line, in an override or in a node config
must not hold a password (it would show in process lists, ``config.yaml`` and
logs); the password comes from the environment (``PGPASSWORD``), a
``~/.pgpass`` file (``PGPASSFILE``), or a URL file readable by its owner only
(``data.url_file``, node config ``data-url-file``). Errors name the database
without its password and never quote a row.
"""

from __future__ import annotations

import logging
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fedcrm.data.loader import CRMData, crm_from_inspection
from fedcrm.data.problems import DEFAULT_MAX_DETAILS, ProblemLog
from fedcrm.data.reading import Chunk, bad_header, to_text
from fedcrm.data.spec import DataSpec
from fedcrm.data.validate import Inspection, SourcePair, inspect_pairs
from fedcrm.errors import ConfigError, DataSourceError

logger = logging.getLogger(__name__)

ROWS_PER_CHUNK = 200_000
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
_QUERY = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)
_PASSWORD_HELP = (
    "put the password in PGPASSWORD, in ~/.pgpass, or in a URL file readable only by "
    "its owner (data.url_file, --url-file, node config data-url-file)"
)


@dataclass(frozen=True)
class SqlSource:
    """Where the database is: a URL without password, or a private file holding one."""

    url: str | None = None
    url_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.url_file is None):
            raise ConfigError("give exactly one of a database URL and a URL file")
        if self.url is not None and _parse(self.url, "the database URL").password is not None:
            raise ConfigError(
                f"the database URL must not hold a password (it would show in process "
                f"lists, logs and config.yaml); {_PASSWORD_HELP}"
            )

    def _url(self) -> Any:
        if self.url is not None:
            return _parse(self.url, "the database URL")
        path = Path(str(self.url_file))
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"database URL file {path} cannot be read ({exc.strerror})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"database URL file {path} is readable by group or others; run `chmod 600 {path}`"
            )
        return _parse(text, f"the URL in {path}")

    def describe(self) -> str:
        """The database, as a user may see it (no password)."""
        return str(self._url().render_as_string(hide_password=True))

    def engine(self) -> Any:
        """A SQLAlchemy engine (``postgresql://`` uses the psycopg 3 driver)."""
        try:
            from sqlalchemy import create_engine
        except ModuleNotFoundError:
            raise ConfigError(
                "a database source needs SQLAlchemy and a driver: pip install 'fedcrm[sql]'"
            ) from None
        url = self._url()
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        args = {"connect_timeout": 10} if url.drivername.startswith("postgresql") else {}
        try:
            return create_engine(url, connect_args=args, pool_pre_ping=False)
        except (ImportError, ModuleNotFoundError):
            raise ConfigError(
                f"no database driver for {url.drivername}: pip install 'fedcrm[sql]'"
            ) from None


def _parse(text: str, what: str) -> Any:
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
    except ModuleNotFoundError:
        raise ConfigError(
            "a database source needs SQLAlchemy and a driver: pip install 'fedcrm[sql]'"
        ) from None
    try:
        return make_url(text)
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"{what} is not a database URL (e.g. postgresql://user@host:5432/crm)"
        ) from None


def source_error(exc: BaseException, source: SqlSource, reading: str) -> DataSourceError:
    """A :class:`DataSourceError` for a driver error, without data or password."""
    orig = getattr(exc, "orig", exc)
    state = str(getattr(orig, "sqlstate", "") or "")
    where = source.describe()
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if state.startswith("28"):
        return DataSourceError(f"{where}: authentication failed; {_PASSWORD_HELP}")
    if state.startswith("42"):  # names of tables/columns, or the query's syntax
        return DataSourceError(f"{where}: cannot read {reading}: {first}")
    if getattr(exc, "connection_invalidated", False) or state.startswith(("08", "57P")):
        return DataSourceError(
            f"{where}: the connection was lost while reading {reading}; nothing was kept, "
            "run again once the database is reachable"
        )
    if not state:  # no SQLSTATE: the client could not connect at all
        return DataSourceError(f"{where}: cannot connect ({first})")
    return DataSourceError(
        f"{where}: reading {reading} failed ({type(orig).__name__}, SQLSTATE {state})"
    )


def _statement(source: str, conn: Any) -> Any:
    from sqlalchemy import text

    if _QUERY.match(source):
        return text(source)
    if not _TABLE.match(source.strip()):
        raise ConfigError(
            f"data spec sql: {source!r} is neither a table name (schema.table) nor a SELECT"
        )
    quote = conn.dialect.identifier_preparer.quote
    name = ".".join(quote(part) for part in source.strip().split("."))
    return text(f"SELECT * FROM {name}")


def _column(values: list[Any]) -> pa.Array:
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        arr = pa.array([None if v is None else str(v) for v in values], pa.string())
    if pa.types.is_null(arr.type):
        arr = pa.array([""] * len(values), pa.string())
    return to_text(arr)


class SqlTable:
    """One contract table from a database (see :class:`~fedcrm.data.reading.TableReader`)."""

    def __init__(self, conn: Any, query: str, name: str, source: SqlSource) -> None:
        self.conn = conn
        self.query = query
        self.name = name
        self.source = source
        self.failed = False
        self._result: Any = None

    def open(self, log: ProblemLog) -> list[str] | None:
        """Run the query; its column names."""
        from sqlalchemy.exc import DBAPIError

        try:
            statement = _statement(self.query, self.conn)
            self._result = self.conn.execution_options(
                stream_results=True, yield_per=ROWS_PER_CHUNK
            ).execute(statement)
        except DBAPIError as exc:
            raise source_error(exc, self.source, self.name) from None
        header = [str(k).strip() for k in self._result.keys()]  # noqa: SIM118 - a Result
        return None if bad_header(header, self.name, log) else header

    def chunks(self, log: ProblemLog) -> Iterator[Chunk]:
        """Rows in chunks of :data:`ROWS_PER_CHUNK`, as contract text."""
        from sqlalchemy.exc import DBAPIError

        header = list(self._result.keys())
        start = 2
        try:
            for rows in self._result.partitions(ROWS_PER_CHUNK):
                cols = list(zip(*rows, strict=True)) if rows else [() for _ in header]
                columns = {
                    str(n).strip(): _column(list(c)) for n, c in zip(header, cols, strict=True)
                }
                yield Chunk(columns, np.arange(start, start + len(rows), dtype=np.int64))
                start += len(rows)
        except DBAPIError as exc:
            raise source_error(exc, self.source, self.name) from None


def _label(query: str, table: str) -> str:
    return query.strip() if _TABLE.match(query.strip()) else f"{table} query"


def inspect_sql(
    source: SqlSource,
    spec: DataSpec,
    *,
    max_problems: int | None = DEFAULT_MAX_DETAILS,
    events: bool = True,
) -> Inspection:
    """Validate the contract tables in a database and type them.

    Raises
    ------
    DataSourceError
        When the database cannot be reached or the connection is lost (the
        inspection is then discarded whole).
    """
    from sqlalchemy.exc import DBAPIError

    log = ProblemLog(max_problems)
    engine = source.engine()
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                from sqlalchemy import text

                conn.execute(text("SET TRANSACTION READ ONLY"))
            pair = SourcePair(
                SqlTable(conn, spec.sql.customers, _label(spec.sql.customers, "customers"), source),
                SqlTable(conn, spec.sql.events, _label(spec.sql.events, "events"), source),
            )
            found = inspect_pairs([pair], spec, log, events=events)
            conn.rollback()
    except DBAPIError as exc:
        raise source_error(exc, source, "the database") from None
    finally:
        engine.dispose()
    logger.info("database %s read", source.describe())
    return found


def load_sql(
    source: SqlSource, spec: DataSpec, *, max_problems: int | None = DEFAULT_MAX_DETAILS
) -> CRMData:
    """Validate, parse and consent-filter the contract tables of a database.

    Raises
    ------
    DataValidationError
        When the tables break the contract.
    DataSourceError
        When the database cannot be read.
    """
    return crm_from_inspection(inspect_sql(source, spec, max_problems=max_problems))


__all__ = [
    "SqlSource",
    "SqlTable",
    "inspect_sql",
    "load_sql",
    "source_error",
]
