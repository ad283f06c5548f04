"""The conda route stays true: environment.yml installs what pyproject.toml declares, no more, no less.

The README offers two installs: the venv (``pip install -e ".[dev]"``) and conda (``environment.yml``).
They drift silently: a dependency added to pyproject.toml and not to environment.yml still installs
through the yml's ``-e .[dev]`` pip line, but from PyPI on top of conda's packages, which is what the
conda route exists to avoid. So every package of pyproject's ``dependencies`` and ``dev`` extra must be
listed in environment.yml, in its conda section (conda-forge name) or, where conda-forge lacks it, in
its pip section, with the same lower bound; and nothing else may be listed.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11 (the workbook's conda env is 3.11)")
yaml = pytest.importorskip("yaml", reason="PyYAML (installed with JupyterLab) reads environment.yml")
requirements = pytest.importorskip("packaging.requirements", reason="packaging (installed with pip) parses specs")

REPO = Path(__file__).resolve().parents[1]

# conda-forge names that differ from the PyPI names (conda name -> pip name)
CONDA_TO_PIP = {"pytorch": "torch"}
# listed in environment.yml but not a Python package of pyproject: the interpreter and the installer
CONDA_ONLY = {"python", "pip"}


def normalise(name: str) -> str:
    """PEP 503: case, '-', '_' and '.' do not distinguish package names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lower_bound(spec: str) -> str | None:
    m = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", spec)
    return m.group(1) if m else None


def pyproject_packages() -> dict[str, str]:
    """name -> full requirement, for the dependencies and the dev extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("dev", []))
    out = {}
    for r in reqs:
        name = normalise(requirements.Requirement(r).name)
        assert name not in out, f"{name} is declared twice in pyproject.toml"
        out[name] = r
    return out


def environment() -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(conda packages, pip packages, pip lines that install this project), as pip name -> spec."""
    env = yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))
    conda, pip, project = {}, {}, []
    for item in env["dependencies"]:
        if isinstance(item, dict):
            assert set(item) == {"pip"}, f"unexpected section in environment.yml: {item}"
            for line in item["pip"]:
                if line.startswith("-e") or line.startswith("."):
                    project.append(line)
                    continue
                name = normalise(requirements.Requirement(line).name)
                assert name not in pip, f"{name} is listed twice in environment.yml's pip section"
                pip[name] = line
            continue
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", str(item))
        assert m, f"cannot read the conda spec {item!r} in environment.yml"
        if m.group(1) in CONDA_ONLY:
            continue
        name = normalise(CONDA_TO_PIP.get(m.group(1), m.group(1)))
        assert name not in conda, f"{name} is listed twice in environment.yml"
        conda[name] = str(item)
    return conda, pip, project


def test_environment_yml_lists_exactly_the_pyproject_packages():
    declared = pyproject_packages()
    conda, pip, _ = environment()
    both = set(conda) & set(pip)
    assert not both, f"listed in both the conda and the pip section of environment.yml: {sorted(both)}"
    listed = set(conda) | set(pip)
    missing, extra = sorted(set(declared) - listed), sorted(listed - set(declared))
    assert not missing, (f"in pyproject.toml (dependencies or dev) but not in environment.yml: {missing}; "
                         "add each to its conda section (conda-forge name) or, where conda-forge lacks it, "
                         "to its pip section")
    assert not extra, (f"in environment.yml but not in pyproject.toml: {extra}; add them to pyproject.toml "
                       "(or map a differing conda name in CONDA_TO_PIP)")


def test_environment_yml_lower_bounds_match_pyproject():
    declared = pyproject_packages()
    conda, pip, _ = environment()
    wrong = {}
    for name, spec in {**conda, **pip}.items():
        if name in declared and lower_bound(spec) != lower_bound(declared[name]):
            wrong[name] = (spec, declared[name])
    assert not wrong, f"lower bounds differ (environment.yml, pyproject.toml): {wrong}"
    unbounded = [r for r in declared.values() if lower_bound(r) is None]
    assert not unbounded, f"pyproject.toml requirements without a lower bound: {unbounded}"


def test_environment_yml_installs_the_project_with_its_dev_extra():
    _, _, project = environment()
    assert any(re.fullmatch(r"-e\s+\.\[dev\]", line.strip()) for line in project), (
        f"environment.yml's pip section must install this project with `-e .[dev]` "
        f"(xai_helpers, data_download); found {project}")


def test_name_mapping_is_applied():
    """The one conda-forge name that differs from PyPI is read as its pip name, so the check above can fail."""
    conda, _, _ = environment()
    assert "torch" in conda and "pytorch" not in conda
    assert normalise("Grad_CAM") == normalise("grad-cam") == "grad-cam"
