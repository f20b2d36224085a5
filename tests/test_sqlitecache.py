"""The SQLite helper under the caption cache and the image-feature cache: concurrent writers lose nothing; a
damaged, foreign or unwritable file is one warning and the command goes on without it; read-only creates
nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sgid.cache import Cache
from sgid.features import FeatureCache

WRITER = """
import sys
from pathlib import Path
import numpy as np
from sgid.cache import Cache
from sgid.features import FeatureCache

path, name = Path(sys.argv[1]), sys.argv[2]
captions, features = Cache(path / "cache.sqlite"), FeatureCache(path / "features.sqlite")
for batch in range(20):
    keys = [f"{name}-{batch}-{i}" for i in range(25)]
    captions.put_many("captions", {key: [key, batch] for key in keys})
    features.put_many("x", {key: np.full(3, batch, np.float32) for key in keys})
captions.close()
features.close()
"""


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"w{n}"]) for n in range(4)]
    assert [writer.wait(timeout=120) for writer in writers] == [0] * 4
    keys = [f"w{n}-{batch}-{i}" for n in range(4) for batch in range(20) for i in range(25)]
    captions = Cache(tmp_path / "cache.sqlite").get_many("captions", keys)
    assert captions == {key: [key, int(key.split("-")[1])] for key in keys}
    vectors = FeatureCache(tmp_path / "features.sqlite").get_many("x", keys)
    assert sorted(vectors) == sorted(keys)
    assert all(np.array_equal(vectors[key], np.full(3, int(key.split("-")[1]), np.float32)) for key in keys)


def _warnings(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("sgid: warning: ")]


def test_a_damaged_file_is_one_warning_and_the_command_goes_on_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("cache.sqlite", "features.sqlite"):
        (tmp_path / name).write_bytes(b"this is not a database, " * 100)
    captions = Cache(tmp_path / "cache.sqlite")
    captions.put_many("captions", {"a": "a cat"})
    assert captions.get_many("captions", ["a"]) == {}
    features = FeatureCache(tmp_path / "features.sqlite")
    features.put_many("x", {"a": np.ones(2, np.float32)})
    assert features.get_many("x", ["a"]) == {}
    warnings = _warnings(capsys)
    assert len(warnings) == 2 and all("cannot be used" in w and "going on without it" in w for w in warnings)
    assert (tmp_path / "cache.sqlite").read_bytes() == b"this is not a database, " * 100  # left as it was


def test_a_file_damaged_after_opening_is_a_warning_on_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    features = FeatureCache(tmp_path / "features.sqlite")
    features.put_many("x", {"a": np.ones(3, np.float32)})
    assert sorted(features.get_many("x", ["a", "b"])) == ["a"]
    assert features._db is not None
    features._db.execute("UPDATE features SET vector = X'00' WHERE sha256 = 'a'")  # 1 byte: no float32 vector
    assert features.get_many("x", ["a"]) == {}
    [warning] = _warnings(capsys)
    assert f"the cache {tmp_path / 'features.sqlite'} cannot be read" in warning
    features.put_many("x", {"b": np.ones(3, np.float32)})  # closed: nothing more is stored, no more warnings
    assert features.get_many("x", ["b"]) == {} and _warnings(capsys) == []


def test_a_file_that_cannot_be_written_is_read_and_one_warning_says_nothing_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Cache(tmp_path / "cache.sqlite").put_many("captions", {"a": "a cat"})
    captions = Cache(tmp_path / "cache.sqlite")
    assert captions._db is not None
    captions._db.execute("PRAGMA query_only = ON")  # every write fails as on a read-only file (even as root)
    assert captions.get_many("captions", ["a"]) == {"a": "a cat"}
    captions.put_many("captions", {"b": "a dog"})
    captions.put_many("captions", {"c": "a bird"})
    [warning] = _warnings(capsys)
    assert "cannot be written" in warning and warning.endswith("going on without storing captions")
    assert captions.get_many("captions", ["a", "b"]) == {"a": "a cat"}  # still read


def test_read_only_mode_creates_nothing_and_no_cache_keeps_nothing(tmp_path: Path) -> None:
    readonly = Cache(tmp_path / "new" / "cache.sqlite", readonly=True)
    readonly.put_many("captions", {"a": "a cat"})
    assert readonly.get_many("captions", ["a"]) == {} and not (tmp_path / "new").exists()
    Cache(None).put_many("captions", {"a": "a cat"})
    assert Cache(None).get_many("captions", ["a"]) == {}
    FeatureCache(None).put_many("x", {"a": np.ones(2, np.float32)})
    assert FeatureCache(None).get_many("x", ["a"]) == {}
    Cache(tmp_path / "cache.sqlite").put_many("captions", {"a": "a cat"})
    assert Cache(tmp_path / "cache.sqlite", readonly=True).get_many("captions", ["a", "b"]) == {"a": "a cat"}
