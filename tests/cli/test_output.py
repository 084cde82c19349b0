"""Every path a command writes to: one error line naming it and exit status 1, never a
traceback (the real console script in a subprocess, as a user runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

COMMGRAPH = Path(sys.executable).parent / "commgraph"

pytestmark = pytest.mark.usefixtures("cli_env")


def run(*args: str | Path, db: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(COMMGRAPH), "--db", str(db), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def assert_path_error(proc: subprocess.CompletedProcess[str], path: Path) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("commgraph: error:") and str(path) in lines[0], lines[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A replayed heating site (its database and events), the site's keys, and a plain
    file: a path under it cannot be written or created, not even by root."""
    tmp = tmp_path_factory.mktemp("out")
    done = subprocess.run(
        [str(COMMGRAPH), "demo", "--replay", "--out", str(tmp / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    keys = subprocess.run(
        [str(COMMGRAPH), "keygen", "--out", str(tmp / "keys")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert keys.returncode == 0, keys.stderr
    blocker = tmp / "a-file"
    blocker.write_text("not a directory\n", encoding="utf-8")
    return tmp / "demo", tmp / "keys", blocker


@pytest.mark.parametrize(
    "command",
    [
        ["graph", "-o"],
        ["graph", "--format", "json", "-o"],
        ["export", "mosquitto-acl", "-o"],
        ["export", "mosquitto-dynsec", "-o"],
        [
            "export",
            "mud",
            "thermo-kitchen",
            "--mud-url",
            "https://x.example/m",
            "--broker",
            "10.0.0.2",
            "-o",
        ],
    ],
)
def test_an_unwritable_output_file_is_one_error_line(
    site: tuple[Path, Path, Path], command: list[str]
) -> None:
    demo, _, blocker = site
    target = blocker / "x.out"
    assert_path_error(run(*command, target, db=demo / "demo.db"), target)


def test_model_export_to_an_unwritable_file(site: tuple[Path, Path, Path]) -> None:
    demo, keys, blocker = site
    target = blocker / "m.json"
    done = run(
        "model",
        "export",
        "thermo-kitchen",
        "--key",
        keys / "site.key",
        "-o",
        target,
        db=demo / "demo.db",
    )
    assert_path_error(done, target)


@pytest.mark.parametrize("option", ["--timeline", "--plot"])
def test_eval_pictures_to_an_unwritable_file(site: tuple[Path, Path, Path], option: str) -> None:
    demo, _, blocker = site
    target = blocker / "p.png"
    extra = ["--sweep", "5m,10m"] if option == "--plot" else []
    done = run("eval", demo / "heating.jsonl", *extra, option, target, db=demo / "demo.db")
    assert_path_error(done, target)


@pytest.mark.parametrize("command", [["keygen", "--out"], ["demo", "--replay", "--out"]])
def test_an_output_directory_that_cannot_be_made(
    site: tuple[Path, Path, Path], command: list[str]
) -> None:
    demo, _, blocker = site
    target = blocker / "dir"
    assert_path_error(run(*command, target, db=demo / "demo.db"), target)
