"""commgraph: learns who talks to whom between IoT microservices and flags what is new.

The names below are the library a middleware embeds; everything else is private to the
node. They load on first use, so ``import commgraph`` stays cheap::

    from commgraph import Engine, Event, LearningSettings, Mode

    engine = Engine(LearningSettings(duration=3600, mode=Mode.PROTECT))
    verdict = engine.observe(Event(ts=now, src="thermostat", dst="rooms/+/set", relation="publish"))
    if verdict.block: ...
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_HOMES: dict[str, str] = {
    # observing
    "Engine": "commgraph.engine",
    "Verdict": "commgraph.engine",
    "Event": "commgraph.events",
    "VertexKind": "commgraph.events",
    "Label": "commgraph.graph",
    "Mode": "commgraph.phases",
    "Phase": "commgraph.phases",
    "Admission": "commgraph.phases",
    "LearningSettings": "commgraph.phases",
    "Identity": "commgraph.identity",
    "IdentityRule": "commgraph.identity",
    "Templates": "commgraph.templates",
    "TemplateRule": "commgraph.templates",
    "DetectorSettings": "commgraph.detectors",
    "GuardrailSettings": "commgraph.detectors.guardrails",
    "Signal": "commgraph.detectors.guardrails",
    # the owner's side
    "Alert": "commgraph.alerts",
    "AlertKind": "commgraph.alerts",
    "AlertState": "commgraph.alerts",
    "Action": "commgraph.alerts",
    "Decision": "commgraph.alerts",
    "describe": "commgraph.alerts",
    # configuration and state
    "Config": "commgraph.config",
    "load_config": "commgraph.config",
    "parse_config": "commgraph.config",
    "parse_duration": "commgraph.config",
    "Store": "commgraph.store.database",
    # models and signing
    "ServiceModel": "commgraph.model",
    "SignedModel": "commgraph.model",
    "build_model": "commgraph.model",
    "PrivateKey": "commgraph.signing",
    "PublicKey": "commgraph.signing",
    "generate_keypair": "commgraph.signing",
    "load_private": "commgraph.signing",
    "load_public": "commgraph.signing",
    "write_keypair": "commgraph.signing",
    "sign": "commgraph.signing",
    "verify": "commgraph.signing",
    # errors
    "CommgraphError": "commgraph.errors",
    "DecodeError": "commgraph.errors",
    "EventDecodeError": "commgraph.errors",
    "FlowDecodeError": "commgraph.errors",
    "PacketDecodeError": "commgraph.errors",
    "MQTTDecodeError": "commgraph.errors",
    "ConfigError": "commgraph.errors",
    "StoreError": "commgraph.errors",
    "DecisionError": "commgraph.errors",
    "UnknownItemError": "commgraph.errors",
    "GraphFullError": "commgraph.errors",
    "SigningError": "commgraph.errors",
    "ModelError": "commgraph.errors",
    "EnforceError": "commgraph.errors",
    "CaptureError": "commgraph.errors",
    "PlotError": "commgraph.errors",
    "DeliveryError": "commgraph.errors",
    "TokenError": "commgraph.errors",
}

__all__ = [
    "Action",
    "Admission",
    "Alert",
    "AlertKind",
    "AlertState",
    "CaptureError",
    "CommgraphError",
    "Config",
    "ConfigError",
    "Decision",
    "DecisionError",
    "DecodeError",
    "DeliveryError",
    "DetectorSettings",
    "EnforceError",
    "Engine",
    "Event",
    "EventDecodeError",
    "FlowDecodeError",
    "GraphFullError",
    "GuardrailSettings",
    "Identity",
    "IdentityRule",
    "Label",
    "LearningSettings",
    "MQTTDecodeError",
    "Mode",
    "ModelError",
    "PacketDecodeError",
    "Phase",
    "PlotError",
    "PrivateKey",
    "PublicKey",
    "ServiceModel",
    "Signal",
    "SignedModel",
    "SigningError",
    "Store",
    "StoreError",
    "TemplateRule",
    "Templates",
    "TokenError",
    "UnknownItemError",
    "Verdict",
    "VertexKind",
    "__version__",
    "build_model",
    "describe",
    "generate_keypair",
    "load_config",
    "load_private",
    "load_public",
    "parse_config",
    "parse_duration",
    "sign",
    "verify",
    "write_keypair",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'commgraph' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value  # once loaded, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


if TYPE_CHECKING:
    from commgraph.alerts import Action, Alert, AlertKind, AlertState, Decision, describe
    from commgraph.config import Config, load_config, parse_config, parse_duration
    from commgraph.detectors import DetectorSettings
    from commgraph.detectors.guardrails import GuardrailSettings, Signal
    from commgraph.engine import Engine, Verdict
    from commgraph.errors import (
        CaptureError,
        CommgraphError,
        ConfigError,
        DecisionError,
        DecodeError,
        DeliveryError,
        EnforceError,
        EventDecodeError,
        FlowDecodeError,
        GraphFullError,
        ModelError,
        MQTTDecodeError,
        PacketDecodeError,
        PlotError,
        SigningError,
        StoreError,
        TokenError,
        UnknownItemError,
    )
    from commgraph.events import Event, VertexKind
    from commgraph.graph import Label
    from commgraph.identity import Identity, IdentityRule
    from commgraph.model import ServiceModel, SignedModel, build_model
    from commgraph.phases import Admission, LearningSettings, Mode, Phase
    from commgraph.signing import (
        PrivateKey,
        PublicKey,
        generate_keypair,
        load_private,
        load_public,
        sign,
        verify,
        write_keypair,
    )
    from commgraph.store import Store
    from commgraph.templates import TemplateRule, Templates
