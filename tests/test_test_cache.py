"""The test session's compilation cache stays bounded (tests/conftest.py::trim_cache)."""

import os

from tests.conftest import trim_cache


def test_trimming_deletes_the_oldest_files_first(tmp_path):
    (tmp_path / "autotune-cache").mkdir()  # Not a file: left alone, though its name matches.
    (tmp_path / "notes.txt").write_bytes(b"x" * 1000)
    for age, name in enumerate(["newest-cache", "newer-atime", "older-cache", "oldest-cache"]):
        path = tmp_path / name
        path.write_bytes(b"x" * 100)
        os.utime(path, (1_000_000 - age, 1_000_000 - age))
    trim_cache(str(tmp_path), 250)
    kept = ["autotune-cache", "newer-atime", "newest-cache", "notes.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == kept
    trim_cache(str(tmp_path), 250)
    assert sorted(path.name for path in tmp_path.iterdir()) == kept
    trim_cache(str(tmp_path / "absent"), 250)
