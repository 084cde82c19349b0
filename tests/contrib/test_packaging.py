"""The wheel, installed offline into a fresh venv, and the systemd unit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "systemd" / "commgraph.service"


def builder() -> str:
    """An interpreter with setuptools and wheel (the project venv may lack ``wheel``)."""
    for python in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if (
            python
            and subprocess.run(
                [python, "-c", "import setuptools, wheel"], capture_output=True, timeout=60
            ).returncode
            == 0
        ):
            return python
    pytest.fail("no interpreter here has setuptools and wheel to build the wheel offline")


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def test_the_wheel_installs_offline_and_works(tmp_path: Path) -> None:
    source = tmp_path / "source"  # built from a copy: the worktree gets no build/ or egg-info
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    run(builder(), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "-w", wheels, source)  # fmt: skip
    (wheel,) = wheels.glob("commgraph-*.whl")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--no-deps",
        wheel)  # fmt: skip
    # the dependencies come from the project venv's site-packages, as a plain path: its
    # editable commgraph (a .pth there) is not processed, so commgraph is the wheel's
    fresh = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
                 .stdout.strip())  # fmt: skip
    (fresh / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    where = run(python, "-c", "import commgraph; print(commgraph.__file__)").stdout.strip()
    assert Path(where).is_relative_to(venv), where
    commgraph = venv / "bin" / "commgraph"
    version = run(commgraph, "--version").stdout
    assert "commgraph" in version and "0.1.0" in version
    out = tmp_path / "demo"
    run(commgraph, "--db", tmp_path / "demo.db", "demo", "--replay", "--out", out, cwd=tmp_path)
    assert any(out.iterdir())
    files = run(python, "-c", (
        "from importlib.resources import files; w = files('commgraph.web');"
        "print((w / 'static' / 'style.css').read_text()[:40]);"
        "print(sorted(p.name for p in (w / 'templates').iterdir()))"
    )).stdout  # fmt: skip
    assert "base.html" in files and "alerts.html" in files


def test_the_systemd_unit_is_hardened() -> None:
    text = UNIT.read_text()
    for line in (
        "User=commgraph",
        "StateDirectory=commgraph",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/commgraph",
        "AmbientCapabilities=\n",
    ):
        assert line in text, line
    active = [line for line in text.splitlines() if not line.startswith("#")]
    assert not any("CAP_NET_RAW" in line for line in active)  # only with live capture


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here: the unit is not verified")
    unit = tmp_path / "commgraph.service"  # as installed: ExecStart names a real commgraph
    commgraph = Path(sys.executable).parent / "commgraph"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/commgraph", str(commgraph)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "commgraph.service" in line  # not the host's other units
    ]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr
