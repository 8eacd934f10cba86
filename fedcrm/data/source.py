"""Where a branch's data comes from (an export directory or a database) and its data spec.

One resolution shared by ``fedcrm data validate``, ``fedcrm node start``,
``fedcrm simulate`` and the ClientApp, so that all four read the same data the
same way: the spec is the file named explicitly (``--spec``, ``data.spec``,
node-config ``data-spec``), else the export directory's ``data_spec.yaml``;
read settings given on the command line win over the spec's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcrm.data.loader import CRMData, crm_from_inspection
from fedcrm.data.problems import DEFAULT_MAX_DETAILS
from fedcrm.data.spec import DataSpec, resolve_spec
from fedcrm.data.validate import Inspection, inspect_dir
from fedcrm.errors import ConfigError

if TYPE_CHECKING:
    from fedcrm.data.sql import SqlSource


@dataclass(frozen=True)
class BranchSource:
    """An export directory or a database, with the spec to read it by."""

    spec: DataSpec
    path: Path | None = None
    sql: SqlSource | None = None

    def describe(self) -> str:
        """The source as a user may see it (a database without its password)."""
        if self.sql is not None:
            return self.sql.describe()
        return str(self.path)

    def inspect(
        self, *, max_problems: int | None = DEFAULT_MAX_DETAILS, events: bool = True
    ) -> Inspection:
        """Validate the source and type its tables (the events only when ``events``).

        Raises
        ------
        DataSourceError
            When a database cannot be read.
        """
        if self.sql is not None:
            from fedcrm.data.sql import inspect_sql

            return inspect_sql(self.sql, self.spec, max_problems=max_problems, events=events)
        assert self.path is not None
        return inspect_dir(self.path, spec=self.spec, max_problems=max_problems, events=events)

    def load(self, *, max_problems: int | None = DEFAULT_MAX_DETAILS) -> CRMData:
        """Validated, consent-filtered tables (see :func:`fedcrm.data.loader.load_crm`)."""
        return crm_from_inspection(self.inspect(max_problems=max_problems))


def branch_source(
    *,
    path: str | Path | None = None,
    url: str | None = None,
    url_file: str | Path | None = None,
    spec_path: str | Path | None = None,
    attribute_columns: Sequence[str] = (),
    **settings: Any,
) -> BranchSource:
    """Resolve a branch's source and spec.

    Parameters
    ----------
    path : str or Path, optional
        The export directory.
    url, url_file : optional
        A database URL without password, or a private file holding the URL
        (see :mod:`fedcrm.data.sql`); instead of ``path``.
    spec_path : str or Path, optional
        The data spec file; default ``path/data_spec.yaml`` when present.
    attribute_columns : sequence of str
        Extra numeric attribute columns.
    **settings
        ``encoding``, ``delimiter``, ``decimal``, ``currency_symbols`` (``None``:
        the spec's).

    Raises
    ------
    ConfigError
        When not exactly one source is given, or the spec or a setting is invalid.
    """
    given = [x for x in (path, url, url_file) if x is not None and str(x).strip()]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one data source: an export directory, a database URL or a URL file"
        )
    spec = resolve_spec(
        path if path else None,
        spec_path=spec_path,
        attribute_columns=attribute_columns,
        **settings,
    )
    if path:
        return BranchSource(spec, path=Path(path))
    from fedcrm.data.sql import SqlSource

    sql = SqlSource(url=url or None, url_file=Path(url_file) if url_file else None)
    return BranchSource(spec, sql=sql)
