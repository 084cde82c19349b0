"""Packet captures -> events: a sans-I/O packet decoder, and a thin pcap / pcapng file reader.

:class:`PacketDecoder` turns one captured frame into at most one *flow event* and holds these
rules (they are the whole contract; everything else is bookkeeping):

* Every IPv4 / IPv6 packet becomes one event on its connection's edge,
  ``(ts, initiator IP, responder IP, relation, size)``: ``tcp/PORT`` and ``udp/PORT`` name the
  responder's port, ICMP and ICMPv6 are ``icmp``, other IP protocols ``ip/NUMBER``. ``size``
  is the IP payload (transport header included) as the IP header declares it, so a capture
  truncated to its headers still counts real sizes. Packets of both directions land on the
  initiator's edge: an answer counts on the edge of its request.
* Who initiates a TCP connection: the sender of the SYN (the receiver of a SYN-ACK when only
  that was seen). For a connection already open when the capture starts, the sender of its
  first packet, unless that packet goes from a service port to a client port (a service port
  is one below 1024 or in :data:`SERVICE_PORTS`; a client port is any other): then the other
  side. UDP, ICMP and other protocols form *exchanges* under the same rule (an ICMP echo
  reply seen first counts as a response), which end after ``idle_timeout`` seconds of
  capture time without a packet; the table of both is bounded (``max_flows``).
* DHCP is keyed by its roles, not by addresses: the side on port 68 is the client and the
  event is ``client -> server udp/67``. A client still without an address (``0.0.0.0``) is
  named by the address its hardware address last held in this capture's DHCP traffic, a
  broadcast to the server by the server that last answered that client. DHCPv6 likewise:
  the side on port 546 is the client, ``udp/547``.
* Frames that carry no IP (ARP, EAPOL, LLDP, 802.2 LLC ...) are counted and skipped, and so
  is the leaving copy of a loopback packet in a Linux cooked capture (``tcpdump -i any``
  records those twice). A frame whose headers contradict themselves raises
  :class:`PacketDecodeError` naming the packet.
* DNS responses (UDP port 53 or 5353) are parsed and every A / AAAA answer is reported to
  ``on_dns`` as a :class:`DNSAnswer` named by the queried name (CNAME chains followed back;
  lower case, no final dot). Naming hosts with them is the identity layer's business.
* TCP streams with a port in ``mqtt_ports`` whose SYN was captured are reassembled per
  direction and decoded with our MQTT codec. They *also* yield the proxy's topic-level events,
  mapped by the function the proxy uses (:func:`commgraph.adapters.mqtt.events.edges`:
  ``publish``, ``subscribe`` per filter, ``deliver``; a CONNECT's will is a ``publish``), with
  the client id as the client's address (its IP address when the id is empty), next to their
  ``tcp/1883`` flow events. Reassembly is simple: bytes before the next expected one are
  dropped (retransmissions), up to ``max_ahead`` bytes in 32 segments beyond it wait for a gap
  to fill; a stream that loses bytes (a gap that does not fill, a payload cut by the snapshot
  length) or is not MQTT (TLS) is given up and counted; a malformed MQTT packet is also
  reported as a decode error.
* TCP streams with a port in ``http_ports`` whose SYN was captured: the caller's direction is
  reassembled likewise and decoded as HTTP (:mod:`commgraph.adapters.http.stream`); each
  request yields the sidecar's two events (caller -> route ``http``, route -> callee
  ``serve``), the callee named as ``http_ports`` says (else the server's address).

Topic-level events and decode errors that arise inside a packet are appended to
:attr:`PacketDecoder.pending`; the caller drains that list after each frame. The file
reader does that and yields ``(packet number, fields or error)``: it never raises for what a
file contains. Packet numbers are 1-based record positions in the file, as Wireshark counts
them (records hidden by a corrupt record header are not counted); 0 stands for the file
header.
"""

from __future__ import annotations

import io
import mmap
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import dpkt  # type: ignore[import-untyped]

from commgraph.adapters.http.stream import RequestStream
from commgraph.adapters.mqtt.codec import (
    Connack,
    Connect,
    MQTTDecodeError,
    MQTTDecoder,
    Packet,
    Publish,
    Subscribe,
)
from commgraph.adapters.mqtt.events import edges
from commgraph.detectors.guardrails import Signal, SignalNote
from commgraph.errors import EventDecodeError, PacketDecodeError
from commgraph.events import MAX_TS, Event
from commgraph.templates import Templates

__all__ = [
    "SERVICE_PORTS",
    "DNSAnswer",
    "DecoderStats",
    "EventFields",
    "LinkType",
    "PacketDecodeError",
    "PacketDecoder",
    "PacketRecord",
    "decode_capture",
    "decode_frames",
    "read_events",
    "read_packets",
]

# (ts, src, dst, relation, size): what Engine.observe_fields takes, already valid.
EventFields = tuple[float, str, str, str, "int | None"]
# What the decoder reads frames from: ``bytes`` or a memory-mapped file.
Data = bytes | mmap.mmap
FrameDecoder = Callable[[float, Data, int, int, int], "EventFields | None"]


PacketRecord = EventFields | PacketDecodeError | SignalNote
"""What the decoder yields per packet: event fields, an error, or (with ``signals``) what an
MQTT stream's protocol said."""


class LinkType(IntEnum):
    """The link-layer header types the decoder reads (tcpdump.org LINKTYPE_ values)."""

    NULL = 0  # BSD loopback: 4-byte address family in host order
    ETHERNET = 1  # 802.1Q / 802.1ad VLAN tags included
    RAW = 101  # raw IPv4 or IPv6
    LOOP = 108  # OpenBSD loopback: 4-byte address family in network order
    LINUX_SLL = 113
    IPV4 = 228
    IPV6 = 229
    LINUX_SLL2 = 276


# Raw IP under the numbers some writers use for it (DLT_RAW differs between systems).
_RAW_ALIASES: Final = frozenset({12, 14, int(LinkType.RAW), int(LinkType.IPV4), int(LinkType.IPV6)})

# Registered ports of services an IoT site runs above 1024; together with 0-1023 they decide
# who answers a connection that was open before the capture started.
SERVICE_PORTS: Final = frozenset(
    {1883, 8883, 5683, 5684, 1900, 5353, 3478, 5349, 8080, 8443, 8888, 9000, 47808}
)

