"""A branch's tables read from a real PostgreSQL server: typing, mapping, bad rows,
a lost connection, and credentials that never show."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from fedcrm.cli import main
from fedcrm.client.branch import BranchSettings, load_branch_data
from fedcrm.config import TaskConfig, compose
from fedcrm.data.loader import load_crm
from fedcrm.data.source import branch_source
from fedcrm.data.sql import SqlSource
from fedcrm.errors import ConfigError, DataSourceError

PASSWORD = "pw-SECRET-c0ffee"
SECRET = "SECRET-"
N = 30
SEGMENT = ("gold", "silver")

CUSTOMERS = [
    (f"{SECRET}{i}", "north", f"2023-01-{i % 28 + 1:02d}", i % 10 != 0, i == 7, SEGMENT[i % 2])
    for i in range(N)
]  # fmt: skip
EVENTS = [
    (f"{SECRET}{i}", f"2023-03-{d:02d} 10:00:00+02", t, a, c, "books" if t == "purchase" else "")
    for i in range(N)
    for d, t, a, c in ((1, "purchase", "12.50", "store"), (9 + i % 5, "visit", "0", "web"))
]
SPEC = """
attributes:
  segment: {kind: categorical, categories: [gold, silver]}
"""


def _values(rows: list[tuple[object, ...]]) -> str:
    def lit(v: object) -> str:
        return str(v).lower() if isinstance(v, bool) else f"'{v}'"

    return ",".join("(" + ",".join(lit(v) for v in r) + ")" for r in rows)


@pytest.fixture(scope="module")
def db(postgres, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The branch's database, a login without password in its URL, and a spec."""
    postgres.execute(f"CREATE ROLE branch_it LOGIN PASSWORD '{PASSWORD}'")
    postgres.execute("CREATE DATABASE crm OWNER branch_it")
    ddl = f"""
    SET ROLE branch_it;
    CREATE TABLE customers (customer_id text, branch_id text, signup_date date,
        consent_analytics boolean, ccpa_opt_out boolean, segment text);
    CREATE TABLE events (customer_id text, "timestamp" timestamptz, event_type text,
        amount numeric(10, 2), channel text, product_category text);
    INSERT INTO customers VALUES {_values(CUSTOMERS)};
    INSERT INTO events VALUES {_values(EVENTS)};
    CREATE TABLE crm_people AS SELECT row_number() OVER () AS cust_no, branch_id AS store,
        signup_date AS joined, consent_analytics AS ok, ccpa_opt_out AS opted_out,
        segment AS tier, customer_id AS old_id FROM customers;
    CREATE TABLE bad_events AS SELECT * FROM events;
    INSERT INTO bad_events VALUES
        ('{SECRET}1', '2023-03-05 10:00:00+00', 'purchase', -77.70, 'store', ''),
        ('{SECRET}404', '2023-03-06 10:00:00+00', 'SECRET-type', 1, 'web', ''),
        ('{SECRET}2', '2023-03-07 10:00:00+00', 'purchase', 5, 'SECRET-channel', '');
    """
    postgres.execute(ddl, dbname="crm")
    spec = tmp_path_factory.mktemp("spec") / "data_spec.yaml"
    spec.write_text(SPEC)
    return {"url": postgres.url("branch_it", "crm"), "spec": spec, "server": postgres}


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", PASSWORD)


def _spec_with(tmp_path: Path, sql: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC + "sql:\n" + sql)
    return spec


