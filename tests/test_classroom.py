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


def _variant(name: str, overrides: dict) -> tuple:
    """One checkpoint variant, comparable across lists: the name and its overrides other than None, sorted."""
    return name, tuple(sorted((k, v) for k, v in overrides.items() if v is not None))


def _notebook_model_calls(fast: bool) -> set:
    """Every ``get_trained_model(...)`` call in notebooks/*.ipynb as (name, overrides) in fast or full mode,
    read from the source: ``config.pick(a, b)`` is ``a`` or ``b``, a constant is its assigned value, and a
    loop variable takes each value of the loop. A call that cannot be read so fails the test."""
    import ast
    import json

    def value(node, env):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "config.pick" and len(node.args) == 2:
            return value(node.args[0 if fast else 1], env)
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("tqdm", "list", "tuple") and node.args:
            return value(node.args[0], env)         # for e in tqdm(EPOCHS, desc=...)
        if isinstance(node, ast.Name) and node.id in env:
            return env[node.id]
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(value(e, env) for e in node.elts)
        return ast.literal_eval(node)

    calls = set()
    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        src = "\n".join(line for c in cells for line in "".join(c["source"]).splitlines()
                        if not line.lstrip().startswith(("%", "!")))
        tree, env = ast.parse(src), {}
        for node in tree.body:                     # module-level constants, e.g. EPOCHS = config.pick((1, 3), ...)
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    env[node.targets[0].id] = value(node.value, env)
                except (ValueError, TypeError, SyntaxError):
                    pass
        loops = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
                for inner in ast.walk(node):
                    loops[id(inner)] = (node.target.id, node.iter)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("get_trained_model")):
                continue
            try:
                name = value(node.args[0], env)
                var, it = loops.get(id(node), (None, None))
                for v in (value(it, env) if var else (None,)):
                    scope = dict(env, **({var: v} if var else {}))
                    kw = {k.arg: value(k.value, scope) for k in node.keywords}
                    calls.add(_variant(name, kw))
            except (ValueError, TypeError, SyntaxError, IndexError) as err:
                pytest.fail(f"{path.name}: cannot read {ast.unparse(node)} ({err}); write its arguments as "
                            "constants or config.pick(fast, full), and list the variant in classroom.chapter_models")
    return calls


@pytest.mark.parametrize("fast", [False, True], ids=["full", "fast"])
def test_prepare_covers_every_model_the_notebooks_load(fast):
    """`classroom prepare` must train every checkpoint a chapter loads, in each mode, or 30 students each train
    the missing one (a variant called with other overrides is another checkpoint)."""
    from xai_helpers.classroom import chapter_models

    listed = {_variant(name, kw) for name, kw in chapter_models(fast)}
    used = _notebook_model_calls(fast)
    assert ("skin_binary", (("shortcut", ("ink", 0.9)),)) in used        # the parser sees chapter 12's cheating model
    assert len(used) >= 9, used
    missing = used - listed
    assert not missing, f"the notebooks load models that classroom.chapter_models({fast}) does not prepare: {missing}"
