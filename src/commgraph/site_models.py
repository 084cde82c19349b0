"""Site models at a node's edge: adopt, receive, publish and version them.

The store keeps model envelopes (a node's own, the site broker's, imported files); the
engine adopts the ones a trusted key signed. :class:`SiteModels` is the running node's side
(:class:`commgraph.daemon.Daemon`): what it keeps from the broker, refuses, and publishes.
The module functions are what ``commgraph model`` and ``commgraph export`` compute from a
database without a running node. Nothing here prints: refusals go to a ``refused`` callback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from commgraph.alerts import Action, Decision
from commgraph.engine import Engine
from commgraph.events import VertexKind
from commgraph.model import (
    ModelError,
    ServiceModel,
    SignedModel,
    canonical_json,
    open_model,
    parse_model,
    read_envelope,
    sign_model,
)
from commgraph.phases import Phase
from commgraph.signing import PrivateKey, PublicKey
from commgraph.store import Store

__all__ = [
    "Imported",
    "SiteModels",
    "adopt_kept",
    "claimed_service",
    "enforced_models",
    "export_model",
    "import_model",
    "model_view",
    "own_node",
    "unverified",
]

log = logging.getLogger("commgraph")

Refused = Callable[[Mapping[str, Any], ModelError], None]
"""Told of each kept model left out: the ``Store.models()`` row and why."""


def unverified(data: bytes) -> tuple[SignedModel, ServiceModel]:
    """The envelope and the model it holds, read without checking the signature (for showing,
    diffing and versioning only, never for keeping); raises ModelError."""
    signed = read_envelope(data)
    return signed, parse_model(signed.document)


def claimed_service(data: bytes) -> str | None:
    """The service a refused document says it describes, for the audit log (if readable)."""
    try:
        return unverified(data)[1].service
    except ModelError:
        return None


def own_node(store: Store) -> str:
    """The name this database's node publishes its own models under, else "node"."""
    own = [row for row in store.models() if row["source"] == "self"]
    if not own:
        return "node"
    return str(max(own, key=lambda row: row["received_at"])["node"])


def adopt_kept(
    engine: Engine,
    kept: Iterable[Mapping[str, Any]],
    trusted: Mapping[str, PublicKey],
    refused: Refused | None = None,
) -> list[tuple[Mapping[str, Any], ServiceModel]]:
    """Adopt the kept models (``Store.models()`` rows) that a trusted key signed, oldest
    first, their signatures checked again (the trusted keys may have changed since they
    came), as a node does when it starts. Returns the adopted rows with their models."""
    adopted = []
    for row in sorted(kept, key=lambda row: row["received_at"]):
        try:
            model = open_model(row["envelope"], trusted)
            if model.service != row["service"]:
                raise ModelError(f"it holds a model of {model.service!r}")
        except ModelError as exc:
            if refused is not None:
                refused(row, exc)
            continue
        engine.adopt(model, row["node"])
        adopted.append((row, model))
    return adopted


def export_model(
    engine: Engine,
    kept: Sequence[Mapping[str, Any]],
    service: str,
    *,
    node: str,
    private: PrivateKey,
    trusted: Mapping[str, PublicKey],
    now: float,
    refused: Refused | None = None,
) -> tuple[ServiceModel, bytes]:
    """This node's model of ``service`` signed: what it learned and the owner decided here,
    joined with the kept models of it (``kept``) a trusted key signed. Its version is one
    above the highest kept one; the issue (node, version, time) is this export's own."""
    highest = 0
    for row in kept:
        with contextlib.suppress(ModelError):
            highest = max(highest, unverified(row["envelope"])[1].version)
    adopt_kept(engine, kept, trusted, refused)
    version = highest + 1
    built = engine.model_of(service, node=node, issued_at=now, version=version)
    model = ServiceModel(
        service=service, version=version, node=node, issued_at=now, edges=built.edges
    )
    return model, sign_model(model, private)


def enforced_models(
    engine: Engine,
    kept: Sequence[Mapping[str, Any]],
    trusted: Mapping[str, PublicKey],
    *,
    node: str,
    now: float,
    refused: Refused | None = None,
) -> list[ServiceModel]:
    """The site's models a broker (or the network) enforces: this node's views of its
    services, then the kept models of services it does not have, that a trusted key signed."""
    adopt_kept(engine, kept, trusted, refused)
    here = sorted(state.service for state in engine.phases.states.values())
    models = [
        dataclasses.replace(view, version=max(view.version, 1))
        for view in (engine.models_of(here, node=node, issued_at=now, version=0) if here else [])
    ]
    elsewhere = sorted(set(engine.models) - set(here))
    models += [engine.models[name].model for name in elsewhere]
    return models


