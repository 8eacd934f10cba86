"""CSV files as branch tools write them, read in blocks into text chunks with file lines.

Exports arrive as Excel and CRM tools write them. A CSV file's encoding is
found from its byte-order mark (UTF-8, UTF-16 LE/BE), or from the pattern of
NUL bytes of UTF-16 without one, else UTF-8 is assumed; a Windows code page
(cp1252, latin-1) is used only when declared, since any byte sequence decodes
in it. The delimiter (``,`` ``;`` tab ``|``) is the one that splits the header
line into contract column names, unless declared.

Files are read in blocks of :data:`BLOCK_BYTES` cut at a line end outside
quotes, so memory stays bounded whatever the file size. A block in which every
line is one row goes through Arrow's multi-threaded CSV parser; any other block
(blank lines, quoted line breaks, a row with the wrong number of fields) is
re-read with :mod:`csv`, which names each malformed line. Every problem is
recorded in a :class:`~fedcrm.data.problems.ProblemLog` with the setting that
fixes it; none quotes a value.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from fedcrm.data.problems import ProblemLog
from fedcrm.data.reading import WHOLE, Chunk, bad_header, strip
from fedcrm.data.spec import DELIMITERS, DataSpec

BLOCK_BYTES = 16 << 20
_HEAD_BYTES = 1 << 16
_SHOW = {",": "`,`", ";": "`;`", "\t": "tab", "|": "`|`"}
_NAME = {v: k for k, v in DELIMITERS.items()}
_ENCODING_FIX = (
    "save the file as UTF-8 (or UTF-16), or pass the encoding it was written in, e.g. "
    "--encoding cp1252 (data.encoding=cp1252) for a Windows export"
)


# ------------------------------------------------------------------ encoding
def detect_encoding(head: bytes, declared: str) -> tuple[str | None, int]:
    """The codec of a file starting with ``head`` and the length of its byte-order mark.

    Returns ``(None, 0)`` when ``declared`` is ``auto`` and the bytes are not
    text (NUL bytes that do not follow the UTF-16 pattern).
    """
    if head.startswith(codecs.BOM_UTF8) and declared in ("auto", "utf-8"):
        return "utf-8", 3
    for bom, codec in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if head.startswith(bom) and declared in ("auto", "utf-16", codec):
            return codec, 2
    if declared not in ("auto", "utf-16"):
        return declared, 0
    sample = head[:4096]
    half = max(len(sample) // 2, 1)
    zeros_even = sample[0::2].count(0) / half
    zeros_odd = sample[1::2].count(0) / half
    if zeros_odd > 0.3 and zeros_even < 0.05:
        return "utf-16-le", 0
    if zeros_even > 0.3 and zeros_odd < 0.05:
        return "utf-16-be", 0
    if declared == "utf-16":
        return "utf-16-le", 0
    return (None, 0) if 0 in sample else ("utf-8", 0)


# ----------------------------------------------------------------- delimiter
def _split(line: str, delim: str) -> list[str]:
    try:
        return [c.strip() for c in next(csv.reader([line], delimiter=delim), [])]
    except csv.Error:
        return []


def choose_delimiter(
    line: str, declared: str, known: Sequence[str], name: str, log: ProblemLog
) -> str | None:
    """The delimiter of a CSV file whose header is ``line`` (``None``: a problem was logged).

    The delimiter is the one that splits the header into the most contract
    column names (``known``); a declared one is used unless another one finds
    contract columns and it finds none.
    """
    scores = {d: len(set(_split(line, d)) & set(known)) for d in DELIMITERS.values()}
    best = max(scores.values())
    if declared != "auto":
        chosen = DELIMITERS[declared]
        if scores[chosen] > 0 or best == 0:
            return chosen
        seen = max(scores, key=lambda d: scores[d])
        log.one(
            name,
            1,
            WHOLE,
            f"the header holds no contract column when split at {_SHOW[chosen]} "
            f"(--delimiter {declared}); it looks {_SHOW[seen]}-delimited",
            fix=f"pass --delimiter {_NAME[seen]} (data.delimiter={_NAME[seen]})",
        )
        return None
    if best == 0:
        log.one(
            name,
            1,
            WHOLE,
            "the header holds none of the contract columns (tried `,` `;` tab `|` as delimiter)",
            fix="line 1 must name the columns (customer_id, ...); pass --delimiter if the file "
            "uses another one",
        )
        return None
    winners = [d for d, s in scores.items() if s == best]
    present = [d for d in winners if d in line]
    winners = present or winners[:1]
    if len(winners) > 1:
        names = " or ".join(f"--delimiter {_NAME[d]}" for d in winners)
        log.one(
            name,
            1,
            WHOLE,
            "cannot tell the delimiter: the header splits into contract columns at "
            + " and at ".join(_SHOW[d] for d in winners),
            fix=f"pass {names}",
        )
        return None
    return winners[0]


# ----------------------------------------------------------------------- CSV
class CsvTable:
    """A CSV file read in blocks (see the module docstring)."""

    def __init__(self, path: Path, name: str, spec: DataSpec, known: Sequence[str]) -> None:
        self.path = path
        self.name = name
        self.spec = spec
        self.known = tuple(known)
        self.header: list[str] = []
        self.delimiter = ","
        self.encoding = "utf-8"
        self.failed = False
        self._bom = 0

    def open(self, log: ProblemLog) -> list[str] | None:
        """Find encoding, delimiter and header (see :class:`TableReader`)."""
        with self.path.open("rb") as f:
            head = f.read(_HEAD_BYTES)
        if not head.strip(b" \t\r\n\x00\xef\xbb\xbf\xff\xfe"):
            log.one(self.name, 0, WHOLE, "empty file (no header line)", fix="export the header")
            return None
        encoding, self._bom = detect_encoding(head, self.spec.encoding)
        if encoding is None:
            log.one(self.name, 0, WHOLE, "not a text file (NUL bytes)", fix=_ENCODING_FIX)
            return None
        self.encoding = encoding
        decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        first = decoder.decode(head[self._bom :], final=False).split("\n", 1)[0].rstrip("\r")
        delim = choose_delimiter(first, self.spec.delimiter, self.known, self.name, log)
        if delim is None:
            return None
        self.delimiter = delim
        self.header = _split(first, delim)
        if not self.header or bad_header(self.header, self.name, log):
            return None
        return self.header

    def _utf8_blocks(self, log: ProblemLog) -> Iterator[bytes]:
        """The file as UTF-8 bytes, in blocks."""
        with self.path.open("rb") as f:
            f.seek(self._bom)
            if self.encoding == "utf-8":
                while block := f.read(BLOCK_BYTES):
                    yield block
                return
            decoder = codecs.getincrementaldecoder(self.encoding)(errors="strict")
            lines = 0
            while True:
                raw = f.read(BLOCK_BYTES)
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError:
                    log.one(
                        self.name, lines + 1, WHOLE, f"not {self.encoding} text", fix=_ENCODING_FIX
                    )
                    self.failed = True
                    return
                lines += text.count("\n")
                if text:
                    yield text.encode("utf-8")
                if not raw:
                    return

    def _pieces(self, log: ProblemLog) -> Iterator[tuple[bytes, int, int]]:
        """Runs of whole rows (cut at a line end outside quotes), their first line and
        their number of line ends."""
        carry = b""
        line = 1
        header_done = False
        for block in self._utf8_blocks(log):
            buf = carry + block
            cut = _cut(buf)
            piece, carry = buf[:cut], buf[cut:]
            if not header_done and piece:
                _, _, piece = piece.partition(b"\n")
                header_done = True
                line = 2
            if piece:
                ends = piece.count(b"\n")
                yield piece, line, ends
                line += ends
        if carry:
            if not header_done:
                _, _, carry = carry.partition(b"\n")
                line = 2
            if carry:
                yield carry, line, carry.count(b"\n")

    def chunks(self, log: ProblemLog) -> Iterator[Chunk]:
        """Parse each piece (see :class:`TableReader`)."""
        for piece, line, ends in self._pieces(log):
            if not piece.isascii():
                try:
                    piece.decode("utf-8")
                except UnicodeDecodeError as exc:
                    at = line + piece[: exc.start].count(b"\n")
                    log.one(self.name, at, WHOLE, "not UTF-8 text", fix=_ENCODING_FIX)
                    self.failed = True
                    return
            chunk = self._fast(piece, line, ends)
            if chunk is None:
                chunk = self._slow(piece, line, log)
            if chunk is None:
                self.failed = True
                return
            if len(chunk):
                yield chunk

    def _fast(self, piece: bytes, line: int, ends: int) -> Chunk | None:
        if piece.count(b'"') % 2:  # only the file's last piece can be (an unclosed quote)
            return None
        invalid: list[int] = []

        def _on_invalid(row: pacsv.InvalidRow) -> str:
            invalid.append(1)
            return "skip"

        try:
            table = pacsv.read_csv(
                io.BytesIO(piece),
                read_options=pacsv.ReadOptions(column_names=self.header),
                parse_options=pacsv.ParseOptions(
                    delimiter=self.delimiter, invalid_row_handler=_on_invalid
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(self.header, pa.string()),
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid:
            return None
        n_lines = ends + (0 if piece.endswith(b"\n") else 1)
        if invalid or table.num_rows != n_lines:
            return None
        columns = {n: strip(table.column(i)) for i, n in enumerate(self.header)}
        return Chunk(columns, np.arange(line, line + table.num_rows, dtype=np.int64))

    def _slow(self, piece: bytes, line: int, log: ProblemLog) -> Chunk | None:
        text = piece.decode("utf-8")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.delimiter, strict=True)
        width = len(self.header)
        rows: list[list[str]] = []
        lines: list[int] = []
        bad_lines: list[int] = []
        notes: list[str] = []
        prev = 0
        try:
            for row in reader:
                start, prev = line + prev, reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != width:
                    bad_lines.append(start)
                    notes.append(f"{len(row)} fields, header has {width}")
                    continue
                rows.append(row)
                lines.append(start)
        except csv.Error:
            log.one(
                self.name,
                line + reader.line_num - 1,
                WHOLE,
                "malformed CSV (unbalanced quotes)",
                fix="close every quoted field with a double quote",
            )
            return None
        log.add(
            self.name,
            WHOLE,
            "malformed row",
            bad_lines,
            notes=notes,
            fix=f"every row needs {width} fields; quote fields that contain the delimiter "
            f"{_SHOW[self.delimiter]}",
        )
        columns = {
            n: strip(pa.array([r[i] for r in rows], type=pa.string()))
            for i, n in enumerate(self.header)
        }
        return Chunk(columns, np.asarray(lines, dtype=np.int64))


def _cut(buf: bytes) -> int:
    """Where to cut ``buf``: after its last line end outside quotes (0: keep it all)."""
    pos = len(buf)
    after = 0  # quotes after pos
    total = buf.count(b'"')
    while True:
        nl = buf.rfind(b"\n", 0, pos)
        if nl < 0:
            return 0
        after += buf.count(b'"', nl + 1, pos)
        if (total - after) % 2 == 0:
            return nl + 1
        pos = nl
