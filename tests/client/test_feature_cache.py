"""The branch's on-disk feature cache (``cache-dir``): hits, invalidation, privacy, failures."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from fedcrm.client import branch as branch_mod
from fedcrm.client.branch import BranchSettings, load_branch_data
from fedcrm.client.feature_cache import KEEP, PREFIX, cached_features
from fedcrm.config import TaskConfig


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedcrm.data.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("crm") / "b", branches=1, customers=120, seed=5)


class Counter:
    """A stand-in computation that counts its calls (its value is a small dict)."""

    def __init__(self) -> None:
        self.calls = 0

    def compute(self) -> dict[str, int]:
        self.calls += 1
        return {"value": 42}

    @staticmethod
    def read(entry: Path) -> dict[str, int]:
        return {"value": int((entry / "v.txt").read_text())}

    @staticmethod
    def write(entry: Path, value: dict[str, int]) -> None:
        (entry / "v.txt").write_text(str(value["value"]))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """An export directory with one file."""
    out = tmp_path / "export"
    out.mkdir()
    (out / "events.csv").write_text("a\n")
    return out


def _cached(cache: Path, data: Path, counter: Counter, **fingerprint: object) -> dict[str, int]:
    return cached_features(
        cache,
        data,
        fingerprint=fingerprint or {"task": "t"},
        compute=counter.compute,
        read=counter.read,
        write=counter.write,
    )


def test_second_load_reads_the_cache(tmp_path: Path, data: Path) -> None:
    counter = Counter()
    assert _cached(tmp_path / "cache", data, counter) == {"value": 42}
    assert _cached(tmp_path / "cache", data, counter) == {"value": 42}
    assert counter.calls == 1


def test_a_changed_export_or_task_is_featurised_again(tmp_path: Path, data: Path) -> None:
    counter = Counter()
    _cached(tmp_path / "cache", data, counter)
    (data / "events.csv").write_text("a changed export\n")
    _cached(tmp_path / "cache", data, counter)
    assert counter.calls == 2
    _cached(tmp_path / "cache", data, counter, task="another")
    assert counter.calls == 3


def test_only_the_newest_entries_are_kept(tmp_path: Path, data: Path) -> None:
    counter = Counter()
    for i in range(KEEP + 3):
        _cached(tmp_path / "cache", data, counter, task=i)
    assert len(list((tmp_path / "cache").glob(PREFIX + "*"))) == KEEP


def test_the_cache_is_private(tmp_path: Path, data: Path) -> None:
    _cached(tmp_path / "cache", data, Counter())
    cache = tmp_path / "cache"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    (entry,) = cache.glob(PREFIX + "*")
    for f in entry.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_a_broken_entry_is_recomputed(tmp_path: Path, data: Path) -> None:
    counter = Counter()
    _cached(tmp_path / "cache", data, counter)
    (entry,) = (tmp_path / "cache").glob(PREFIX + "*")
    (entry / "v.txt").write_text("not a number")
    assert _cached(tmp_path / "cache", data, counter) == {"value": 42}
    assert counter.calls == 2


def test_a_cache_path_that_is_a_file_is_bypassed(tmp_path: Path, data: Path) -> None:
    (tmp_path / "cache").write_text("not a directory")
    counter = Counter()
    assert _cached(tmp_path / "cache", data, counter) == {"value": 42}
    assert _cached(tmp_path / "cache", data, counter) == {"value": 42}
    assert counter.calls == 2


def test_branch_data_from_the_cache_equals_featurised(export: Path, tmp_path: Path) -> None:
    task = TaskConfig()
    settings = BranchSettings(branch_id="branch_00", data_path=export, cache_dir=tmp_path / "c")
    fresh = load_branch_data(settings, task)
    branch_mod._CACHE.clear()  # as in a new ClientApp process
    cached = load_branch_data(settings, task)
    assert len(list((tmp_path / "c").glob(PREFIX + "*"))) == 1
    for name in ("train", "test"):
        a, b = getattr(fresh, name), getattr(cached, name)
        np.testing.assert_array_equal(a.tabular, b.tabular)
        np.testing.assert_array_equal(a.seq_num, b.seq_num)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.customer_ids, b.customer_ids)
    assert fresh.excluded_customers == cached.excluded_customers
    assert fresh.split_id == cached.split_id
    branch_mod._CACHE.clear()
