"""The settings every notebook reads: fast mode, data root, writable work dir, device choice."""

import pytest
import torch

from xai_helpers import config


def test_fast_mode_reads_env_at_call_time(monkeypatch):
    monkeypatch.setenv("XAI_FAST", "1")
    assert config.fast_mode() and config.pick("fast", "full") == "fast"
    monkeypatch.setenv("XAI_FAST", "0")
    assert not config.fast_mode() and config.pick("fast", "full") == "full"
    monkeypatch.delenv("XAI_FAST")
    assert not config.fast_mode()


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("XAI_DATA_ROOT", str(tmp_path / "env"))
    assert config.data_root() == (tmp_path / "env").resolve()
    assert config.data_root(tmp_path / "arg") == (tmp_path / "arg").resolve()
    monkeypatch.delenv("XAI_DATA_ROOT")
    assert config.data_root() == config.default_data_root()


def test_work_dir_falls_back_when_data_root_is_read_only(monkeypatch, tmp_path):
    monkeypatch.delenv("XAI_CACHE_DIR", raising=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setenv("XAI_DATA_ROOT", str(ro))
    assert config.work_dir() == ro.resolve()          # writable: caches sit beside the data
    monkeypatch.setattr(config.os, "access", lambda p, mode: False)
    assert config.work_dir() == config.default_data_root()
    monkeypatch.setenv("XAI_CACHE_DIR", str(tmp_path / "c"))
    assert config.cache_dir() == (tmp_path / "c" / "_cache").resolve()
    assert config.checkpoint_dir() == (tmp_path / "c" / "checkpoints").resolve()


def test_device_choice(monkeypatch):
    monkeypatch.delenv("XAI_DEVICE", raising=False)
    dev = config.get_device()
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert dev.type == expected
    assert config.get_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        monkeypatch.setenv("XAI_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            config.get_device()


def test_importing_the_package_has_no_side_effects():
    import subprocess
    import sys
    code = ("import random, numpy as np; s = np.random.get_state()[1][:3].tolist(); "
            "import xai_helpers, xai_helpers.config, xai_helpers.explain; "
            "import sys; assert 'matplotlib.pyplot' not in sys.modules; "
            "assert np.random.get_state()[1][:3].tolist() == s; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_describe_names_the_data():
    text = config.describe(data="planted-evidence synthetic (no real data)")
    assert "data used   planted-evidence synthetic" in text
    assert "device" in text and "torch" in text


def test_one_opencv_distribution():
    """grad-cam installs opencv-python-headless, quantus opencv-python: both write the same cv2 folder,
    and uninstalling one then breaks cv2 for the other. The environment must hold exactly one."""
    from importlib import metadata

    names = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    opencv = sorted(n for n in names if n.startswith("opencv-") or n.startswith("opencv_"))
    assert len(opencv) == 1, f"expected one OpenCV distribution, found {opencv}: keep opencv-python-headless only"
    import cv2

    assert cv2.resize is not None


def test_display_path_hides_machine_folders(monkeypatch, tmp_path):
    """Printed paths name the variable or ~, so committed notebook outputs hold no machine folders."""
    from xai_helpers import config

    monkeypatch.setenv("XAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XAI_DATA_ROOT", str(tmp_path / "data"))
    assert config.display_path(tmp_path / "cache" / "checkpoints" / "m.pt") == "$XAI_CACHE_DIR/checkpoints/m.pt"
    assert config.display_path(tmp_path / "data") == "$XAI_DATA_ROOT"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config.display_path(tmp_path / "home" / ".cache" / "x") == "~/.cache/x"
    assert config.display_path(tmp_path / "elsewhere") == str((tmp_path / "elsewhere").resolve())
    text = config.describe()
    assert str(tmp_path) not in text and "$XAI_DATA_ROOT" in text and "$XAI_CACHE_DIR" in text


def test_cpu_threads_follow_omp_num_threads(monkeypatch):
    """A class server (or `pytest -n 2`) gives each process its share in OMP_NUM_THREADS: the notebooks'
    `config.set_cpu_threads()` must keep to it instead of taking every core again."""
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert config.set_cpu_threads() == 1 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "lots")                     # unusable: every usable core
        assert config.set_cpu_threads() == config.usable_cores() == torch.get_num_threads()
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert config.set_cpu_threads(1) == 1 == torch.get_num_threads()   # an explicit n wins
        with pytest.raises(ValueError, match="n >= 1"):
            config.set_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


def test_parallel_test_workers_share_the_cores():
    """Under `pytest -n N` each worker (and every kernel it starts, through OMP_NUM_THREADS) uses its share
    of the cores: N workers with a thread per core each would spin against each other."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 2:
        pytest.skip("runs only under pytest -n N (pytest-xdist) with 2 or more workers")
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])
    assert torch.get_num_threads() * workers <= max(workers, config.usable_cores()), \
        f"{workers} workers x {torch.get_num_threads()} threads on {config.usable_cores()} cores (OMP_NUM_THREADS set by hand?)"
