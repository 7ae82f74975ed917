"""Atomic writes: the old file survives a failed write, and no temporary file is left behind."""
import pytest

from distillery.atomic import atomic_write, atomic_write_text


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = atomic_write_text(tmp_path / "a.json", "old")

    def half_then_crash(temporary):
        temporary.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_a_successful_write_replaces_the_file(tmp_path):
    atomic_write_text(tmp_path / "a.json", "old")
    atomic_write_text(tmp_path / "a.json", "new")
    assert (tmp_path / "a.json").read_text() == "new" and len(list(tmp_path.iterdir())) == 1