def test_tables_load_like_the_same_export_on_disk(
    db: dict[str, object], password: None, tmp_path: Path
) -> None:
    from_db = branch_source(url=str(db["url"]), spec_path=db["spec"]).load()
    export = tmp_path / "export"
    export.mkdir()
    header = "customer_id,branch_id,signup_date,consent_analytics,ccpa_opt_out,segment\n"
    (export / "customers.csv").write_text(
        header + "".join(",".join(str(v).lower() if isinstance(v, bool) else str(v)
                                  for v in r) + "\n" for r in CUSTOMERS)
    )  # fmt: skip
    events = [
        (c, t.replace(" ", "T").replace("+02", "+02:00"), e, a, ch, p)
        for c, t, e, a, ch, p in EVENTS
    ]
    (export / "events.csv").write_text(
        "customer_id,timestamp,event_type,amount,channel,product_category\n"
        + "".join(",".join(r) + "\n" for r in events)
    )
    (export / "data_spec.yaml").write_text(SPEC)
    from_files = load_crm(export)
    pd.testing.assert_frame_equal(from_db.customers, from_files.customers)
    pd.testing.assert_frame_equal(from_db.events, from_files.events)
    assert from_db.excluded == {"north": 4}  # 3 without consent, 1 opted out
    assert from_db.events["timestamp"].min() == pd.Timestamp("2023-03-01 08:00")


def test_a_query_maps_crm_columns_to_the_contract(
    db: dict[str, object], password: None, tmp_path: Path
) -> None:
    spec = _spec_with(
        tmp_path,
        "  customers: SELECT old_id AS customer_id, store AS branch_id, joined AS signup_date,"
        " ok AS consent_analytics, opted_out AS ccpa_opt_out, tier AS segment FROM crm_people\n",
    )
    data = branch_source(url=str(db["url"]), spec_path=spec).load()
    assert len(data.customers) == N - 4 and len(data.events) == 2 * (N - 4)