@dataclass(frozen=True, slots=True, kw_only=True)
class Imported:
    """What :func:`import_model` did: ``kept`` False when the same envelope was kept
    already, or when ``newer`` (the model kept from the same node) is newer."""

    model: ServiceModel
    kept: bool
    signer: str | None
    newer: ServiceModel | None = None


def import_model(
    store: Store,
    data: bytes,
    name: str,
    trusted: Mapping[str, PublicKey],
    *,
    by: str,
    reason: str,
    now: float,
) -> Imported:
    """Keep the model envelope ``data`` (read from ``name``) if a trusted key signed it and
    nothing newer from the same node is kept; the audit log says so either way (a running
    node takes a kept one in within a second). Raises ModelError: refused (its ``reason``),
    when it is refused (after auditing the refusal)."""
    try:
        model = open_model(data, trusted)
    except ModelError as exc:
        store.audit(
            Decision(
                action=Action.MODEL_REJECTED,
                by=by,
                at=now,
                reason=str(exc),
                service=claimed_service(data),
                detail=f"{exc.reason}; imported from {name}",
            )
        )
        raise
    signer = read_envelope(data).key_id
    for row in store.models(model.service):
        if row["node"] != model.node:
            continue
        if row["envelope"] == data:
            return Imported(model=model, kept=False, signer=signer)
        with contextlib.suppress(ModelError):
            kept = unverified(row["envelope"])[1]
            if (kept.version, kept.issued_at) > (model.version, model.issued_at):
                return Imported(model=model, kept=False, signer=signer, newer=kept)
    store.save_model(model.service, model.node, data, at=now, source="import")
    store.audit(
        Decision(
            action=Action.MODEL_KEPT,
            by=by,
            at=now,
            reason=reason,
            service=model.service,
            detail=f"version {model.version} from node {model.node}; imported from {name}",
        )
    )
    return Imported(model=model, kept=True, signer=signer)


def model_view(envelope: bytes, trusted: Mapping[str, PublicKey] | None) -> dict[str, Any]:
    """What an envelope (or bare model document) holds, and its status: "verified" or
    "refused: REASON" against ``trusted``, "not verified" when no key is given."""
    view: dict[str, Any] = {
        "version": None,
        "issued_at": None,
        "key": None,
        "edges": None,
        "status": "refused: malformed" if trusted is not None else "malformed",
        "problem": None,
        "model": None,
    }
    try:
        signed, model = unverified(envelope)
    except ModelError as exc:
        view["problem"] = str(exc)
        return view
    view.update(
        version=model.version,
        issued_at=model.issued_at,
        key=signed.key_id if signed.signature is not None else None,
        edges=len(model.edges),
        model=json.loads(canonical_json(model)),
        status="not verified",
    )
    if trusted is not None:
        try:
            open_model(envelope, trusted)
        except ModelError as exc:
            view["status"], view["problem"] = f"refused: {exc.reason}", str(exc)
        else:
            view["status"] = "verified"
    return view


