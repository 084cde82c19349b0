"""The project names no machine's own paths: data comes from $COMMGRAPH_DATA or ../shared/data."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# absolute paths of a development machine (system paths such as /usr/sbin are not meant)
MACHINE = re.compile(r"""["'(\s](/work/|/root/|/home/\w+/)""")


def test_no_file_of_the_project_names_a_machine_specific_path() -> None:
    found = []
    for folder in ("src", "tests", "bench", "scripts", ".ci"):
        for path in sorted((ROOT / folder).rglob("*")):
            if not path.is_file() or path.suffix in (".pyc", ".png", ".pcap"):
                continue
            if path == Path(__file__):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            found += [f"{path.relative_to(ROOT)}: {m.group(1)}" for m in MACHINE.finditer(text)]
    assert found == []
