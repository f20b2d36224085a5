"""The zygote the hostile tests start ``sgid`` from (tests/zygote.py) gives what a fresh ``python -m sgid`` gives."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

import zygote
from hostile import sgid_env


def fresh(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "sgid", *args], env=env, capture_output=True, timeout=120)


def test_a_forked_sgid_exits_and_writes_as_a_fresh_one(cache_dir: Path, tmp_path: Path) -> None:
    env = sgid_env(cache_dir)
    for args in (["augment", "x", "--out", str(tmp_path / "y"), "--steps", "-1"], ["--version"]):
        child = zygote.start(args, env)
        assert child is not None
        _, stderr = child.communicate(timeout=120)
        expected = fresh(args, env)
        assert (child.returncode, stderr) == (expected.returncode, expected.stderr)
    assert child.returncode == 0 and expected.returncode == 0 and not (tmp_path / "y").exists()


def test_a_forked_sgid_dies_of_a_signal_as_popen_says_it(cache_dir: Path, tmp_path: Path) -> None:
    child = zygote.start(["augment", str(tmp_path / "missing"), "--out", str(tmp_path / "out")], sgid_env(cache_dir))
    assert child is not None
    child.send_signal(signal.SIGSTOP)  # so it cannot exit on its own first
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.2)
    assert child.poll() is None
    child.kill()
    assert child.wait(timeout=60) == -signal.SIGKILL and child.poll() == -signal.SIGKILL


def test_an_environment_the_zygote_lacks_gets_a_zygote_of_its_own(cache_dir: Path) -> None:
    """Variables read at import time (here torch's thread count) cannot change in a fork; sgid's own can."""
    env = sgid_env(cache_dir)
    child = zygote.start(["--version"], {**env, "SGID_ANYTHING": "1"})
    assert child is not None and child.wait(timeout=60) == 0
    assert zygote.current(env).compatible({**env, "SGID_ANYTHING": "1", "PYTEST_CURRENT_TEST": "x"})
    assert not zygote.current(env).compatible({**env, "OMP_NUM_THREADS": "7"})
    assert zygote.current(env).compatible({**env, "RAY_ADDRESS": "auto"})  # ray.init sets it; the zygote lacks ray
