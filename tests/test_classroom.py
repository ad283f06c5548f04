"""Classroom mode: an instructor's prepared cache is read by students' kernels and never written."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def _read_only(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable_again(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.fixture()
def class_cache(tmp_path, monkeypatch):
    """A cache prepared by the instructor (the planted-skin fast model only), then made read-only."""
    from xai_helpers.classroom import prepare

    shared = tmp_path / "class-cache"
    records = prepare(shared, fast=True, models=(("planted_skin", {}),), download=False, progress=False)
    assert records[0]["trained_now"] and Path(records[0]["checkpoint"]).is_relative_to(shared)
    _read_only(shared)
    yield shared
    _writable_again(shared)


def test_students_read_the_shared_cache_and_never_write_it(class_cache, tmp_path, monkeypatch):
    from xai_helpers import config
    from xai_helpers.training import get_trained_model

    student = tmp_path / "student-cache"
    monkeypatch.setenv("XAI_SHARED_CACHE", str(class_cache))
    monkeypatch.setenv("XAI_CACHE_DIR", str(student))
    before = _snapshot(class_cache)

    model, info = get_trained_model("planted_skin", fast=True, progress=False, verbose=False)
    assert not info["trained_now"], "the prepared checkpoint should have been loaded, not retrained"
    assert Path(info["checkpoint"]).is_relative_to(class_cache)

    # a model the instructor did not prepare is trained into the student's own cache
    _, info2 = get_trained_model("planted_skin", fast=True, progress=False, verbose=False, epochs=1)
    assert info2["trained_now"] and Path(info2["checkpoint"]).is_relative_to(student)

    assert _snapshot(class_cache) == before, "the shared class cache was written"
    assert "class cache" in config.describe()


def test_prepare_refuses_a_read_only_cache(class_cache):
    from xai_helpers.classroom import prepare

    with pytest.raises(PermissionError, match="read-only"):
        prepare(class_cache, fast=True, models=(), download=False)


def test_student_environment_names_the_variables(tmp_path):
    from xai_helpers.classroom import student_environment

    env = student_environment(tmp_path)
    assert f"XAI_SHARED_CACHE={tmp_path.resolve()}" in env and "XAI_DATA_ROOT=" in env


def test_lookup_prefers_own_cache(tmp_path, monkeypatch):
    from xai_helpers import config

    own, shared = tmp_path / "own", tmp_path / "shared"
    (shared / "checkpoints").mkdir(parents=True)
    (shared / "checkpoints" / "m.pt").write_bytes(b"x")
    monkeypatch.setenv("XAI_CACHE_DIR", str(own))
    monkeypatch.setenv("XAI_SHARED_CACHE", str(shared))
    target = config.checkpoint_dir() / "m.pt"
    assert config.lookup(target) == shared / "checkpoints" / "m.pt"
    (own / "checkpoints").mkdir(parents=True)
    target.write_bytes(b"y")
    assert config.lookup(target) == target
    assert config.lookup(config.checkpoint_dir() / "other.pt") == config.checkpoint_dir() / "other.pt"
    monkeypatch.delenv("XAI_SHARED_CACHE")
    assert os.environ.get("XAI_SHARED_CACHE") is None and config.shared_cache() is None
