"""Exports as branch tools write them: encodings, delimiters, decimal commas, dates, symbols.

Each case writes a small export the way a real tool would, runs `fedcrm data
validate` and checks the one-line summary, the setting it names, that no value
is printed, and that the named setting makes the export valid.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from pathlib import Path

import pytest

from fedcrm.cli import main
from fedcrm.data import csvfile
from fedcrm.data.loader import load_crm
from fedcrm.data.spec import DataSpec
from fedcrm.data.validate import inspect_dir
from fedcrm.errors import DataValidationError

SECRET = "SECRET-"
N = 12  # customers: above the smallest trainable branch


def _customers(
    n: int = N, signup: Callable[[int], str] = lambda i: "2023-01-05"
) -> list[list[str]]:
    rows = [["customer_id", "branch_id", "signup_date", "consent_analytics", "ccpa_opt_out"]]
    rows += [[f"{SECRET}{i}", "b1", signup(i), "true", "false"] for i in range(n)]
    return rows


def _events(
    n: int = N,
    amount: Callable[[int], str] = lambda i: f"{i}.5",
    when: Callable[[int], str] = lambda i: "2023-03-01T10:00:00",
) -> list[list[str]]:
    rows = [["customer_id", "timestamp", "event_type", "amount", "channel", "product_category"]]
    rows += [[f"{SECRET}{i}", when(i), "purchase", amount(i), "store", "Café"] for i in range(n)]
    return rows


def _write(
    root: Path,
    customers: list[list[str]] | None = None,
    events: list[list[str]] | None = None,
    *,
    delimiter: str = ",",
    encoding: str = "utf-8",
    bom: bytes = b"",
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("customers", customers or _customers()), ("events", events or _events())):
        text = "".join(delimiter.join(r) + "\r\n" for r in rows)
        (root / f"{name}.csv").write_bytes(bom + text.encode(encoding))
    return root


def _validate(root: Path, capsys: pytest.CaptureFixture, *flags: str) -> tuple[int, list[str], str]:
    capsys.readouterr()
    code = main(["data", "validate", str(root), *flags])
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    return code, printed.out.splitlines(), printed.err


@pytest.mark.parametrize(
    ("encoding", "bom"),
    [
        ("utf-8", codecs.BOM_UTF8),
        ("utf-16-le", codecs.BOM_UTF16_LE),
        ("utf-16-be", codecs.BOM_UTF16_BE),
        ("utf-16-le", b""),
        ("utf-16-be", b""),
    ],
)
def test_unicode_exports_are_read_as_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture, encoding: str, bom: bytes
) -> None:
    # Excel's "Unicode text" is UTF-16 with tabs; "CSV UTF-8" starts with a BOM.
    delimiter = "\t" if encoding.startswith("utf-16") else ","
    root = _write(tmp_path, delimiter=delimiter, encoding=encoding, bom=bom)
    assert _validate(root, capsys) == (0, [], _validate(root, capsys)[2])
    data = load_crm(root)
    assert sorted(data.customers["customer_id"])[0] == f"{SECRET}0"
    assert set(data.events["product_category"]) == {"Café"}


def test_cp1252_is_read_only_when_declared(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _write(tmp_path, encoding="cp1252")
    code, out, _ = _validate(root, capsys)
    assert code == 1
    assert out == [
        "events.csv: -: not UTF-8 text (line 2): save the file as UTF-8 (or UTF-16), or pass "
        "the encoding it was written in, e.g. --encoding cp1252 (data.encoding=cp1252) for a "
        "Windows export"
    ]
    assert _validate(root, capsys, "--encoding", "cp1252")[0] == 0
    events = load_crm(root, spec=DataSpec(encoding="cp1252")).events
    assert set(events["product_category"]) == {"Café"}


def test_semicolons_with_decimal_commas(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _write(tmp_path, events=_events(amount=lambda i: f"{i},50"), delimiter=";")
    code, out, _ = _validate(root, capsys)
    assert code == 1
    assert out == [
        f"events.csv: amount: not a number in {N} rows (lines 2, 3, 4, ...): pass --decimal "
        "comma (data.decimal=comma)"
    ]
    assert _validate(root, capsys, "--decimal", "comma")[0] == 0
    amounts = load_crm(root, spec=DataSpec(decimal="comma")).events["amount"]
    assert sorted(amounts)[:2] == [0.5, 1.5]


@pytest.mark.parametrize("delimiter", ["\t", "|", ";"])
def test_other_delimiters_are_sniffed(
    tmp_path: Path, capsys: pytest.CaptureFixture, delimiter: str
) -> None:
    root = _write(tmp_path, delimiter=delimiter)
    assert _validate(root, capsys)[0] == 0
    assert len(load_crm(root).events) == N


def test_a_declared_delimiter_that_does_not_fit_names_the_one_that_does(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = _write(tmp_path, delimiter=";")
    code, out, _ = _validate(root, capsys, "--delimiter", "comma")
    assert code == 1
    assert out[0] == (
        "customers.csv: -: the header holds no contract column when split at `,` (--delimiter "
        "comma); it looks `;`-delimited (line 1): pass --delimiter semicolon "
        "(data.delimiter=semicolon)"
    )


def test_a_header_without_contract_columns_says_so_once(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = _write(tmp_path, events=[["a", "b"], ["1", "2"]] * 3)
    code, out, _ = _validate(root, capsys)
    assert code == 1
    assert out == [
        "events.csv: -: the header holds none of the contract columns (tried `,` `;` tab `|` "
        "as delimiter) (line 1): line 1 must name the columns (customer_id, ...); pass "
        "--delimiter if the file uses another one"
    ]


def test_day_first_dates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _write(
        tmp_path,
        _customers(signup=lambda i: f"{i + 13:02d}/01/2023"),
        _events(when=lambda i: f"{i + 13:02d}/03/2023 10:00"),
    )
    code, out, _ = _validate(root, capsys)
    assert code == 1
    assert out == [
        f"customers.csv: signup_date: not an ISO date (YYYY-MM-DD) in {N} rows (lines 2, 3, "
        "4, ...): this looks like dd/mm/yyyy or mm/dd/yyyy: convert the column to ISO 8601 "
        "(YYYY-MM-DD) before export",
        f"events.csv: timestamp: not an ISO 8601 timestamp in {N} rows (lines 2, 3, 4, ...): "
        "this looks like dd/mm/yyyy or mm/dd/yyyy: convert the column to ISO 8601 "
        "(YYYY-MM-DDTHH:MM:SS) before export",
    ]


@pytest.mark.parametrize(
    ("amount", "fix"),
    [
        (lambda i: f"${i}.50", "remove currency symbols or pass --currency-symbols strip"),
        (lambda i: f"{i} EUR", "remove currency symbols or pass --currency-symbols strip"),
        (
            lambda i: f'"{i},234.50"',
            "remove thousands separators or pass --currency-symbols strip",
        ),
    ],
)
def test_currency_symbols_and_thousands_separators(
    tmp_path: Path, capsys: pytest.CaptureFixture, amount: Callable[[int], str], fix: str
) -> None:
    root = _write(tmp_path, events=_events(amount=amount))
    code, out, _ = _validate(root, capsys)
    assert code == 1
    assert out == [
        f"events.csv: amount: not a number in {N} rows (lines 2, 3, 4, ...): {fix} "
        "(data.currency_symbols=strip)"
    ]
    assert _validate(root, capsys, "--currency-symbols", "strip")[0] == 0
    events = load_crm(root, spec=DataSpec(currency_symbols="strip")).events
    assert sorted(events["amount"])[1] in (1.0, 1.5, 1234.5)


def test_personal_data_gets_drop_advice_never_declare(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    customers = _customers()
    customers[0] += ["E-Mail", "segment"]
    for i, row in enumerate(customers[1:]):
        row += [f"{SECRET}{i}@example.com", "gold"]
    code, out, _ = _validate(_write(tmp_path, customers), capsys)
    assert code == 1
    assert out == [
        "customers.csv: E-Mail: looks like personal data (email address) (line 1): drop the "
        "column before export: fedcrm never needs it",
        "customers.csv: segment: undeclared column (line 1): declare it in the data spec "
        "(data_spec.yaml: `attributes: {segment: numeric}`, or categorical with its categories) "
        "or drop it",
    ]


def test_tiny_branch_is_a_warning_at_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = _write(tmp_path, _customers(3), _events(3))
    code, out, err = _validate(root, capsys)
    assert (code, out) == (0, [])
    assert (
        "warning: customers.csv: branch_id: branch with fewer than 10 consenting customers who "
        "have events in 1 branch (line 2): training leaves out a branch with fewer than 10 "
        "customers active before the cutoff"
    ) in err.splitlines()


def test_a_problem_in_every_row_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    n = 5000
    root = _write(tmp_path, _customers(n), _events(n, amount=lambda i: f"${i}"))
    code, out, err = _validate(root, capsys, "--max-problems", "2")
    assert code == 1
    assert out == [
        f"events.csv: amount: not a number in {n:,} rows (lines 2, 3, 4, ...): remove currency "
        "symbols or pass --currency-symbols strip (data.currency_symbols=strip)",
        "events.csv:2: amount: not a number",
        "events.csv:3: amount: not a number",
    ]
    assert f"{n:,} problem(s) of 1 kind(s)" in err
    # What a branch's ClientApp or `node start` raises is as short.
    with pytest.raises(DataValidationError) as raised:
        load_crm(root)
    assert str(raised.value).splitlines()[1:] == [f"  {out[0]}"]


def test_blocks_cut_between_rows_even_inside_quotes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small blocks: quoted line breaks, blank lines and bad rows fall across block ends.
    events = _events(200)
    events[5][5] = '"two\r\nlines"'
    events[40][5] = '"a, b"'
    events[90] = events[90][:3]
    root = _write(tmp_path, _customers(200), events)
    (root / "events.csv").write_bytes((root / "events.csv").read_bytes() + b"\r\n\r\n")
    whole = inspect_dir(root, max_problems=None)
    monkeypatch.setattr(csvfile, "BLOCK_BYTES", 97)
    small = inspect_dir(root, max_problems=None)
    assert [str(p) for p in small.problems] == [str(p) for p in whole.problems]
    assert [str(p) for p in whole.problems] == [
        "events.csv:92: -: malformed row (3 fields, header has 6)"
    ]
    del events[90]
    root = _write(tmp_path, _customers(200), events)
    data = load_crm(root)
    assert len(data.events) == 199
    assert set(data.events["product_category"]) == {"Café", "two\r\nlines", "a, b"}