class SiteModels:
    """A running node's site models: the kept ones adopted, the broker's checked and kept,
    its own versioned, signed and published once their services are past learning.

    ``written()`` is called when the engine changed and must be written (decisions a model
    carried are durable before the caller goes on); ``audited(id)`` with the id of each
    audit entry written here (the node's own, not to be applied again); ``publish(service,
    envelope)`` with each of its own new envelopes (the sync hook).
    """

    def __init__(
        self,
        engine: Engine,
        store: Store,
        node: str,
        *,
        trusted: Mapping[str, PublicKey],
        private_key: PrivateKey | None,
        clock: Callable[[], float],
        written: Callable[[], None],
        audited: Callable[[int], None],
        publish: Callable[[str, bytes], None],
    ) -> None:
        self.engine, self.store, self.node = engine, store, node
        self.trusted = dict(trusted)
        self.private_key = private_key
        self.clock = clock
        self._written, self._audited, self._publish = written, audited, publish
        self.kept = 0  # envelopes kept from the broker (or a file) since start
        self.rejected = 0
        self.published: dict[str, tuple[ServiceModel, bytes]] = {}  # ours, per service
        self.dirty: set[str] = set()  # services whose model may have changed
        self._refused: set[bytes] = set()  # refused (topic, envelope) digests, audited once

    def load(self) -> None:
        """Take in the models kept in the store, and remember which of them are our own."""
        self.adopt_kept()
        self.dirty.update(s.service for s in self.engine.phases.states.values())

    def adopt_kept(self, service: str | None = None) -> None:
        """Adopt the models the store keeps (of one service, or all). At start every refusal
        is logged; later only those of imported models (sync's were audited when they came)."""

        def refused(row: Mapping[str, Any], exc: ModelError) -> None:
            if service is None or row["source"] == "import":
                log.warning(
                    "kept model of %s from node %s (%s) is not trusted here: %s",
                    row["service"],
                    row["node"],
                    row["source"],
                    exc,
                )

        for row, model in adopt_kept(
            self.engine, self.store.models(service), self.trusted, refused
        ):
            if row["node"] == self.node and row["source"] == "self":
                self.published[row["service"]] = (model, row["envelope"])

    def reload(self, service: str) -> None:
        """Take in what ``commgraph model import`` kept in the store."""
        self.adopt_kept(service)
        self.dirty.add(service)
        self._written()

    def received(self, service: str, node: str, payload: bytes, *, source: str) -> bool:
        """A model envelope from the site broker (or a file): checked, kept, merged.

        Refused ones (unsigned, unknown key, tampered, malformed, or not the service and node
        the topic names) are audited once each and change nothing. One older than the model
        kept from the same node is merged (a join loses nothing) but does not replace it.
        Returns whether it was new.
        """
        try:
            model = open_model(payload, self.trusted)
            if (model.service, model.node) != (service, node):
                raise ModelError(
                    f"the message is on the topic of {service!r} from node {node!r} but holds "
                    f"a model of {model.service!r} from node {model.node!r}"
                )
        except ModelError as exc:
            self._refuse(service, node, payload, exc)
            return False
        kept = self.kept_model(service, node)
        if kept is not None and (kept.version, kept.issued_at) >= (model.version, model.issued_at):
            if kept != model:
                self.engine.adopt(model, node)
                self._written()
            return False  # the same again (e.g. our own, echoed by the broker), or older
        self.store.save_model(service, node, payload, at=self.clock(), source=source)
        self.kept += 1
        decisions = self.engine.adopt(model, node)
        self.dirty.add(service)
        self._written()  # decisions it carried are durable before we go on
        log.info(
            "model of %s from node %s kept (version %d, %d edges%s)",
            service,
            node,
            model.version,
            len(model.edges),
            f"; {len(decisions)} decisions applied here" if decisions else "",
        )
        return True

    def kept_model(self, service: str, node: str) -> ServiceModel | None:
        """The model kept from ``node`` for ``service`` (already checked when it came)."""
        for row in self.store.models(service):
            if row["node"] == node:
                with contextlib.suppress(ModelError):
                    return unverified(row["envelope"])[1]
        return None

    def _refuse(self, service: str, node: str, payload: bytes, exc: ModelError) -> None:
        self.rejected += 1
        digest = hashlib.sha256(f"{service}\0{node}\0".encode() + payload).digest()
        if digest in self._refused:
            return
        if len(self._refused) >= 10_000:  # bounded, whatever a broker is made to carry
            self._refused.clear()
        self._refused.add(digest)
        log.warning("refused the model of %s from node %s: %s (%s)", service, node, exc, exc.reason)
        decision = Decision(
            action=Action.MODEL_REJECTED,
            by="sync",
            at=self.clock(),
            reason=str(exc),
            service=service,
            detail=f"{exc.reason}; from node {node}",
        )
        self._audited(self.store.audit(decision))

    def touched(self, edges: Iterable[int], services: Iterable[int]) -> None:
        """Mark the services of changed edges and phases: their models may have changed."""
        graph = self.engine.graph
        names = {graph.names[vid] for vid in services}
        for e in edges:
            src, dst, _ = graph.endpoints(e)
            for vid in (src, dst):
                if graph.kind(vid) is VertexKind.SERVICE:
                    names.add(graph.names[vid])
        self.dirty.update(names)

    def publish_changed(self) -> int:
        """Sign and publish the models of services that changed; returns how many went out.

        Only services past learning are published (a half-learned model would make every
        other node alert on what is merely not learned yet). Without a private key, nothing
        is signed: this node only takes in models. Each one's version is one above the last
        this node published.
        """
        if self.private_key is None or not self.dirty:
            return 0
        engine = self.engine
        ready = []
        for name in sorted(self.dirty):
            vid = engine.graph.vertex(VertexKind.SERVICE, name)
            state = None if vid is None else engine.phases.states.get(vid)
            if state is not None and state.phase is Phase.ACTIVE:
                ready.append(name)
        self.dirty.clear()
        if not ready:
            return 0
        now = self.clock()
        sent = 0
        for model in engine.models_of(ready, node=self.node, issued_at=now, version=0):
            before = self.published.get(model.service)
            if before is not None and before[0].edges == model.edges:
                continue
            version = max(model.version, before[0].version if before else 0) + 1
            model = ServiceModel(
                service=model.service,
                version=version,
                node=self.node,
                issued_at=now,
                edges=model.edges,
            )
            envelope = sign_model(model, self.private_key)
            self.store.save_model(model.service, self.node, envelope, at=now, source="self")
            self.published[model.service] = (model, envelope)
            self._publish(model.service, envelope)
            sent += 1
        if sent:
            log.info("published %d model%s", sent, "" if sent == 1 else "s")
        return sent