_DNS_PORTS: Final = frozenset({53, 5353})
_VLAN_TYPES: Final = frozenset({0x8100, 0x88A8, 0x9100})
_IPV6_EXTENSIONS: Final = frozenset({0, 43, 44, 51, 60})
_ICMP_REPLIES: Final = frozenset({(1, 0), (1, 14), (1, 16), (1, 18), (58, 129)})
_DHCP_PORTS: Final = frozenset({b"\x00\x44\x00\x43", b"\x00\x43\x00\x44"})
_DHCP6_PORTS: Final = frozenset({b"\x02\x22\x02\x23", b"\x02\x23\x02\x22"})
_NO_ADDRESS: Final = frozenset({b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"})
_SEQ: Final = 0xFFFFFFFF
_HALF: Final = 0x80000000

# TCP flags
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10


@dataclass(frozen=True, slots=True)
class DNSAnswer:
    """``ip`` answered for ``name`` (the name that was asked, after CNAMEs) at ``ts``."""

    ts: float
    ip: str
    name: str


@dataclass(slots=True)
class DecoderStats:
    """Counters of what the decoder met; only the decoder writes them."""

    non_ip: int = 0  # frames without IP: ARP, EAPOL, LLC ...
    loopback_copies: int = 0  # Linux cooked: the leaving copy of a loopback packet
    decode_errors: int = 0  # frames that raised PacketDecodeError
    fragments_unmatched: int = 0  # later IP fragments whose first fragment was not seen
    flows: int = 0  # connections and exchanges created
    flows_expired: int = 0
    flows_evicted: int = 0  # dropped early because the table was full
    dns_answers: int = 0
    dns_errors: int = 0
    mqtt_streams: int = 0  # MQTT connections decoded from their SYN on
    mqtt_unsynced: int = 0  # MQTT-port connections open before the capture: flows only
    mqtt_events: int = 0
    mqtt_truncated: int = 0  # streams given up: payload cut by the snapshot length
    mqtt_gaps: int = 0  # streams given up: bytes missing that never came
    mqtt_not_mqtt: int = 0  # streams given up: TLS
    mqtt_errors: int = 0  # streams given up: malformed MQTT
    http_streams: int = 0  # HTTP connections decoded from their SYN on
    http_events: int = 0


class _Flow:
    """A connection or exchange: its edge, and what its later packets need."""

    __slots__ = (
        "closed",
        "dns",
        "dst",
        "forward",
        "http",
        "isn",
        "last",
        "mqtt",
        "relation",
        "src",
        "stream",
    )

    def __init__(self, src: str, dst: str, relation: str, last: float, forward: bytes) -> None:
        self.src = src
        self.dst = dst
        self.relation = relation
        self.last = last
        self.forward = forward  # the table key of the initiator's packets
        self.closed = False  # TCP: a FIN or RST was seen
        self.dns = False  # UDP: a DNS port is involved
        self.isn = 0  # TCP: the initiator's initial sequence number, when its SYN was seen
        self.stream: _MQTTStream | None = None
        self.http: RequestStream | None = None  # the caller's side, decoded as HTTP
        self.mqtt = 0  # with signals: 1 an MQTT connection opened, 2 and it was active


class _Direction:
    """One direction of a reassembled TCP stream."""

    __slots__ = ("ahead", "ahead_bytes", "decoder", "expected")

    def __init__(self, decoder: MQTTDecoder, expected: int | None) -> None:
        self.decoder = decoder
        self.expected = expected
        self.ahead: dict[int, bytes] = {}
        self.ahead_bytes = 0


class _MQTTStream:
    """An MQTT connection seen from its SYN on; ``sides[0]`` is the client (initiator)."""

    __slots__ = ("client", "client_ip", "dead", "sides", "username")

    def __init__(self, client_ip: str, isn: int, max_packet: int) -> None:
        self.client_ip = client_ip
        self.client: str | None = None
        self.username: str | None = None
        self.dead = False
        self.sides = (
            _Direction(MQTTDecoder(from_client=True, max_packet_size=max_packet), isn + 1 & _SEQ),
            _Direction(MQTTDecoder(from_client=False, max_packet_size=max_packet), None),
        )


def _usable(name: str) -> bool:
    return bool(name) and not name.isspace()


class PacketDecoder:
    """Frames -> flow events, with connection, DHCP, DNS and MQTT state; no I/O, no clock.

    Use :meth:`for_link` once per capture to get the function that decodes its frames:
    ``decode(ts, data, start, end, number)`` reads ``data[start:end]`` and returns the flow
    event's fields, or ``None`` for a frame without IP (counted in :attr:`stats`). It raises
    :class:`PacketDecodeError` only. Topic-level events and errors found inside the frame are
    appended to :attr:`pending` as ``(number, fields or error)`` for the caller to take.

    ``mqtt_ports``: TCP ports whose streams are decoded as MQTT. ``idle_timeout``: seconds
    of capture time after which a quiet UDP / ICMP exchange or a closed TCP connection is
    forgotten; ``tcp_idle_timeout`` for open TCP connections. ``max_flows``: connections
    kept at most (the least recently active go first). ``max_ahead``: bytes buffered per
    direction beyond a gap; ``mqtt_max_packet``: the largest MQTT packet decoded (a longer
    one ends the stream's decoding). ``on_dns`` is called with each DNS answer, inside
    ``decode``.
    """

    def __init__(
        self,
        *,
        mqtt_ports: frozenset[int] = frozenset({1883}),
        idle_timeout: float = 120.0,
        tcp_idle_timeout: float = 3600.0,
        max_flows: int = 65_536,
        max_ahead: int = 65_536,
        mqtt_max_packet: int = 16 * 1024 * 1024,
        on_dns: Callable[[DNSAnswer], None] | None = None,
        signals: bool = False,
        http_ports: Mapping[int, str | None] | None = None,
        templates: Templates | None = None,
    ) -> None:
        self.mqtt_ports = mqtt_ports
        # HTTP: port -> the service answering there (None: the server's address)
        self.http_ports = dict(http_ports or {})
        self.templates = templates or Templates()
        self.signals = signals  # MQTT streams also yield SignalNotes, for the guardrails
        self.idle_timeout = idle_timeout
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_flows = max_flows
        self.max_ahead = max_ahead
        self.mqtt_max_packet = mqtt_max_packet
        self.on_dns = on_dns
        self.stats = DecoderStats()
        self.pending: list[tuple[int, PacketRecord]] = []
        self._service_ports = frozenset(range(1024)) | SERVICE_PORTS | mqtt_ports
        # key: the packet's addresses + ports (TCP, UDP) or protocol + addresses (others),
        # in both directions; the value is the entry of the connection.
        self._tcp: dict[bytes, _Flow] = {}
        self._udp: dict[bytes, _Flow] = {}
        self._other: dict[bytes, _Flow] = {}
        self._fragments: dict[bytes, tuple[str, str, str]] = {}
        self._names: dict[bytes, str] = {}
        self._relations: dict[tuple[str, int], str] = {}
        self._leases: dict[bytes, bytes] = {}  # DHCP: hardware address -> IPv4 address
        self._dhcp_servers: dict[bytes, bytes] = {}  # hardware address -> last server
        self._swept = float("-inf")
        self._now = float("-inf")

    # -- link layers ------------------------------------------------------------------------

    def for_link(self, linktype: int) -> FrameDecoder:
        """The frame decoder for a capture of this link type; raises :class:`PacketDecodeError`
        (packet 0) for a link type it cannot read."""
        decoders: dict[int, FrameDecoder] = {
            LinkType.ETHERNET: self._ethernet,
            LinkType.LINUX_SLL: self._sll,
            LinkType.LINUX_SLL2: self._sll2,
            LinkType.NULL: self._null,
            LinkType.LOOP: self._loop,
        }
        decoder = decoders.get(linktype)
        if decoder is None and linktype in _RAW_ALIASES:
            decoder = self._raw
        if decoder is None:
            known = "Ethernet, Linux cooked (SLL, SLL2), raw IP and BSD loopback"
            raise PacketDecodeError(
                f"link type {linktype} is not supported (readable: {known})", packet=0
            )
        return decoder

    def _ethernet(
        self, ts: float, data: Data, start: int, end: int, number: int
    ) -> EventFields | None:
        if end - start < 14:
            raise PacketDecodeError(
                f"Ethernet header cut short: {end - start} of 14 bytes", packet=number
            )
        kind = data[start + 12] << 8 | data[start + 13]
        p = start + 14
        if kind == 0x0800:
            return self._ipv4(ts, data, p, end, number)
        return self._ethertype(ts, data, kind, p, end, number)

    def _ethertype(
        self, ts: float, data: Data, kind: int, p: int, end: int, number: int
    ) -> EventFields | None:
        while kind in _VLAN_TYPES:
            if end - p < 4:
                raise PacketDecodeError("VLAN tag cut short", packet=number)
            kind = data[p + 2] << 8 | data[p + 3]
            p += 4
        if kind == 0x0800:
            return self._ipv4(ts, data, p, end, number)
        if kind == 0x86DD:
            return self._ipv6(ts, data, p, end, number)
        self.stats.non_ip += 1
        return None

    def _sll(self, ts: float, data: Data, start: int, end: int, number: int) -> EventFields | None:
        if end - start < 16:
            raise PacketDecodeError(
                f"Linux cooked header cut short: {end - start} of 16 bytes", packet=number
            )
        if data[start + 1] == 4 and data[start + 2 : start + 4] == b"\x03\x04":
            self.stats.loopback_copies += 1
            return None
        kind = data[start + 14] << 8 | data[start + 15]
        return self._ethertype(ts, data, kind, start + 16, end, number)

    def _sll2(self, ts: float, data: Data, start: int, end: int, number: int) -> EventFields | None:
        if end - start < 20:
            raise PacketDecodeError(
                f"Linux cooked v2 header cut short: {end - start} of 20 bytes", packet=number
            )
        if data[start + 10] == 4 and data[start + 8 : start + 10] == b"\x03\x04":
            self.stats.loopback_copies += 1
            return None
        kind = data[start] << 8 | data[start + 1]
        return self._ethertype(ts, data, kind, start + 20, end, number)

    def _raw(self, ts: float, data: Data, start: int, end: int, number: int) -> EventFields | None:
        if end <= start:
            raise PacketDecodeError("empty raw IP packet", packet=number)
        version = data[start] >> 4
        if version == 4:
            return self._ipv4(ts, data, start, end, number)
        if version == 6:
            return self._ipv6(ts, data, start, end, number)
        raise PacketDecodeError(f"raw IP packet of version {version}", packet=number)

    def _family(
        self, ts: float, data: Data, start: int, end: int, number: int, family: int
    ) -> EventFields | None:
        if family == 2:
            return self._ipv4(ts, data, start + 4, end, number)
        if family in (10, 24, 28, 30):  # AF_INET6 on Linux, NetBSD/OpenBSD, FreeBSD, macOS
            return self._ipv6(ts, data, start + 4, end, number)
        self.stats.non_ip += 1
        return None

    def _null(self, ts: float, data: Data, start: int, end: int, number: int) -> EventFields | None:
        if end - start < 4:
            raise PacketDecodeError("loopback header cut short", packet=number)
        family = int.from_bytes(data[start : start + 4], "little")
        if family > 0xFFFF:  # written on a big-endian machine
            family = int.from_bytes(data[start : start + 4], "big")
        return self._family(ts, data, start, end, number, family)

    def _loop(self, ts: float, data: Data, start: int, end: int, number: int) -> EventFields | None:
        if end - start < 4:
            raise PacketDecodeError("loopback header cut short", packet=number)
        family = int.from_bytes(data[start : start + 4], "big")
        return self._family(ts, data, start, end, number, family)

    # -- IP ---------------------------------------------------------------------------------

    def _ipv4(self, ts: float, data: Data, ip: int, end: int, number: int) -> EventFields | None:
        if end - ip < 20:
            raise PacketDecodeError(f"IPv4 header cut short: {end - ip} of 20 bytes", packet=number)
        first = data[ip]
        hlen = (first & 0x0F) << 2
        if first >> 4 != 4 or hlen < 20:
            raise PacketDecodeError(
                f"not an IPv4 header (version {first >> 4}, header length {hlen})", packet=number
            )
        total = data[ip + 2] << 8 | data[ip + 3]
        if total == 0:  # segmentation offload on the capturing host: the frame is the packet
            total = end - ip
        elif total < hlen:
            raise PacketDecodeError(
                f"IPv4 total length {total} is less than its header length {hlen}", packet=number
            )
        l4 = ip + hlen
        if l4 > end:
            raise PacketDecodeError("IPv4 options cut short", packet=number)
        fragment = (data[ip + 6] << 8 | data[ip + 7]) & 0x3FFF
        if fragment:
            key = data[ip + 4 : ip + 6] + data[ip + 9 : ip + 10] + data[ip + 12 : ip + 20]
            if fragment & 0x1FFF:
                return self._later_fragment(ts, key, total - hlen)
        else:
            key = b""
        proto = data[ip + 9]
        fields = self._transport(
            ts, data, proto, data[ip + 12 : ip + 20], l4, min(ip + total, end), total - hlen, number
        )
        if key:
            self._first_fragment(key, fields)
        return fields

    def _ipv6(self, ts: float, data: Data, ip: int, end: int, number: int) -> EventFields | None:
        if end - ip < 40:
            raise PacketDecodeError(f"IPv6 header cut short: {end - ip} of 40 bytes", packet=number)
        if data[ip] >> 4 != 6:
            raise PacketDecodeError(f"not an IPv6 header (version {data[ip] >> 4})", packet=number)
        length = data[ip + 4] << 8 | data[ip + 5]
        declared = ip + 40 + length if length else end  # 0: a jumbogram, or offload
        proto = data[ip + 6]
        p = ip + 40
        key = b""
        while proto in _IPV6_EXTENSIONS:
            if p + 8 > end:
                raise PacketDecodeError("IPv6 extension header cut short", packet=number)
            if proto == 44:  # fragment header: offset, M flag, identification
                key = data[p + 4 : p + 8] + bytes((data[p],)) + data[ip + 8 : ip + 40]
                if (data[p + 2] << 8 | data[p + 3]) & 0xFFF8:
                    return self._later_fragment(ts, key, max(declared - p - 8, 0))
                if not data[p + 3] & 1:
                    key = b""  # offset 0 and no more fragments: an atomic fragment
                proto = data[p]
                p += 8
            else:
                step = (data[p + 1] + 2) * 4 if proto == 51 else (data[p + 1] + 1) * 8
                proto = data[p]
                p += step
        if p > declared:
            raise PacketDecodeError(
                "IPv6 extension headers run past the payload length", packet=number
            )
        fields = self._transport(
            ts, data, proto, data[ip + 8 : ip + 40], p, min(declared, end), declared - p, number
        )
        if key:
            self._first_fragment(key, fields)
        return fields

    def _first_fragment(self, key: bytes, fields: EventFields | None) -> None:
        if fields is None:
            return
        if len(self._fragments) >= 4096:
            self._fragments.clear()
        self._fragments[key] = (fields[1], fields[2], fields[3])

    def _later_fragment(self, ts: float, key: bytes, size: int) -> EventFields | None:
        entry = self._fragments.get(key)
        if entry is None:
            self.stats.fragments_unmatched += 1
            return None
        return (ts, entry[0], entry[1], entry[2], size)

    def name(self, address: bytes) -> str:
        """The text form of a packed IPv4 / IPv6 address (one shared string per address)."""
        text = self._names.get(address)
        if text is None:
            if len(self._names) >= 65_536:
                self._names.clear()
            family = socket.AF_INET if len(address) == 4 else socket.AF_INET6
            text = self._names[address] = socket.inet_ntop(family, address)
        return text

    def _relation(self, proto: str, port: int) -> str:
        relation = self._relations.get((proto, port))
        if relation is None:
            relation = self._relations[(proto, port)] = f"{proto}/{port}" if port >= 0 else proto
        return relation

    # -- transport --------------------------------------------------------------------------

    def _transport(
        self,
        ts: float,
        data: Data,
        proto: int,
        addresses: bytes,
        l4: int,
        l4_end: int,
        size: int,
        number: int,
    ) -> EventFields | None:
        """``l4_end``: where the IP payload ends within the captured bytes."""
        if proto == 6:
            if l4_end - l4 < 4:
                raise PacketDecodeError("TCP header cut short before its ports", packet=number)
            key = addresses + data[l4 : l4 + 4]
            flags = data[l4 + 13] if l4_end - l4 >= 14 else 0
            entry = self._tcp.get(key)
            if entry is None or flags & 0x07:
                entry = self._tcp_control(ts, data, key, entry, flags, l4, l4_end, number)
            entry.last = ts
            if entry.stream is not None:
                self._mqtt_segment(entry, key, data, l4, l4_end, size, ts, number)
            elif entry.http is not None and key == entry.forward:
                self._http_segment(entry.http, data, l4, l4_end, size, ts, number)
            return (ts, entry.src, entry.dst, entry.relation, size)
        if proto == 17:
            if l4_end - l4 < 4:
                raise PacketDecodeError("UDP header cut short before its ports", packet=number)
            ports = data[l4 : l4 + 4]
            if ports in _DHCP_PORTS or ports in _DHCP6_PORTS:
                return self._dhcp(ts, data, addresses, ports, l4, l4_end, size)
            key = addresses + ports
            entry = self._udp.get(key)
            if entry is None or ts - entry.last > self.idle_timeout:
                entry = self._new_udp(ts, key)
            entry.last = ts
            if entry.dns and (ports[0] << 8 | ports[1]) in _DNS_PORTS:
                self._dns(ts, data, l4 + 8, l4_end, l4 + size, number)
            return (ts, entry.src, entry.dst, entry.relation, size)
        key = bytes((proto,)) + addresses
        entry = self._other.get(key)
        if entry is None or ts - entry.last > self.idle_timeout:
            reply = l4 < l4_end and (proto, data[l4]) in _ICMP_REPLIES
            entry = self._new_other(ts, key, proto, reply)
        entry.last = ts
        return (ts, entry.src, entry.dst, entry.relation, size)

    def _make_room(self, table: dict[bytes, _Flow], ts: float) -> None:
        """Room for one more connection: expire idle ones, then evict the least recent."""
        if ts > self._now:
            self._now = ts
        now = self._now
        if len(table) >= 2 * self.max_flows or now - self._swept >= 60.0:
            self._sweep(now)
            while len(table) >= 2 * self.max_flows:
                self._evict(table)

    def _sweep(self, now: float) -> None:
        self._swept = now
        for table in (self._tcp, self._udp, self._other):
            tcp = table is self._tcp
            dead = [
                key
                for key, entry in table.items()
                if now - entry.last
                > (self.tcp_idle_timeout if tcp and not entry.closed else self.idle_timeout)
            ]
            for key in dead:
                del table[key]
            self.stats.flows_expired += len(dead) // 2

    def _evict(self, table: dict[bytes, _Flow]) -> None:
        times = sorted(entry.last for entry in table.values())
        cutoff = times[len(times) // 2]
        dead = [key for key, entry in table.items() if entry.last <= cutoff]
        for key in dead:
            del table[key]
        self.stats.flows_evicted += len(dead) // 2

    def _entry(
        self,
        table: dict[bytes, _Flow],
        key: bytes,
        reverse: bytes,
        sender: bytes,
        receiver: bytes,
        sender_initiates: bool,
        relation: str,
        ts: float,
    ) -> _Flow:
        """Enter a new connection met in a packet from ``sender`` (its table ``key``)."""
        self._make_room(table, ts)
        if sender_initiates:
            src, dst, forward = self.name(sender), self.name(receiver), key
        else:
            src, dst, forward = self.name(receiver), self.name(sender), reverse
        entry = _Flow(src, dst, relation, ts, forward)
        table[key] = table[reverse] = entry
        self.stats.flows += 1
        return entry

    @staticmethod
    def _reverse(key: bytes) -> bytes:
        """The key of the other direction: addresses and ports swapped."""
        n = len(key) - 4
        half = n // 2
        return key[half:n] + key[:half] + key[n + 2 :] + key[n : n + 2]

    def _new_udp(self, ts: float, key: bytes) -> _Flow:
        n = len(key) - 4
        half = n // 2
        sport = key[n] << 8 | key[n + 1]
        dport = key[n + 2] << 8 | key[n + 3]
        service = self._service_ports
        sender_initiates = not (sport in service and dport not in service)
        relation = self._relation("udp", dport if sender_initiates else sport)
        entry = self._entry(
            self._udp,
            key,
            self._reverse(key),
            key[:half],
            key[half:n],
            sender_initiates,
            relation,
            ts,
        )
        entry.dns = sport in _DNS_PORTS or dport in _DNS_PORTS
        return entry

    def _new_other(self, ts: float, key: bytes, proto: int, reply: bool) -> _Flow:
        half = (len(key) - 1) // 2
        sender, receiver = key[1 : 1 + half], key[1 + half :]
        reverse = key[:1] + receiver + sender
        if proto in (1, 58):
            relation = self._relation("icmp", -1)
        else:
            relation = self._relation(f"ip/{proto}", -1)
        return self._entry(self._other, key, reverse, sender, receiver, not reply, relation, ts)

    def _tcp_control(
        self,
        ts: float,
        data: Data,
        key: bytes,
        entry: _Flow | None,
        flags: int,
        l4: int,
        l4_end: int,
        number: int,
    ) -> _Flow:
        """A packet that opens, answers or closes a connection, or one of a connection the
        table does not know; returns the connection's entry."""
        n = len(key) - 4
        sport = key[n] << 8 | key[n + 1]
        dport = key[n + 2] << 8 | key[n + 3]
        seq = int.from_bytes(data[l4 + 4 : l4 + 8], "big") if l4_end - l4 >= 8 else 0
        syn = flags & (_SYN | _ACK) == _SYN
        if entry is not None and syn and (entry.closed or entry.isn != seq):
            entry = None  # the port pair is used again: a new connection
        if entry is None:
            reverse = self._reverse(key)
            if syn:
                sender_initiates = True
            elif flags & (_SYN | _ACK) == _SYN | _ACK:
                sender_initiates = False
            else:
                service = self._service_ports
                sender_initiates = not (sport in service and dport not in service)
            entry = self._entry(
                self._tcp,
                key,
                reverse,
                key[: n // 2],
                key[n // 2 : n],
                sender_initiates,
                self._relation("tcp", dport if sender_initiates else sport),
                ts,
            )
            if syn:
                entry.isn = seq
            if sport in self.mqtt_ports or dport in self.mqtt_ports:
                if syn:
                    entry.stream = _MQTTStream(entry.src, seq, self.mqtt_max_packet)
                    self.stats.mqtt_streams += 1
                    if self.signals:
                        entry.mqtt = 1
                        self.pending.append((number, SignalNote(ts, Signal.OPENED, entry.src)))
                else:
                    self.stats.mqtt_unsynced += 1
            elif syn and dport in self.http_ports:
                entry.http = RequestStream(
                    caller_ip=entry.src,
                    callee=self.http_ports[dport] or entry.dst,
                    isn=seq,
                    templates=self.templates,
                    max_ahead=self.max_ahead,
                )
                self.stats.http_streams += 1
        elif flags & (_SYN | _ACK) == _SYN | _ACK and key != entry.forward:
            stream = entry.stream
            if stream is not None and stream.sides[1].expected is None:
                stream.sides[1].expected = seq + 1 & _SEQ
        if flags & (_FIN | _RST):
            entry.closed = True
            if entry.mqtt:
                client = entry.stream.client if entry.stream is not None else None
                note = SignalNote(
                    ts, Signal.CLOSED, entry.src, active=entry.mqtt == 2, client_id=client
                )
                self.pending.append((number, note))
                entry.mqtt = 0
        return entry

    # -- DHCP -------------------------------------------------------------------------------

    def _dhcp(
        self,
        ts: float,
        data: Data,
        addresses: bytes,
        ports: bytes,
        l4: int,
        l4_end: int,
        size: int,
    ) -> EventFields:
        half = len(addresses) // 2
        source, destination = addresses[:half], addresses[half:]
        client_sends = ports[1] in (68, 0x22)  # source port 68 (DHCP) or 546 (DHCPv6)
        client, server = (source, destination) if client_sends else (destination, source)
        if half == 4:
            client, server = self._dhcp_roles(data, l4 + 8, l4_end, client, server, source)
        relation = self._relation("udp", 67 if half == 4 else 547)
        return (ts, self.name(client), self.name(server), relation, size)

    def _dhcp_roles(
        self, data: Data, p: int, end: int, client: bytes, server: bytes, source: bytes
    ) -> tuple[bytes, bytes]:
        """Name a client without an address, and a broadcast's server, from what this
        capture's DHCP traffic said before; learn from this message."""
        if end - p < 34:
            return client, server
        op = data[p]
        chaddr = data[p + 28 : p + 34]
        ciaddr = data[p + 12 : p + 16]
        yiaddr = data[p + 16 : p + 20]
        requested, identifier = _dhcp_options(data, p + 240, end)
        if op == 2:  # a server's reply
            if yiaddr not in _NO_ADDRESS:
                self._remember(self._leases, chaddr, yiaddr)
            if source not in _NO_ADDRESS:
                self._remember(self._dhcp_servers, chaddr, source)
        elif ciaddr not in _NO_ADDRESS:
            self._remember(self._leases, chaddr, ciaddr)
        if client in _NO_ADDRESS:
            for candidate in (ciaddr, yiaddr, requested, self._leases.get(chaddr)):
                if candidate is not None and len(candidate) == 4 and candidate not in _NO_ADDRESS:
                    client = candidate
                    break
        if server == b"\xff\xff\xff\xff":
            for candidate in (identifier, self._dhcp_servers.get(chaddr)):
                if candidate is not None and len(candidate) == 4 and candidate not in _NO_ADDRESS:
                    server = candidate
                    break
        return client, server

    @staticmethod
    def _remember(table: dict[bytes, bytes], key: bytes, value: bytes) -> None:
        if len(table) >= 4096 and key not in table:
            table.clear()
        table[key] = value

    # -- DNS --------------------------------------------------------------------------------

    def _dns(self, ts: float, data: Data, p: int, end: int, declared: int, number: int) -> None:
        """A DNS message from the responder's side: report the answers of a response."""
        if end - p < 12 or not data[p + 2] & 0x80 or not (data[p + 6] or data[p + 7]):
            return  # not a response, or no answers
        if end < declared:
            return  # cut by the snapshot length: the answers are not all there
        try:
            message = dpkt.dns.DNS(bytes(data[p:end]))
            answers = _dns_answers(message)
        except (dpkt.Error, struct.error, ValueError, IndexError, KeyError, TypeError) as exc:
            self.stats.dns_errors += 1
            reason = f"DNS response is malformed ({type(exc).__name__}: {exc})"[:200]
            self.pending.append((number, PacketDecodeError(reason, packet=number)))
            return
        on_dns = self.on_dns
        for address, name in answers:
            self.stats.dns_answers += 1
            if on_dns is not None:
                on_dns(DNSAnswer(ts, self.name(address), name))

    # -- HTTP -------------------------------------------------------------------------------

    def _http_segment(
        self,
        stream: RequestStream,
        data: Data,
        l4: int,
        l4_end: int,
        size: int,
        ts: float,
        number: int,
    ) -> None:
        if stream.dead is not None or l4_end - l4 < 20:
            return
        start = l4 + ((data[l4 + 12] >> 4) << 2)
        declared = min(l4 + size, l4_end)  # a payload cut by the snapshot: a gap, later
        if declared <= start:
            return
        seq = int.from_bytes(data[l4 + 4 : l4 + 8], "big")
        if data[l4 + 13] & _SYN:
            seq = seq + 1 & _SEQ
        events = stream.segment(seq, bytes(data[start:declared]), ts)
        if events:
            self.stats.http_events += len(events)
            self.pending.extend((number, fields) for fields in events)

    # -- MQTT -------------------------------------------------------------------------------

    def _mqtt_segment(
        self,
        entry: _Flow,
        key: bytes,
        data: Data,
        l4: int,
        l4_end: int,
        size: int,
        ts: float,
        number: int,
    ) -> None:
        stream = entry.stream
        if stream is None or stream.dead or l4_end - l4 < 20:
            return
        start = l4 + ((data[l4 + 12] >> 4) << 2)
        declared = l4 + size
        if declared <= start:
            return  # no payload
        if l4_end < declared:
            self._give_up(entry, "truncated")
            return
        side = stream.sides[0 if key == entry.forward else 1]
        seq = int.from_bytes(data[l4 + 4 : l4 + 8], "big")
        if data[l4 + 13] & _SYN:
            seq = seq + 1 & _SEQ
        payload = bytes(data[start:declared])
        if side.expected is None:
            side.expected = seq  # the SYN-ACK was not captured: start where the data does
        offset = seq - side.expected & _SEQ
        if offset >= _HALF:  # begins before the next expected byte
            skip = side.expected - seq & _SEQ
            if skip >= len(payload):
                return  # a retransmission of what we have
            payload = payload[skip:]
            offset = 0
        if offset:
            if side.ahead_bytes + len(payload) > self.max_ahead or len(side.ahead) >= 32:
                self._give_up(entry, "gap")
                return
            if seq not in side.ahead or len(side.ahead[seq]) < len(payload):
                side.ahead_bytes += len(payload) - len(side.ahead.get(seq, b""))
                side.ahead[seq] = payload
            return
        self._mqtt_feed(entry, stream, side, payload, ts, number)
        while side.ahead and not stream.dead:
            following = self._next_ahead(side)
            if following is None:
                break
            self._mqtt_feed(entry, stream, side, following, ts, number)

    @staticmethod
    def _next_ahead(side: _Direction) -> bytes | None:
        """Take the buffered bytes that continue the stream, if they arrived."""
        assert side.expected is not None
        for seq, payload in list(side.ahead.items()):
            offset = seq - side.expected & _SEQ
            if offset and offset < _HALF:
                continue  # still beyond a gap
            del side.ahead[seq]
            side.ahead_bytes -= len(payload)
            skip = side.expected - seq & _SEQ
            if skip < len(payload):
                return payload[skip:]
        return None

    def _mqtt_feed(
        self,
        entry: _Flow,
        stream: _MQTTStream,
        side: _Direction,
        payload: bytes,
        ts: float,
        number: int,
    ) -> None:
        assert side.expected is not None
        side.expected = side.expected + len(payload) & _SEQ
        from_client = side is stream.sides[0]
        if from_client and stream.client is None and payload[:2] == b"\x16\x03":
            self._give_up(entry, "tls")
            return
        try:
            packets = side.decoder.feed(payload)
        except MQTTDecodeError as exc:
            self._mqtt_events(stream, from_client, exc.packets, ts, number, entry)
            if from_client and entry.mqtt:
                note = SignalNote(
                    ts,
                    Signal.MALFORMED,
                    stream.client_ip,
                    entry.mqtt == 2,
                    stream.client,
                    stream.username,
                )
                self.pending.append((number, note))
            self._give_up(entry, "error")
            where = f"{entry.src} -> {entry.dst} {entry.relation}"
            self.pending.append(
                (
                    number,
                    PacketDecodeError(
                        f"MQTT from the {'client' if from_client else 'broker'} of {where}: "
                        f"{exc.reason}; this connection is not decoded further",
                        packet=number,
                    ),
                )
            )
            return
        if packets:
            self._mqtt_events(stream, from_client, packets, ts, number, entry)

    def _mqtt_events(
        self,
        stream: _MQTTStream,
        from_client: bool,
        packets: Sequence[Packet],
        ts: float,
        number: int,
        entry: _Flow,
    ) -> None:
        """The events the MQTT proxy would record for these packets (and, with
        ``signals``, what the protocol says: first activity, refused CONNACKs)."""
        out = self.pending
        before = len(out)
        for packet in packets:
            if entry.mqtt == 1 and from_client and type(packet) in (Publish, Subscribe):
                entry.mqtt = 2
                note = SignalNote(
                    ts, Signal.ACTIVE, stream.client_ip, True, stream.client, stream.username
                )
                out.append((number, note))
                before += 1
            if type(packet) is Connect:
                usable_id = _usable(packet.client_id)
                stream.client = packet.client_id if usable_id else stream.client_ip
                stream.username = packet.username
                stream.sides[1].decoder.protocol_level = packet.protocol_level
            elif type(packet) is Connack:
                if entry.mqtt and self._connack_signal(stream, packet, ts, number, entry):
                    before += 1  # a signal, not an event
                continue
            client = stream.client
            if client is None:
                continue
            for src, dst, relation, size in edges(packet, client, from_client=from_client):
                if _usable(src) and _usable(dst):  # an event's names are never blank
                    out.append((number, (ts, src, dst, relation, size)))
        self.stats.mqtt_events += len(out) - before

    def _connack_signal(
        self, stream: _MQTTStream, packet: Connack, ts: float, number: int, entry: _Flow
    ) -> bool:
        """A CONNACK that refuses the client is a REFUSED signal, as the proxy reports it;
        True if it was one."""
        v5 = stream.sides[1].decoder.protocol_level == 5
        if packet.reason_code != 0 and (not v5 or packet.reason_code >= 0x80):
            note = SignalNote(
                ts,
                Signal.REFUSED,
                stream.client_ip,
                entry.mqtt == 2,
                stream.client,
                stream.username,
            )
            self.pending.append((number, note))
            return True
        return False

    def _give_up(self, entry: _Flow, why: str) -> None:
        """Stop decoding this connection's MQTT (its flow events go on)."""
        if entry.stream is not None:
            entry.stream.dead = True
            entry.stream = None
        stats = self.stats
        if why == "truncated":
            stats.mqtt_truncated += 1
        elif why == "gap":
            stats.mqtt_gaps += 1
        elif why == "tls":
            stats.mqtt_not_mqtt += 1
        else:
            stats.mqtt_errors += 1


def _dhcp_options(data: Data, p: int, end: int) -> tuple[bytes | None, bytes | None]:
    """Options 50 (requested address) and 54 (server identifier) of a DHCP message."""
    if end - p < 0 or data[p - 4 : p] != b"\x63\x82\x53\x63":
        return None, None
    requested = identifier = None
    while p < end:
        code = data[p]
        if code == 0xFF:
            break
        if code == 0:
            p += 1
            continue
        if p + 2 > end:
            break
        length = data[p + 1]
        value = data[p + 2 : min(p + 2 + length, end)]
        if code == 50:
            requested = bytes(value)
        elif code == 54:
            identifier = bytes(value)
        p += 2 + length
    return requested, identifier


_ADDRESS_RECORDS: Final = frozenset({(dpkt.dns.DNS_A, 4), (dpkt.dns.DNS_AAAA, 16)})


def _dns_answers(message: Any) -> list[tuple[bytes, str]]:
    """(packed address, asked name) for each A / AAAA answer, CNAMEs followed back."""
    alias_of: dict[str, str] = {}  # CNAME target -> the name that pointed to it
    for rr in message.an:
        if rr.type == dpkt.dns.DNS_CNAME:
            alias_of[_dns_name(rr.cname)] = _dns_name(rr.name)
    found = []
    for rr in message.an:
        if (rr.type, len(rr.rdata)) not in _ADDRESS_RECORDS:
            continue
        address = bytes(rr.rdata)
        name = _dns_name(rr.name)
        for _ in range(16):  # a CNAME loop must not hold us
            if name not in alias_of:
                break
            name = alias_of[name]
        if name:
            found.append((address, name))
    return found


def _dns_name(name: object) -> str:
    text = name if isinstance(name, str) else str(name)
    return text.rstrip(".").lower()


# -- files ------------------------------------------------------------------------------------

_PCAP_MAGICS: Final = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6),
    b"\xa1\xb2\xc3\xd4": (">", 1e6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9),
    b"\xa1\xb2\x3c\x4d": (">", 1e9),
}
_PCAPNG_MAGIC: Final = b"\x0a\x0d\x0d\x0a"
# The largest packet a sane capture holds (Wireshark's limit for ordinary link types): a
# record header claiming more is corrupt.
MAX_RECORD: Final = 262_144
# Times of consecutive records: how far back (merged captures) and forward (a quiet day) they
# may go before a header is suspect; a record found after a corrupt one must be this near.
_BACK: Final = 3600
_JUMP: Final = 86_400
_RESYNC_SECONDS: Final = 30 * 86_400
# Records that must agree, when none agreeing near the last record's time follows: without
# the time to hold them, a few "records" found inside other fields may agree by chance.
_TRUSTED: Final = 16
_TRUSTED_AT_END: Final = 4


def read_packets(
    path: str | os.PathLike[str], *, decoder: PacketDecoder | None = None
) -> Iterator[tuple[int, PacketRecord]]:
    """Decode a pcap or pcapng file: ``(packet number, event fields or error)``.

    The fields are valid for :meth:`commgraph.engine.Engine.observe_fields`. A topic-level
    event follows the flow event of the packet that completed it, with the same number.
    Nothing in the file makes this raise; an unreadable file raises :class:`OSError`. The
    file is memory-mapped: it may grow while being read, not shrink.
    """
    with open(path, "rb") as stream:
        if os.fstat(stream.fileno()).st_size == 0:
            yield 0, PacketDecodeError("the file is empty", packet=0)
            return
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield from decode_capture(data, decoder=decoder)


def read_events(
    path: str | os.PathLike[str], *, decoder: PacketDecoder | None = None, node: str | None = None
) -> Iterator[tuple[int, Event | EventDecodeError]]:
    """:func:`read_packets` as validated :class:`Event` objects (slower: one object each)."""
    for number, item in read_packets(path, decoder=decoder):
        if isinstance(item, PacketDecodeError):
            yield number, item
            continue
        if isinstance(item, SignalNote):
            continue
        ts, src, dst, relation, size = item
        try:
            yield number, Event(ts=ts, src=src, dst=dst, relation=relation, size=size, node=node)
        except EventDecodeError as exc:
            yield number, PacketDecodeError(exc.reason, packet=number)


def decode_capture(
    data: Data, *, decoder: PacketDecoder | None = None
) -> Iterator[tuple[int, PacketRecord]]:
    """:func:`read_packets` for a capture file's bytes already in memory."""
    if decoder is None:
        decoder = PacketDecoder()
    magic = data[:4]
    if magic == _PCAPNG_MAGIC:
        yield from _read_pcapng(data, decoder)
        return
    if magic not in _PCAP_MAGICS:
        if not data:
            reason = "the file is empty"
        elif len(data) < 4:
            reason = f"the file ends after {len(data)} bytes, inside the file header"
        else:
            reason = f"not a pcap or pcapng file (it starts with {bytes(data[:4]).hex(' ')})"
        yield 0, PacketDecodeError(reason, packet=0)
        return
    yield from _read_pcap(data, decoder)


def decode_frames(
    frames: Iterable[tuple[float, bytes]],
    *,
    linktype: int = LinkType.ETHERNET,
    decoder: PacketDecoder | None = None,
    first: int = 1,
) -> Iterator[tuple[int, PacketRecord]]:
    """Decode ``(ts, frame)`` pairs (a live capture's) as :func:`read_packets` decodes a
    file, numbering them from ``first``. An unreadable link type is one error, packet 0."""
    if decoder is None:
        decoder = PacketDecoder()
    try:
        decode = decoder.for_link(linktype)
    except PacketDecodeError as exc:
        yield 0, exc
        return
    pending = decoder.pending
    fields: EventFields | PacketDecodeError | None
    for number, (ts, frame) in enumerate(frames, start=first):
        if not 0.0 <= ts <= MAX_TS:
            fields = PacketDecodeError(f"time stamp {ts!r} is out of range", packet=number)
        else:
            try:
                fields = decode(ts, frame, 0, len(frame), number)
            except PacketDecodeError as exc:
                decoder.stats.decode_errors += 1
                fields = exc
        if fields is not None:
            yield number, fields
        if pending:
            yield from pending
            pending.clear()


def _read_pcap(data: Data, decoder: PacketDecoder) -> Iterator[tuple[int, PacketRecord]]:
    order, divisor = _PCAP_MAGICS[bytes(data[:4])]
    size = len(data)
    if size < 24:
        reason = f"the file ends after {size} bytes, inside the file header"
        yield 0, PacketDecodeError(reason, packet=0)
        return
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    try:
        decode = decoder.for_link(linktype)
    except PacketDecodeError as exc:
        yield 0, exc
        return
    framing = _Framing(data, order, divisor)
    record = framing.header
    pending = decoder.pending
    stats = decoder.stats
    pos = previous = 24  # previous: where the last record's bytes began
    number = 0
    last_sec = -1
    while pos < size:
        number += 1
        if size - pos < 16:
            # the file was cut here, or the record before was longer than it said
            following = framing.scan(previous + 1, size, last_sec)
            if following is None:
                reason = f"the file ends inside this packet's record header ({size - pos} of 16)"
                yield number, PacketDecodeError(reason, packet=number)
                return
            reason = (
                f"the packet before was not as long as it said; reading goes on at byte {following}"
            )
            yield number, PacketDecodeError(reason, packet=number)
            pos = following
            continue
        sec, fraction, caplen, wirelen = record(data, pos)
        start = pos + 16
        stop = start + caplen
        corrupt = (
            caplen > wirelen
            or fraction >= divisor
            or caplen > MAX_RECORD
            or (last_sec >= 0 and not -_BACK <= sec - last_sec <= _JUMP)
        ) and not framing.believable(pos, stop)
        following = None
        if corrupt:
            following = framing.resync(previous, pos, stop, last_sec)
        elif stop > size:
            # the file was cut inside this record, or a length is wrong: records tell which
            following = framing.scan(previous + 1, size, last_sec)
            if following is None:
                reason = f"the file ends inside this packet ({size - start} of {caplen} bytes)"
                yield number, PacketDecodeError(reason, packet=number)
                return
            corrupt = True
        if corrupt:
            where = (
                f"record header at byte {pos} is corrupt "
                f"({caplen} of {wirelen} bytes captured, fraction {fraction})"
            )
            if following is None:
                reason = f"{where}; no readable record follows: {size - pos} bytes skipped"
                yield number, PacketDecodeError(reason, packet=number)
                return
            if following == stop:
                skipped = "skipped"
            elif following > pos:
                skipped = f"{following - pos} bytes skipped"
            else:  # the packet before was not as long as it said
                skipped = f"reading goes on at byte {following}"
            yield number, PacketDecodeError(f"{where}; {skipped}", packet=number)
            pos = following
            continue
        last_sec = sec
        previous = start
        pos = stop
        fields: EventFields | PacketDecodeError | None
        try:
            fields = decode(sec + fraction / divisor, data, start, stop, number)
        except PacketDecodeError as exc:
            stats.decode_errors += 1
            fields = exc
        if fields is not None:
            yield number, fields
        if pending:
            yield from pending
            pending.clear()


class _Framing:
    """The record framing of a pcap file: does a record header look right, and where does
    the next one begin after a corrupt one.

    A header looks right when its fraction of a second and its length fit, and so do those
    of the few records it leads to, whose times follow each other. That rules out reading a
    file a few bytes off: then lengths may fit, but the "times" are other fields.
    """

    def __init__(self, data: Data, order: str, divisor: float) -> None:
        self.data = data
        self.size = len(data)
        self.divisor = divisor
        self.header = struct.Struct(order + "IIII").unpack_from

    def consistent(self, p: int, *, strict: bool = False, chain: int = 4, least: int = 1) -> bool:
        """Whether ``chain`` records (or all up to the end, at least ``least`` of them) from
        ``p`` look right, each with at least one byte; ``strict`` also wants no more bytes than
        went over the wire."""
        previous = -1
        for seen in range(chain):
            if p == self.size:
                return seen >= least
            if self.size - p < 16:
                return False
            sec, fraction, caplen, wirelen = self.header(self.data, p)
            if fraction >= self.divisor or caplen > MAX_RECORD or p + 16 + caplen > self.size:
                return False
            if not caplen or (strict and caplen > wirelen):
                return False  # runs of zero bytes (padding, DHCP fields) are no records
            if previous >= 0 and not -_BACK <= sec - previous <= _JUMP:
                return False
            previous = sec
            p += 16 + caplen
        return True

    def believable(self, pos: int, stop: int) -> bool:
        """A record header that looked odd (a jump in time, more bytes than on the wire) but
        is right: the records that follow agree. More bytes than on the wire is believed only
        of a file whose next record says the same (a writer's habit, not damage)."""
        if not self.consistent(pos):
            return False
        _, _, caplen, wirelen = self.header(self.data, pos)
        if caplen <= wirelen or stop == self.size:
            return True
        _, _, caplen, wirelen = self.header(self.data, stop)
        return bool(caplen > wirelen)

    def resync(self, previous: int, pos: int, stop: int, last_sec: int) -> int | None:
        """Where reading goes on after the corrupt record header at ``pos``: at the first
        header that looks right after ``previous``, where the last record's bytes began (its
        length may have been the damaged one, and hidden records). Right after the corrupt
        record, when only its time or wire length was damaged."""
        if stop == self.size and self.consistent(pos):
            return stop
        return self.scan(previous + 1, pos + 16 + MAX_RECORD + 1, last_sec)

    def scan(self, start: int, end: int, last_sec: int) -> int | None:
        """The first position from ``start`` (before ``end``) where records look right, near
        ``last_sec``; else, since that time may be the damaged one (the record it was read
        from was only checked against its predecessor), the first where a long run of
        records agree among themselves."""
        stop = min(self.size - 15, end)
        for p in range(start, stop):
            if self.consistent(p, strict=True) and self._near(p, last_sec):
                return p
        if last_sec < 0:
            return None  # every place was near: a longer run is not found either
        for p in range(start, stop):
            if self.consistent(p, strict=True, chain=_TRUSTED, least=_TRUSTED_AT_END):
                return p
        return None

    def _near(self, p: int, last_sec: int) -> bool:
        return last_sec < 0 or abs(self.header(self.data, p)[0] - last_sec) <= _RESYNC_SECONDS


_DPKT_ERRORS: Final = (
    dpkt.Error,
    struct.error,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
    AttributeError,
)


def _read_pcapng(data: Data, decoder: PacketDecoder) -> Iterator[tuple[int, PacketRecord]]:
    if isinstance(data, mmap.mmap):
        data.seek(0)
        source: mmap.mmap | io.BytesIO = data
    else:
        source = io.BytesIO(data)
    try:
        reader = dpkt.pcapng.Reader(source)
        linktype = int(reader.datalink())
    except _DPKT_ERRORS as exc:
        yield 0, PacketDecodeError(f"unreadable pcapng header ({exc})"[:200], packet=0)
        return
    failure: list[PacketDecodeError] = []

    def frames() -> Iterator[tuple[float, bytes]]:
        records = iter(reader)
        number = 0
        while True:
            number += 1
            try:
                item = next(records, None)
            except _DPKT_ERRORS as exc:
                reason = f"unreadable pcapng block, the rest of the file is skipped ({exc})"
                failure.append(PacketDecodeError(reason[:200], packet=number))
                return
            if item is None:
                return
            yield float(item[0]), bytes(item[1])

    yield from decode_frames(frames(), linktype=linktype, decoder=decoder)
    for error in failure:
        yield error.packet, error
