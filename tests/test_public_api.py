"""The public API: the names an embedding middleware imports from ``commgraph``."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import commgraph

README = Path(__file__).resolve().parents[1] / "README.md"

EXPECTED = {
    "Action", "Admission", "Alert", "AlertKind", "AlertState", "CaptureError",
    "CommgraphError", "Config", "ConfigError", "Decision", "DecisionError", "DecodeError",
    "DeliveryError", "DetectorSettings", "EnforceError", "Engine", "Event",
    "EventDecodeError", "FlowDecodeError", "GraphFullError", "GuardrailSettings", "Identity",
    "IdentityRule", "Label", "LearningSettings", "MQTTDecodeError", "Mode", "ModelError",
    "PacketDecodeError", "Phase", "PlotError", "PrivateKey", "PublicKey", "ServiceModel",
    "Signal", "SignedModel", "SigningError", "Store", "StoreError", "TemplateRule",
    "Templates", "TokenError", "UnknownItemError", "Verdict", "VertexKind", "__version__",
    "build_model", "describe", "generate_keypair", "load_config", "load_private",
    "load_public", "parse_config", "parse_duration", "sign", "verify", "write_keypair",
}  # fmt: skip


def test_the_exported_names_are_the_curated_list() -> None:
    assert set(commgraph.__all__) == EXPECTED
    assert len(commgraph.__all__) == len(EXPECTED)  # no name twice


@pytest.mark.parametrize("name", sorted(EXPECTED - {"__version__"}))
def test_every_exported_name_is_the_object_its_module_defines(name: str) -> None:
    value = getattr(commgraph, name)
    home = importlib.import_module(commgraph._HOMES[name])
    assert value is getattr(home, name)
    assert name in getattr(home, "__all__", [name])


def test_every_error_is_a_commgraph_error_and_lives_in_errors() -> None:
    errors = [n for n in EXPECTED if n.endswith("Error")]
    for name in errors:
        cls = getattr(commgraph, name)
        assert issubclass(cls, commgraph.CommgraphError)
        assert cls.__module__ == "commgraph.errors", name


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = commgraph.Nope  # type: ignore[attr-defined]


def test_importing_the_package_loads_no_engine_until_asked() -> None:
    code = "import sys, commgraph; print('commgraph.engine' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _embedding_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Embedding the engine", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's 'Embedding the engine' section has a python example"
    return match.group(1)


def test_the_readme_embedding_example_runs_and_blocks_what_is_new(tmp_path: Path) -> None:
    code = _embedding_example()
    assert len(code.strip().splitlines()) <= 25
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # the example prints one line per message: what was learned passes, the new one is blocked
    assert lines[-1].startswith("blocked"), lines
    assert not any(line.startswith("blocked") for line in lines[:-1]), lines
