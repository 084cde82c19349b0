"""The exception tree of commgraph.

    CommgraphError                 root: everything commgraph raises on purpose
    ├── DecodeError                bytes or records from outside could not be read
    │   ├── EventDecodeError       one recorded event is malformed (names line or packet)
    │   │   ├── FlowDecodeError    a Zeek log row; names line and field
    │   │   └── PacketDecodeError  a captured frame or record; names it
    │   └── MQTTDecodeError        a malformed MQTT packet, with the reason code to answer
    ├── ConfigError                the site configuration is wrong (names the key)
    ├── StoreError                 the database cannot be used (names the file)
    ├── DecisionError              the owner asked for something that cannot be done
    │   └── UnknownItemError       no alert / service / edge with that name or id
    ├── GraphFullError             more vertices or relations than an edge key can hold
    ├── SigningError               a key file is missing, unreadable or would be overwritten
    ├── ModelError                 a service model is malformed, unsigned, tampered or untrusted
    ├── EnforceError               a model cannot be written as an ACL / dynsec / MUD file
    │                              (also a ValueError)
    ├── CaptureError               no such interface, or no CAP_NET_RAW
    ├── PlotError                  a picture cannot be drawn (matplotlib missing)
    ├── DeliveryError              a notification service refused a message
    └── TokenError                 a notification link is damaged, forged or expired

Every class lives here, and the modules that raise them import them from here (their old
homes, ``commgraph.model.ModelError`` and the like, still name the same classes).
Callers show ``str(exc)`` to the user as one line; no traceback for these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from commgraph.adapters.mqtt.codec import Packet


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


class ModelError(CommgraphError):
    """A model document or envelope cannot be used; ``reason`` is one of ``REASONS``."""

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        self.reason = reason
        super().__init__(message)


class PlotError(CommgraphError):
    """A picture cannot be drawn (matplotlib missing, the file cannot be written)."""


class TokenError(CommgraphError):
    """An action token is malformed, forged, or expired."""


class SigningError(CommgraphError):
    """A key cannot be made, written, read or used; names the file when there is one."""


class GraphFullError(CommgraphError):
    """More vertices (8,388,607) or relations (262,143) than the packed edge key can hold."""


class DeliveryError(CommgraphError):
    """A notification service refused or did not take a message."""


class EnforceError(CommgraphError, ValueError):
    """A model cannot be written in the requested format; the message names what and why."""


class PacketDecodeError(EventDecodeError):
    """A captured packet could not be decoded; ``packet`` is its 1-based number in the
    capture (0: the file header), also stored as ``line`` for callers of replay."""

    def __init__(self, reason: str, *, packet: int) -> None:
        super().__init__(reason, line=packet)
        self.packet = packet
        where = "file header" if packet == 0 else f"packet {packet}"
        self.args = (f"{where}: {reason}",)


class MQTTDecodeError(DecodeError):
    """The peer sent bytes that are not MQTT; ``str(exc)`` says what is wrong.

    ``code`` is the reason code of the DISCONNECT a broker answers this error with (MQTT 5.0
    only; 3.x has none), None where it just closes the connection. ``packets`` holds the
    packets the same ``feed`` call decoded completely before the bad one.
    """

    def __init__(
        self, reason: str, *, code: int | None = 0x81, packets: Sequence[Packet] = ()
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.packets: tuple[Packet, ...] = tuple(packets)


class CaptureError(CommgraphError):
    """A live capture cannot be opened (no such interface, no CAP_NET_RAW), or its filter
    names something that is not a port or an IP address."""


class FlowDecodeError(EventDecodeError):
    """A conn.log line cannot be read as a flow.

    ``line`` is the 1-based line number when known, ``field`` the Zeek name of the column at
    fault (``id.resp_p``) when one is. An :class:`EventDecodeError`, so code that skips and
    counts bad event lines handles bad flow lines the same way.
    """

    def __init__(self, reason: str, *, line: int | None = None, field: str | None = None) -> None:
        super().__init__(reason, line=line)
        self.field = field
