"""The exception tree of commgraph.

    CommgraphError                 root: everything commgraph raises on purpose
    ├── DecodeError                bytes or records from outside could not be read
    │   ├── EventDecodeError       one recorded event is malformed (names line or packet)
    │   │   ├── FlowDecodeError    (adapters.zeek) a conn.log row; names line and field
    │   │   └── PacketDecodeError  (adapters.pcap) a captured frame or record; names it
    │   └── MQTTDecodeError        (adapters.mqtt.codec) a malformed MQTT packet
    ├── ConfigError                the site configuration is wrong (names the key)
    ├── StoreError                 the database cannot be used (names the file)
    ├── DecisionError              the owner asked for something that cannot be done
    │   └── UnknownItemError       no alert / service / edge with that name or id
    ├── SigningError (signing)     a key file is missing, unreadable or would be overwritten
    ├── ModelError (model)         a service model is malformed, unsigned, tampered or untrusted
    ├── EnforceError (enforce)     a model cannot be written as an ACL / dynsec / MUD file
    ├── CaptureError (adapters.capture) no such interface, or no CAP_NET_RAW
    ├── PlotError (plots)          a picture cannot be drawn (matplotlib missing)
    ├── DeliveryError (notify)     a notification service refused a message
    └── TokenError (web.auth)      a notification link is damaged, forged or expired

Callers show ``str(exc)`` to the user as one line; no traceback for these.
"""

from __future__ import annotations


class CommgraphError(Exception):
    """Root of every error commgraph raises on purpose."""


class DecodeError(CommgraphError):
    """Input from outside (network, file) could not be decoded."""


class EventDecodeError(DecodeError):
    """A JSON-lines event record is malformed; ``line`` is 1-based when known."""

    def __init__(self, reason: str, *, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(f"line {line}: {reason}" if line is not None else reason)


class ConfigError(CommgraphError):
    """The site configuration is invalid; the message names the file and key."""


class StoreError(CommgraphError):
    """The SQLite database cannot be opened, read or migrated."""


class DecisionError(CommgraphError):
    """An owner action (approve, deny, mode, reset) cannot be carried out."""


class UnknownItemError(DecisionError):
    """No alert, service or edge matches what the owner named."""
