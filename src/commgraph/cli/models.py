"""Keys and service models: ``keygen`` and ``model export | import | show | diff``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from rich.markup import escape as esc

from commgraph.cli.group import (
    Context,
    cli,
    config_option,
    json_option,
    read_input,
    site_config,
    trusted_keys,
    trusted_option,
    who_decides,
)
from commgraph.cli.output import emit_json, err, fail, make_dir, new_table, out, when, write_file
from commgraph.events import VertexKind
from commgraph.model import (
    ModelError,
    ServiceModel,
    canonical_json,
    diff,
)
from commgraph.phases import Phase
from commgraph.signing import key_id, load_private, public_pem
from commgraph.site_models import (
    export_model,
    import_model,
    model_view,
    own_node,
    unverified,
)


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to write NAME.key and NAME.pub.",
)
@click.option("--name", default="site", show_default=True, help="File name of the key pair.")
def keygen(out_dir: Path, name: str) -> None:
    """Make the site's Ed25519 key pair for signing service models.

    The private key (NAME.key, readable by you only) stays on the nodes allowed to issue
    models; NAME.pub goes to every node as a trusted key. Existing files are never replaced.
    """
    from commgraph.signing import write_keypair

    make_dir(out_dir)
    private, public = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    kid = write_keypair(private, public)
    out.print(f"Wrote {esc(str(private))} (private, 0600) and {esc(str(public))}; key id {kid}.")
    out.print(
        f'Nodes trust it with \\[keys] trusted = ["{esc(str(public))}"]; issuers also set '
        f'private = "{esc(str(private))}".'
    )


@cli.group("model")
def model_group() -> None:
    """Service models: what each service may do, signed and shared between the site's nodes.

    A node keeps the models it trusts (its own, the site broker's, imported files) and a
    service with a kept model adopts it instead of learning.
    """


_STATUS_COLOURS = {"verified": "green", "not verified": "yellow"}


def warn(verb: str) -> Callable[[Mapping[str, Any], ModelError], None]:
    """A ``refused`` callback for :mod:`commgraph.site_models`: one warning line on stderr
    for each kept model ``verb`` (left out, ignored)."""

    def refused(row: Mapping[str, Any], exc: ModelError) -> None:
        err.print(
            f"warning: {verb} the kept model of {row['service']} from node {row['node']}: {exc}",
            markup=False,
        )

    return refused


def _model_file(file: Path) -> ServiceModel:
    data, name = read_input(file)
    try:
        return unverified(data)[1]
    except ModelError as exc:
        fail(f"{name}: not a service model ({exc})")


def _status_text(status: str) -> str:
    colour = "red" if status.startswith(("refused", "malformed")) else _STATUS_COLOURS[status]
    return f"[{colour}]{esc(status)}[/]"


def _labels_summary(edges: Sequence[Mapping[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for edge in edges:
        counts[edge["label"]] = counts.get(edge["label"], 0) + 1
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))


def _edges_text(count: int) -> str:
    return "1 edge" if count == 1 else f"{count} edges"


def _print_model_edges(title: str, document: Mapping[str, Any]) -> None:
    colours = {"denied": "red", "approved": "green", "learned": "default", "pending": "yellow"}
    table = new_table(title, ["relation", "peer", "direction", "label", "decided at", "decided by"])
    for edge in document["edges"]:
        table.add_row(
            esc(edge["relation"]),
            esc(edge["peer"]),
            edge["direction"],
            f"[{colours.get(edge['label'], 'default')}]{edge['label']}[/]",
            when(edge["decided_at"]),
            esc(edge["decided_by"] or "-"),
        )
    out.print(table)


def _print_model(row: Mapping[str, Any]) -> None:
    document = row["model"]
    origin = f"file {row['file']}" if row["source"] == "file" else f"kept from {row['source']}"
    out.print(
        f"[bold]{esc(document['service'])}[/] from node {esc(document['node'])}: "
        f"version {document['version']}, issued {when(document['issued_at'])}, "
        f"{esc(origin)}, key {esc(row['key'] or 'none (unsigned)')}, "
        f"{_status_text(row['status'])}" + (f" ({esc(row['problem'])})" if row["problem"] else "")
    )
    if document["edges"]:
        _print_model_edges(_edges_text(len(document["edges"])).capitalize(), document)
    else:
        out.print("no edges")


@model_group.command("export")
@click.argument("service")
@config_option
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The site's private key to sign with (default: [keys] private of --config).",
)
@trusted_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write the signed model to this file (default: stdout).",
)
@click.pass_obj
def model_export(
    ctx: Context,
    service: str,
    config_path: Path | None,
    key_path: Path | None,
    trusted_paths: tuple[Path, ...],
    output: Path | None,
) -> None:
    """Sign and write this node's current model of SERVICE.

    The model holds what the service learned and the owner decided here, joined with the
    kept site models of it that a trusted key signed (models signed by the signing key
    itself count as trusted). Its version is one above the highest kept one.
    """
    config = site_config(ctx, config_path)
    key_file = key_path or (config.private_key if config else None)
    if key_file is None:
        fail(
            "no private key to sign the model with: make the site's key pair with "
            "'commgraph keygen', then pass --key site.key (or set [keys] private in --config)"
        )
    from commgraph.daemon import engine_for  # aiohttp and the proxy: only for this command

    private = load_private(key_file)
    trusted = trusted_keys(config, trusted_paths)
    own_public = public_pem(private)
    trusted.setdefault(key_id(own_public), own_public)
    with ctx.store() as store:
        node = config.node if config else own_node(store)
        engine = engine_for(store, config, node)
        kept = store.models(service)
    vid = engine.graph.vertex(VertexKind.SERVICE, service)
    if vid is None or vid not in engine.phases.states:
        fail(f"there is no service {service!r} in {ctx.db_path} (see commgraph services)")
    model, signed = export_model(
        engine,
        kept,
        service,
        node=node,
        private=private,
        trusted=trusted,
        now=time.time(),
        refused=warn("left out"),
    )
    state = engine.phases.states[vid]
    if state.phase is Phase.LEARNING:
        err.print(
            f"warning: {service} is still learning (until {when(state.ends_at)}): "
            "the model holds only what it learned so far",
            markup=False,
        )
    version = model.version
    envelope = signed + b"\n"
    if output is None or str(output) == "-":
        sys.stdout.buffer.write(envelope)
        sys.stdout.buffer.flush()
        return
    write_file(output, envelope)
    out.print(
        f"Wrote the model of {esc(service)} to {esc(str(output))}: version {version}, "
        f"node {esc(node)}, {_edges_text(len(model.edges))}, "
        f"signed with key {key_id(own_public)}."
    )


@model_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@config_option
@trusted_option
@click.option("--by", help="Who imports (default: user@host).")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@click.pass_obj
def model_import(
    ctx: Context,
    file: Path,
    config_path: Path | None,
    trusted_paths: tuple[Path, ...],
    by: str | None,
    reason: str,
) -> None:
    """Keep the model in FILE (- for stdin) if a trusted key signed it.

    Kept or refused, the audit log says so. A node running on this database takes a kept
    model in within a second: services of that type seen from then on adopt it instead of
    learning, and its decisions apply to matching edges.
    """
    config = site_config(ctx, config_path)
    trusted = trusted_keys(config, trusted_paths)
    if not trusted:
        fail(
            "no trusted key to check the model with: pass --trusted site.pub "
            "(or set [keys] trusted in --config)"
        )
    data, name = read_input(file)
    who = by or who_decides()
    with ctx.store(must_exist=False) as store:
        try:
            imported = import_model(
                store, data, name, trusted, by=who, reason=reason, now=time.time()
            )
        except ModelError as exc:
            hints = {
                "unknown-key": f"; this node trusts {', '.join(sorted(trusted))}",
                "unsigned": " (commgraph model export signs models)",
            }
            fail(f"refused the model in {name}: {exc}{hints.get(exc.reason, '')}")
    model, kept = imported.model, imported.newer
    if kept is not None:
        fail(
            f"not imported: the model of {model.service} from node {model.node} "
            f"kept here is newer (version {kept.version}, issued "
            f"{when(kept.issued_at)}) than the one in {name} (version "
            f"{model.version}, issued {when(model.issued_at)})"
        )
    if not imported.kept:
        out.print(
            f"The model of {esc(model.service)} from node {esc(model.node)} "
            f"(version {model.version}) is already kept: nothing to do."
        )
        return
    document = json.loads(canonical_json(model))
    signer = imported.signer
    out.print(
        f"Kept the model of [bold]{esc(model.service)}[/] from node {esc(model.node)}: "
        f"version {model.version}, issued {when(model.issued_at)}, "
        f"{_edges_text(len(model.edges))}"
        + (f" ({_labels_summary(document['edges'])})" if model.edges else "")
        + f", signed with key {esc(signer or '')}."
    )
    if model.edges:
        _print_model_edges("Edges", document)
    out.print(
        f"A node running on {esc(str(ctx.db_path))} takes it in within a second; services "
        f"of that type seen from then on adopt it instead of learning."
    )


@model_group.command("show")
@click.argument("target", metavar="[SERVICE|FILE]", required=False)
@config_option
@trusted_option
@json_option
@click.pass_obj
def model_show(
    ctx: Context,
    target: str | None,
    config_path: Path | None,
    trusted_paths: tuple[Path, ...],
    as_json: bool,
) -> None:
    """The kept models, one service's, or the one in a file.

    Without SERVICE, a table of the models this node keeps; with SERVICE, the edges of each
    kept model of it; with FILE (- for stdin), the model in that file. With trusted keys
    (--trusted, [keys] trusted), each says whether it is verified or refused, and why.
    """
    config = site_config(ctx, config_path)
    trusted = trusted_keys(config, trusted_paths) or None
    rows: list[dict[str, Any]]
    if target is not None and (target == "-" or Path(target).is_file()):
        data, name = read_input(Path(target))
        view = model_view(data, trusted)
        if view["model"] is None:
            fail(f"{name}: not a service model ({view['problem']})")
        document = view["model"]
        rows = [
            {
                "service": document["service"],
                "node": document["node"],
                "source": "file",
                "file": name,
                "received_at": None,
                **view,
            }
        ]
    else:
        with ctx.store() as store:
            kept = store.models(target)
        rows = [
            {
                "service": row["service"],
                "node": row["node"],
                "source": row["source"],
                "received_at": row["received_at"],
                **model_view(row["envelope"], trusted),
            }
            for row in kept
        ]
        if target is not None and not rows:
            fail(
                f"no model of {target!r} is kept in {ctx.db_path}, and there is no file of "
                "that name (see commgraph model show)"
            )
    if as_json:
        emit_json(rows)
        return
    if target is not None:
        for row in rows:
            if row["model"] is None:
                out.print(
                    f"[bold]{esc(row['service'])}[/] from node {esc(row['node'])}: "
                    f"{_status_text(row['status'])} ({esc(row['problem'] or '')})"
                )
            else:
                _print_model(row)
        return
    if not rows:
        out.print(
            f"No models kept in {esc(str(ctx.db_path))}: a node keeps its own, the site's "
            "(with [sync]) and imported ones (commgraph model import FILE)."
        )
        return
    table = new_table(
        "Service models",
        ["service", "node", "source", "version", "edges", "issued at", "key", "status"],
    )
    for row in rows:
        table.add_row(
            esc(row["service"]),
            esc(row["node"]),
            row["source"],
            "-" if row["version"] is None else str(row["version"]),
            "-" if row["edges"] is None else str(row["edges"]),
            when(row["issued_at"]),
            esc(row["key"] or "unsigned"),
            _status_text(row["status"]),
        )
    out.print(table)


@model_group.command("diff")
@click.argument("a", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.argument("b", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@json_option
def model_diff(a: Path, b: Path, as_json: bool) -> None:
    """What changes from model file A to model file B.

    A and B are signed envelopes or bare model documents (signatures are not checked). Lines:
    + an edge B adds, - one it drops, ~ one whose label or figures change.
    """
    first, second = _model_file(a), _model_file(b)
    if first.service != second.service:
        err.print(
            f"warning: {a} holds a model of {first.service}, {b} one of {second.service}",
            markup=False,
        )
    lines = diff(first, second)
    if as_json:
        emit_json([{"change": line[0], "what": line[2:], "line": line} for line in lines])
        return
    if not lines:
        out.print("no differences")
        return
    colours = {"+": "green", "-": "red", "~": "yellow"}
    for line in lines:
        out.print(f"[{colours.get(line[0], 'default')}]{esc(line)}[/]")
