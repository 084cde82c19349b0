"""``commgraph model ...``, end to end: databases built by ``commgraph replay`` in tmp_path,
keys made by ``commgraph keygen``, every command run as the installed console script.

The site: ``sensor`` publishes ``home/temp``, delivered to ``ctl``, which publishes
``valve/set``; everyone learns for 10 s. At +60 s the sensor publishes to ``valve/set``
(alert 1, pending: left out of models until the owner decides).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from commgraph.config import parse_config
from commgraph.daemon import Daemon
from commgraph.model import open_model, parse_model, sign_model
from commgraph.signing import key_id, load_private, load_public
from commgraph.store import Store

COMMGRAPH = Path(sys.executable).parent / "commgraph"
T0 = 1_700_000_000.0


pytestmark = pytest.mark.usefixtures("cli_env")


def run(*args: str | Path, db: Path | None = None, stdin: str | None = None) -> Any:
    cmd = [str(COMMGRAPH)] + (["--db", str(db)] if db else []) + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, input=stdin)


def ok(*args: str | Path, db: Path | None = None, stdin: str | None = None) -> str:
    done = run(*args, db=db, stdin=stdin)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return str(done.stdout)


def user_error(*args: str | Path, db: Path | None = None) -> str:
    """Exit 1 with exactly one line on stderr, no traceback; returns that line."""
    done = run(*args, db=db)
    assert done.returncode == 1, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("commgraph: error: ")
    return lines[0]


def events(path: Path, rows: list[tuple[float, str, str, str]]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"ts": T0 + t, "src": s, "dst": d, "relation": r, "size": 10}) + "\n"
            for t, s, d, r in rows
        )
    )
    return path


SITE = [
    (0.0, "sensor", "home/temp", "publish"),
    (0.1, "home/temp", "ctl", "deliver"),
    (1.0, "ctl", "valve/set", "publish"),
    (5.0, "sensor", "home/temp", "publish"),
    (5.1, "home/temp", "ctl", "deliver"),
    (60.0, "sensor", "home/temp", "publish"),
    (60.5, "sensor", "valve/set", "publish"),  # alert 1
]


def toml(
    path: Path, node: str, *, private: str | None = None, trusted: tuple[str, ...] = ()
) -> Path:
    lines = ["[node]", f'name = "{node}"', "[learning]", 'duration = "10s"', "[keys]"]
    if private:
        lines.append(f'private = "{private}"')
    lines.append("trusted = [" + ", ".join(f'"{t}"' for t in trusted) + "]")
    path.write_text("\n".join(lines) + "\n")
    return path


class Site:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        ok("keygen", "--out", tmp / "keys")
        ok("keygen", "--out", tmp / "keys", "--name", "other")
        self.key, self.pub = tmp / "keys" / "site.key", tmp / "keys" / "site.pub"
        self.other_key, self.other_pub = tmp / "keys" / "other.key", tmp / "keys" / "other.pub"
        self.kid = key_id(load_public(self.pub))
        self.a = tmp / "a.db"
        ok("replay", events(tmp / "a.jsonl", SITE), "--learning", "10s", db=self.a)
        # node-a signs with the site key; relative key paths are taken from the config's dir
        self.a_toml = toml(tmp / "a.toml", "node-a", private="keys/site.key")

    def export(self, service: str, name: str, *extra: str | Path, db: Path | None = None) -> Path:
        out = self.tmp / name
        ok("model", "export", service, "-o", out, *extra, db=db or self.a)
        return out


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def models(db: Path) -> list[dict[str, Any]]:
    with Store(db) as store:
        return store.models()


def decisions(db: Path) -> list[dict[str, Any]]:
    with Store(db) as store:
        return store.decisions()


def edge_keys(document: dict[str, Any]) -> dict[tuple[str, str, str], str]:
    return {(e["relation"], e["peer"], e["direction"]): e["label"] for e in document["edges"]}


# -- export ---------------------------------------------------------------------------------


def test_export_signs_the_node_model(site: Site) -> None:
    stdout = ok("model", "export", "sensor", "--config", site.a_toml, db=site.a)
    envelope = json.loads(stdout)
    assert set(envelope) == {"document", "key", "signature"}
    assert envelope["key"] == site.kid
    document = json.loads(envelope["document"])
    assert (document["service"], document["node"], document["version"]) == ("sensor", "node-a", 1)
    # learned edges only: the pending sensor -> valve/set is not part of any model
    assert edge_keys(document) == {("publish", "home/temp", "out"): "learned"}
    ctl = json.loads(
        json.loads(ok("model", "export", "ctl", "--key", site.key, db=site.a))["document"]
    )
    assert ctl["node"] == "node"  # no config, no own published model: the default name
    assert edge_keys(ctl) == {
        ("deliver", "home/temp", "in"): "learned",
        ("publish", "valve/set", "out"): "learned",
    }


def test_export_needs_a_private_key_and_a_known_service(site: Site) -> None:
    line = user_error("model", "export", "sensor", db=site.a)
    assert "commgraph keygen" in line and "--key" in line
    line = user_error("model", "export", "nosuch", "--key", site.key, db=site.a)
    assert "'nosuch'" in line and "commgraph services" in line
    line = user_error("model", "export", "sensor", "--key", site.tmp / "missing.key", db=site.a)
    assert "missing.key" in line


def test_export_file_and_show_it(site: Site) -> None:
    m1 = site.export("sensor", "m1.json", "--config", site.a_toml)
    text = ok("model", "show", m1, "--trusted", site.pub)
    assert "sensor" in text and "node-a" in text and "verified" in text and "home/temp" in text
    [row] = json.loads(ok("model", "show", m1, "--json", "--trusted", site.pub))
    assert row["status"] == "verified"
    assert (row["service"], row["node"], row["source"], row["file"]) == (
        "sensor",
        "node-a",
        "file",
        str(m1),
    )
    assert (row["version"], row["edges"], row["key"]) == (1, 1, site.kid)
    [row] = json.loads(ok("model", "show", m1, "--json"))
    assert row["status"] == "not verified"
    [row] = json.loads(ok("model", "show", m1, "--json", "--trusted", site.other_pub))
    assert row["status"] == "refused: unknown-key"
    assert site.kid in row["problem"]
    # a bare document shows as unsigned
    bare = site.tmp / "bare.json"
    bare.write_text(json.loads(m1.read_text())["document"])
    [row] = json.loads(ok("model", "show", bare, "--json", "--trusted", site.pub))
    assert (row["status"], row["key"]) == ("refused: unsigned", None)


# -- diff -----------------------------------------------------------------------------------


def test_diff_after_decisions(site: Site) -> None:
    m1 = site.export("sensor", "m1.json", "--key", site.key)
    ok("approve", "1", "--by", "alice", db=site.a)
    m2 = site.export("sensor", "m2.json", "--key", site.key)
    ok("deny", "1", "--by", "bob", db=site.a)
    m3 = site.export("sensor", "m3.json", "--key", site.key)

    assert ok("model", "diff", m1, m2).splitlines() == ["+ publish valve/set (approved)"]
    assert ok("model", "diff", m2, m3).splitlines() == [
        "~ publish valve/set: approved -> denied (by bob)"
    ]
    assert ok("model", "diff", m2, m1).splitlines() == ["- publish valve/set (approved)"]
    assert ok("model", "diff", m1, m1).strip() == "no differences"
    rows = json.loads(ok("model", "diff", m1, m3, "--json"))
    assert rows == [
        {
            "change": "+",
            "what": "publish valve/set (denied)",
            "line": "+ publish valve/set (denied)",
        }
    ]
    assert json.loads(ok("model", "diff", m1, m1, "--json")) == []
    # a bare document diffs as well as an envelope
    bare = site.tmp / "bare.json"
    bare.write_text(json.loads(m3.read_text())["document"])
    assert ok("model", "diff", m2, bare).splitlines() == [
        "~ publish valve/set: approved -> denied (by bob)"
    ]


def test_diff_names_the_bad_file(site: Site) -> None:
    m1 = site.export("sensor", "m1.json", "--key", site.key)
    junk = site.tmp / "junk.json"
    junk.write_text('{"hello": 1}')
    assert str(junk) in user_error("model", "diff", m1, junk)
    assert "not a service model" in user_error("model", "diff", junk, m1)
    assert "nothere.json" in user_error("model", "diff", m1, site.tmp / "nothere.json")


# -- import ---------------------------------------------------------------------------------


def test_import_keeps_audits_and_shows(site: Site) -> None:
    ok("approve", "1", "--by", "alice", db=site.a)
    m2 = site.export("sensor", "m2.json", "--config", site.a_toml)
    b = site.tmp / "b.db"
    text = ok("model", "import", m2, "--trusted", site.pub, "--by", "carol", db=b)
    assert "Kept the model of sensor from node node-a" in text
    assert "version 1" in text and "2 edges" in text and "valve/set" in text

    [kept] = models(b)
    assert (kept["service"], kept["node"], kept["source"]) == ("sensor", "node-a", "import")
    assert kept["envelope"] == m2.read_bytes().strip()
    [audit] = decisions(b)
    assert (audit["action"], audit["by"], audit["service"]) == ("model-kept", "carol", "sensor")
    assert "node-a" in audit["detail"] and str(m2) in audit["detail"]

    # the same file again: nothing new kept or audited
    assert "already kept" in ok("model", "import", m2, "--trusted", site.pub, db=b)
    assert len(decisions(b)) == 1

    [row] = json.loads(ok("model", "show", "--json", db=b))
    assert (row["service"], row["node"], row["source"], row["status"]) == (
        "sensor",
        "node-a",
        "import",
        "not verified",
    )
    assert row["model"]["edges"][1]["decided_by"] == "alice"
    [row] = json.loads(ok("model", "show", "--json", "--trusted", site.pub, db=b))
    assert row["status"] == "verified" and row["key"] == site.kid
    [row] = json.loads(ok("model", "show", "--json", "--trusted", site.other_pub, db=b))
    assert row["status"] == "refused: unknown-key"
    listing = ok("model", "show", "--trusted", site.pub, db=b)
    assert "sensor" in listing and "node-a" in listing and "verified" in listing

    [row] = json.loads(ok("model", "show", "sensor", "--json", db=b))
    assert edge_keys(row["model"]) == {
        ("publish", "home/temp", "out"): "learned",
        ("publish", "valve/set", "out"): "approved",
    }
    shown = ok("model", "show", "sensor", db=b)
    assert "valve/set" in shown and "approved" in shown and "alice" in shown
    assert "'ctl'" in user_error("model", "show", "ctl", db=b)


def test_import_from_stdin(site: Site) -> None:
    m1 = site.export("sensor", "m1.json", "--key", site.key)
    b = site.tmp / "b.db"
    ok("model", "import", "-", "--trusted", site.pub, db=b, stdin=m1.read_text())
    assert [m["service"] for m in models(b)] == ["sensor"]
    assert "stdin" in decisions(b)[0]["detail"]


def test_an_older_model_does_not_replace_a_newer_one(site: Site) -> None:
    m1 = site.export("sensor", "m1.json", "--config", site.a_toml)
    ok("approve", "1", "--by", "alice", db=site.a)
    m2 = site.export("sensor", "m2.json", "--config", site.a_toml)
    b = site.tmp / "b.db"
    ok("model", "import", m2, "--trusted", site.pub, db=b)
    line = user_error("model", "import", m1, "--trusted", site.pub, db=b)
    assert "newer" in line and str(m1) in line
    [kept] = models(b)
    assert kept["envelope"] == m2.read_bytes().strip()


def _tampered(site: Site) -> Path:
    m1 = site.export("sensor", "m1.json", "--key", site.key)
    envelope = json.loads(m1.read_text())
    assert "home/temp" in envelope["document"]
    envelope["document"] = envelope["document"].replace("home/temp", "home/temq")  # one byte
    path = site.tmp / "tampered.json"
    path.write_text(json.dumps(envelope))
    return path


def _other_key(site: Site) -> Path:
    return site.export("sensor", "other.json", "--key", site.other_key)


def _unsigned(site: Site) -> Path:
    m1 = site.export("sensor", "m1.json", "--key", site.key)
    path = site.tmp / "unsigned.json"
    path.write_text(json.loads(m1.read_text())["document"])
    return path


def _malformed(site: Site) -> Path:
    path = site.tmp / "malformed.json"
    path.write_text("{not json")
    return path


@pytest.mark.parametrize(
    ("make", "reason", "words"),
    [
        (_tampered, "tampered", "signature does not match"),
        (_other_key, "unknown-key", "signed by an unknown key"),
        (_unsigned, "unsigned", "unsigned model"),
        (_malformed, "malformed", "envelope: not JSON"),
    ],
)
def test_import_refuses(site: Site, make: Any, reason: str, words: str) -> None:
    path = make(site)
    b = site.tmp / "b.db"
    line = user_error("model", "import", path, "--trusted", site.pub, "--by", "dave", db=b)
    assert f"refused the model in {path}: {words}" in line
    if reason == "unknown-key":
        assert key_id(load_public(site.other_pub)) in line and site.kid in line
    assert models(b) == []
    [audit] = decisions(b)
    assert (audit["action"], audit["by"]) == ("model-rejected", "dave")
    assert audit["detail"] == f"{reason}; imported from {path}"
    assert words in audit["reason"]
    assert audit["service"] == (None if reason == "malformed" else "sensor")


def test_import_needs_a_trusted_key(site: Site) -> None:
    m1 = site.export("sensor", "m1.json", "--key", site.key)
    b = site.tmp / "b.db"
    line = user_error("model", "import", m1, db=b)
    assert "--trusted" in line
    assert not b.exists() or models(b) == []
    # [keys] trusted of the config counts
    config = toml(site.tmp / "b.toml", "node-b", trusted=("keys/site.pub",))
    ok("model", "import", m1, "--config", config, db=b)
    assert len(models(b)) == 1


# -- a second node: its export joins the kept models, a replay adopts them ------------------


def test_export_joins_the_kept_models_that_verify(site: Site) -> None:
    ok("approve", "1", "--by", "alice", db=site.a)
    from_a = site.export("sensor", "a.json", "--config", site.a_toml)
    c = site.tmp / "c.db"
    ok("replay", events(site.tmp / "c.jsonl", [(0.0, "sensor", "home/extra", "publish")]), db=c)
    c_toml = toml(site.tmp / "c.toml", "node-c", private="keys/other.key")
    from_c = site.export("sensor", "c.json", "--config", c_toml, db=c)

    b = site.tmp / "b.db"
    ok("replay", events(site.tmp / "b.jsonl", [(0.0, "sensor", "home/temp", "publish")]), db=b)
    ok("model", "import", from_a, "--trusted", site.pub, db=b)
    ok("model", "import", from_c, "--trusted", site.other_pub, db=b)
    b_toml = toml(
        site.tmp / "b.toml", "node-b", private="keys/site.key", trusted=("keys/site.pub",)
    )

    done = run("model", "export", "sensor", "--config", b_toml, db=b)
    assert done.returncode == 0, done.stderr
    assert "node-c" in done.stderr and "unknown key" in done.stderr  # left out, with a warning
    document = json.loads(json.loads(done.stdout)["document"])
    assert (document["node"], document["version"]) == ("node-b", 2)  # above the kept ones
    assert edge_keys(document) == {
        ("publish", "home/temp", "out"): "learned",
        ("publish", "valve/set", "out"): "approved",  # node-a's decision travelled
    }
    both = ok("model", "export", "sensor", "--config", b_toml, "--trusted", site.other_pub, db=b)
    assert ("publish", "home/extra", "out") in edge_keys(json.loads(json.loads(both)["document"]))


def test_export_uses_the_node_name_of_its_own_published_models(site: Site) -> None:
    own = json.loads(ok("model", "export", "ctl", "--key", site.key, db=site.a))
    own_doc = json.loads(own["document"]).copy()
    with Store(site.a) as store:
        # what a running node-z leaves behind: its own model of ctl, signed, source "self"
        doc = {**own_doc, "node": "node-z", "version": 4}
        envelope = sign_model(parse_model(json.dumps(doc).encode()), load_private(site.key))
        store.save_model("ctl", "node-z", envelope, at=T0, source="self")
    document = json.loads(
        json.loads(ok("model", "export", "sensor", "--key", site.key, db=site.a))["document"]
    )
    assert document["node"] == "node-z"
    assert document["version"] == 1  # versions count per service
    ctl = json.loads(
        json.loads(ok("model", "export", "ctl", "--key", site.key, db=site.a))["document"]
    )
    assert ctl["version"] == 5


def test_replay_adopts_an_imported_model_and_services_says_so(site: Site) -> None:
    ok("approve", "1", "--by", "alice", db=site.a)
    m2 = site.export("sensor", "m2.json", "--config", site.a_toml)
    b = site.tmp / "b.db"
    ok("model", "import", m2, "--trusted", site.pub, db=b)
    b_toml = toml(site.tmp / "b.toml", "node-b", trusted=("keys/site.pub",))
    later = [
        (1000.0, "sensor", "home/temp", "publish"),
        (1100.0, "sensor", "valve/set", "publish"),  # approved in node-a's model
        (1200.0, "sensor", "home/new", "publish"),  # nobody allowed this
    ]
    report = json.loads(
        ok("replay", events(site.tmp / "b.jsonl", later), "--config", b_toml, "--json", db=b)
    )
    assert report["new_alerts"] == 1  # only home/new: no learning phase, the model decides
    [sensor] = json.loads(ok("services", "--json", db=b))
    assert (sensor["name"], sensor["phase"], sensor["model_from"]) == (
        "sensor",
        "active",
        "node-a",
    )
    assert "active (model from node-a)" in ok("services", db=b)
    [alert] = json.loads(ok("alerts", "--json", db=b))
    assert (alert["dst"], alert["state"]) == ("home/new", "pending")
    # a service that learned on its own says nothing of a model
    [row] = [r for r in json.loads(ok("services", "--json", db=site.a)) if r["name"] == "sensor"]
    assert row["model_from"] is None
    assert "model from" not in ok("services", db=site.a)


def test_a_running_node_takes_in_an_imported_model(site: Site) -> None:
    m1 = site.export("sensor", "m1.json", "--config", site.a_toml)
    b = site.tmp / "b.db"
    config = parse_config({"node": {"name": "node-b"}, "keys": {"trusted": [str(site.pub)]}})
    with Store(b) as store:
        daemon = Daemon(config, store)
        ok("model", "import", m1, "--trusted", site.pub, db=b)
        assert "sensor" not in daemon.engine.models
        daemon.every_second()  # sees the model-kept entry the CLI wrote, reloads the service
        index = daemon.engine.models["sensor"]
        assert index.model == open_model(m1.read_bytes(), {site.kid: load_public(site.pub)})
        assert daemon.engine.model_sources["sensor"] == "node-a"