def test_bad_rows_are_summarised_without_values(
    db: dict[str, object], password: None, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = _spec_with(tmp_path, "  events: bad_events\n")
    capsys.readouterr()
    assert main(["data", "validate", "--url", str(db["url"]), "--spec", str(spec)]) == 1
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [
        "bad_events: amount: negative amount (must be >= 0) in 1 row (line 62): record a refund "
        "as event_type return with a positive amount",
        "bad_events: customer_id: event for a customer not in customers in 1 row (line 63): "
        "export every customer who has events (consent is applied after validation)",
        "bad_events: event_type: unknown event_type (expected one of purchase, visit, return, "
        "support, email_open, web_visit) in 1 row (line 63): map the branch's own event_type "
        "values to these before export",
        "bad_events: channel: unknown channel (expected one of store, web, app, phone, email) "
        "in 1 row (line 64): map the branch's own channel values to these before export",
    ]
    shown = printed.out + printed.err
    assert SECRET not in shown and "77.7" not in shown and PASSWORD not in shown
    assert "postgresql://branch_it@127.0.0.1" in printed.err


def test_a_lost_connection_is_a_clear_error_and_nothing_is_kept(
    db: dict[str, object], password: None, tmp_path: Path
) -> None:
    # The server ends the session part-way through the events (as a restart would).
    spec = _spec_with(
        tmp_path,
        "  events: SELECT customer_id, timestamp, event_type, amount, channel, product_category"
        " FROM (SELECT e.*, row_number() OVER () AS n FROM events e) q"
        " WHERE CASE WHEN n > 20 THEN pg_terminate_backend(pg_backend_pid()) ELSE true END\n",
    )
    with pytest.raises(DataSourceError) as lost:
        branch_source(url=str(db["url"]), spec_path=spec).load()
    assert str(lost.value) == (
        "postgresql://branch_it@127.0.0.1:"
        f"{db['server'].port}/crm: the connection was lost while reading events query; "  # type: ignore[attr-defined]
        "nothing was kept, run again once the database is reachable"
    )
    settings = BranchSettings.from_node_config(
        {"branch-id": "north", "data-url": str(db["url"]), "data-spec": str(spec),
         "cache-dir": str(tmp_path / "cache")}
    )  # fmt: skip
    with pytest.raises(DataSourceError, match="connection was lost"):
        load_branch_data(settings, TaskConfig(cutoff="2023-03-05", horizon_days=30))
    assert not (tmp_path / "cache").exists()
    healthy = BranchSettings.from_node_config(
        {"branch-id": "north", "data-url": str(db["url"]), "data-spec": str(db["spec"])}
    )
    data = load_branch_data(healthy, TaskConfig(cutoff="2023-03-05", horizon_days=30))
    assert len(data.train) + len(data.test) == N - 4


def test_a_password_never_travels_in_a_url(db: dict[str, object], tmp_path: Path) -> None:
    with_password = db["server"].url("branch_it", "crm", PASSWORD)  # type: ignore[attr-defined]
    refusals = []
    for attempt in (
        lambda: SqlSource(url=with_password),
        lambda: branch_source(url=with_password),
        lambda: BranchSettings.from_node_config({"branch-id": "b", "data-url": with_password}),
        lambda: compose(["data=sql", f"data.url={with_password}"]),
    ):
        with pytest.raises(ConfigError) as refused:
            attempt()
        refusals.append(str(refused.value))
    from fedcrm.cli.simulate import check_overrides

    with pytest.raises(ConfigError) as refused:
        check_overrides(["data=sql", f"data.url={with_password}"])
    refusals.append(str(refused.value))
    assert all(PASSWORD not in r and "password" in r for r in refusals), refusals


def test_the_password_comes_from_the_environment_pgpass_or_a_private_file(
    db: dict[str, object],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "missing"))
    url = str(db["url"])
    with pytest.raises(DataSourceError) as denied:
        branch_source(url=url, spec_path=db["spec"]).load()
    assert "authentication failed" in str(denied.value) or "cannot connect" in str(denied.value)
    monkeypatch.setenv("PGPASSWORD", "wrong-" + PASSWORD)
    with pytest.raises(DataSourceError, match="authentication failed") as denied:
        branch_source(url=url, spec_path=db["spec"]).load()
    assert PASSWORD not in str(denied.value)
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:*:crm:branch_it:{PASSWORD}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    assert len(branch_source(url=url, spec_path=db["spec"]).load().customers) == N - 4
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "missing"))
    url_file = tmp_path / "crm.url"
    url_file.write_text(db["server"].url("branch_it", "crm", PASSWORD) + "\n")  # type: ignore[attr-defined]
    url_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        branch_source(url_file=url_file, spec_path=db["spec"]).load()
    url_file.chmod(0o600)
    source = branch_source(url_file=url_file, spec_path=db["spec"])
    assert len(source.load().customers) == N - 4
    assert PASSWORD not in source.describe()
    cfg = compose(["data=sql", f"data.url_file={url_file}", f"data.spec={db['spec']}"])
    assert PASSWORD not in cfg.model_dump_json()
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


def test_node_start_checks_the_database_like_an_export(
    db: dict[str, object], password: None, tmp_path: Path
) -> None:
    from fedcrm.deploy.preflight import Report, check_data

    ok = Report()
    check_data({"branch-id": "north", "data-url": str(db["url"]), "data-spec": str(db["spec"])},
               "north", ok)  # fmt: skip
    assert ok.problems == []
    bad = Report()
    spec = _spec_with(tmp_path, "  events: bad_events\n")
    check_data({"branch-id": "north", "data-url": str(db["url"]), "data-spec": str(spec)},
               "north", bad)  # fmt: skip
    assert len(bad.problems) == 1 and bad.problems[0].startswith("--data-url: postgresql")
    assert "bad_events: amount: negative amount" in bad.problems[0]
    assert SECRET not in bad.problems[0] and PASSWORD not in bad.problems[0]


def test_simulate_reads_the_database_from_overrides(
    db: dict[str, object], password: None, tmp_path: Path
) -> None:
    from fedcrm.simulations.simulate import load_run_data

    cfg = compose(["data=sql", f"data.url={db['url']}", f"data.spec={db['spec']}"])
    assert cfg.data.url == db["url"]  # type: ignore[union-attr]
    data = load_run_data(cfg, tmp_path)
    assert data.branches() == ["north"] and data.attribute_columns == ("segment",)
