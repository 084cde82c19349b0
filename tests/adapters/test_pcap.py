"""pcap adapter: the real Lockly hub capture, other file and link formats written here,
hand-built TCP/UDP/ICMP/DHCP conversations, MQTT reassembly, and fuzzed captures."""

from __future__ import annotations

import io
import socket
import struct
from collections import Counter
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commgraph.adapters.mqtt.codec import (
    encode_connack,
    encode_connect,
    encode_publish,
    encode_suback,
    encode_subscribe,
)
from commgraph.adapters.pcap import (
    DNSAnswer,
    EventFields,
    LinkType,
    PacketDecodeError,
    PacketDecoder,
    decode_capture,
    decode_frames,
    read_events,
    read_packets,
)
from commgraph.engine import Engine
from commgraph.errors import EventDecodeError
from commgraph.events import Event
from commgraph.phases import LearningSettings
from conftest import DATA

LOCKLY = DATA / "oconnor_lockly-hub-01.pcap"
needs_lockly = pytest.mark.usefixtures("shared_data")  # fails, not skips, without the data
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HUB = "192.168.1.128"
BROKER = "47.89.226.20"
ROUTER = "192.168.1.1"
Item = tuple[int, EventFields | PacketDecodeError]


# -- building captures ------------------------------------------------------------------------

ACK, SYN, FIN, PSH = 0x10, 0x02, 0x01, 0x08


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 1, frag: int = 0) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        ident,
        frag,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    return (
        struct.pack("!IHBB", 0x60000000, len(payload), next_header, 64)
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + payload
    )


def tcp(sport: int, dport: int, payload: bytes = b"", *, seq: int = 0, flags: int = ACK) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ether(payload: bytes, kind: int = 0x0800, *, vlans: tuple[int, ...] = ()) -> bytes:
    tags = b"".join(struct.pack("!HH", 0x8100, vlan) for vlan in vlans)
    return b"\x02" * 6 + b"\x04" * 6 + tags + struct.pack("!H", kind) + payload


def pcap(frames: list[tuple[float, bytes]], linktype: int = LinkType.ETHERNET) -> bytes:
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, snaplen=65535, linktype=linktype)
    for ts, frame in frames:
        writer.writepkt(frame, ts=ts)
    return out.getvalue()


def decoded(data: bytes, decoder: PacketDecoder | None = None) -> list[Item]:
    return list(decode_capture(data, decoder=decoder))


def edges(items: list[Item]) -> Counter[tuple[str, str, str]]:
    return Counter(
        (item[1], item[2], item[3]) for _, item in items if not isinstance(item, PacketDecodeError)
    )


def errors(items: list[Item]) -> list[PacketDecodeError]:
    return [item for _, item in items if isinstance(item, PacketDecodeError)]


def lockly_frames(limit: int | None = None) -> list[tuple[float, bytes]]:
    with LOCKLY.open("rb") as stream:
        frames = [(float(ts), bytes(frame)) for ts, frame in dpkt.pcap.Reader(stream)]
    return frames[:limit]


# -- the real capture -------------------------------------------------------------------------


@needs_lockly
def test_lockly_hub_graph() -> None:
    """Seven days of a smart-lock hub: 46,656 records, of which 13,667 carry no IP (11,549
    ARP, 1,016 ARP tagged VLAN 100, 1,085 EAPOL, 17 802.2 LLC frames) and 32,989 IP packets,
    each on exactly one of these edges."""
    decoder = PacketDecoder()
    items = list(read_packets(LOCKLY, decoder=decoder))
    assert items[-1][0] == 46_656
    assert not errors(items)
    assert decoder.stats.non_ip == 13_667
    assert edges(items) == {
        # the one MQTT connection, reopened 17 times (SYN seen), once already open at the start
        (HUB, BROKER, "tcp/1883"): 32_413,
        # DHCP renewals (unicast) and 17 DISCOVER/REQUEST broadcasts from 0.0.0.0, named by
        # the hub's lease: all on one edge to the router's DHCP server
        (HUB, ROUTER, "udp/67"): 398,
        # 52 queries for the broker's name and their answers (23 of them SERVFAIL)
        (HUB, ROUTER, "udp/53"): 104,
        # port unreachable: answers to DNS queries the hub had already given up
        (HUB, ROUTER, "icmp"): 35,
        # somebody on 192.168.2.0/24 pings the hub (9 requests, 9 replies)
        ("192.168.2.50", HUB, "icmp"): 18,
        # a router on the path tells the hub: time exceeded
        ("10.0.192.2", HUB, "icmp"): 6,
        # IPv6 router solicitations before the hub has an address
        ("::", "ff02::2", "icmp"): 15,
    }
    # No NTP, and every packet of tcp/1883 is cut after its TCP header: no MQTT to decode.
    assert decoder.stats.mqtt_streams == 17
    assert decoder.stats.mqtt_truncated == 17
    assert decoder.stats.mqtt_unsynced == 1
    assert decoder.stats.mqtt_events == 0


@needs_lockly
def test_lockly_dns_answers_name_the_broker() -> None:
    answers: list[DNSAnswer] = []
    items = list(read_packets(LOCKLY, decoder=PacketDecoder(on_dns=answers.append)))
    assert len(answers) == 29  # 52 responses: 29 with an A record, 23 SERVFAIL
    assert {(a.ip, a.name) for a in answers} == {
        (BROKER, "a1guxefynxg.iot-as-mqtt.us-west-1.aliyuncs.com")
    }
    first_response = next(
        item[0]
        for _, item in items
        if not isinstance(item, PacketDecodeError)
        and item[3] == "udp/53"
        and item[4] == 88  # a response with its answer is 88 bytes
    )
    assert answers[0].ts == first_response


@needs_lockly
def test_lockly_events_are_valid_and_feed_the_engine() -> None:
    engine = Engine(LearningSettings(duration=3600.0))
    count = 0
    for number, event in read_events(LOCKLY, node="node-a"):
        assert isinstance(event, Event), (number, event)
        assert event.node == "node-a"
        engine.observe(event)
        count += 1
    assert count == 32_989
    assert engine.graph.edge_count == 7


# -- other formats and link types decode the same ---------------------------------------------


def sll(frame: bytes) -> bytes:
    """The frame as Linux cooked capture (v1) would have it."""
    return struct.pack("!HHH8s", 0, 1, 6, frame[6:12]) + frame[12:]


def sll2(frame: bytes) -> bytes:
    return (
        struct.pack("!HHIHBB8s", int.from_bytes(frame[12:14], "big"), 0, 2, 1, 0, 6, frame[6:12])
        + frame[14:]
    )


def raw_ip(frame: bytes) -> bytes | None:
    p = 12
    while frame[p : p + 2] == b"\x81\x00":
        p += 4
    return frame[p + 2 :] if frame[p : p + 2] in (b"\x08\x00", b"\x86\xdd") else None


@needs_lockly
def test_other_formats_and_link_types_decode_the_same() -> None:
    frames = lockly_frames(3000)
    reference = decoded(pcap(frames))
    assert len(edges(reference)) >= 5
    assert not errors(reference)

    out = io.BytesIO()
    writer = dpkt.pcapng.Writer(out, snaplen=65535, linktype=LinkType.ETHERNET)
    for ts, frame in frames:
        writer.writepkt(frame, ts=ts)
    as_pcapng = decoded(out.getvalue())
    assert [n for n, _ in as_pcapng] == [n for n, _ in reference]
    assert all(
        a[1:] == b[1:] and abs(a[0] - b[0]) < 1e-5
        for (_, a), (_, b) in zip(as_pcapng, reference, strict=True)
        if not isinstance(a, PacketDecodeError) and not isinstance(b, PacketDecodeError)
    )

    for convert, linktype in ((sll, LinkType.LINUX_SLL), (sll2, LinkType.LINUX_SLL2)):
        cooked = decoded(pcap([(ts, convert(frame)) for ts, frame in frames], linktype))
        assert cooked == reference, linktype

    # `tcpdump -i any` sees a loopback packet leaving and arriving: the leaving copy goes
    leaving = struct.pack("!HHH8s", 4, 772, 6, bytes(8)) + frames[0][1][12:]
    decoder = PacketDecoder()
    assert decoded(pcap([frames[0], (frames[0][0], leaving)], LinkType.LINUX_SLL), decoder) == [
        item for item in reference if item[0] == 1
    ]
    assert decoder.stats.loopback_copies == 1

    nano = io.BytesIO()
    nano_writer = dpkt.pcap.Writer(nano, snaplen=65535, nano=True)
    for ts, frame in frames:
        nano_writer.writepkt(frame, ts=ts)
    assert [(n, item[1:]) for n, item in decoded(nano.getvalue())] == [
        (n, item[1:]) for n, item in reference
    ]

    ip_frames = [(ts, ip) for ts, frame in frames if (ip := raw_ip(frame)) is not None]
    raw = decoded(pcap(ip_frames, LinkType.RAW))
    assert [item for _, item in raw] == [item for _, item in reference]

    assert list(decode_frames(frames)) == reference


def test_big_endian_pcap() -> None:
    frame = ether(ipv4("10.0.0.2", "10.0.0.1", 17, udp(40000, 53)))
    header = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    record = struct.pack(">IIII", 1_700_000_000, 250_000, len(frame), len(frame)) + frame
    assert decoded(header + record) == [
        (1, (1_700_000_000.25, "10.0.0.2", "10.0.0.1", "udp/53", 8))
    ]


def test_unsupported_link_type_and_not_a_capture() -> None:
    (item,) = decoded(pcap([(1.0, b"\x00" * 40)], linktype=105))
    assert isinstance(item[1], PacketDecodeError) and item[0] == 0
    assert "link type 105 is not supported" in str(item[1])
    (item,) = decoded(b'{"ts": 1, "src": "a"}\n')
    assert str(item[1]).startswith("file header: not a pcap or pcapng file")
    (item,) = decoded(b"")
    assert isinstance(item[1], PacketDecodeError)


def test_empty_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    assert [str(item) for _, item in read_packets(path)] == ["file header: the file is empty"]


# -- who initiates ----------------------------------------------------------------------------


def flows_of(
    frames: list[bytes], decoder: PacketDecoder | None = None, step: float = 1.0
) -> list[tuple[str, str, str]]:
    items = decoded(pcap([(1000.0 + i * step, f) for i, f in enumerate(frames)]), decoder)
    assert not errors(items), errors(items)
    return [
        (item[1], item[2], item[3]) for _, item in items if not isinstance(item, PacketDecodeError)
    ]


def test_tcp_initiator_is_the_syn_sender_whatever_the_ports() -> None:
    a, b = "10.0.0.1", "10.0.0.2"
    frames = [
        ether(ipv4(a, b, 6, tcp(80, 45000, flags=SYN, seq=7))),  # a low port opens a connection
        ether(ipv4(b, a, 6, tcp(45000, 80, flags=SYN | ACK))),
        ether(ipv4(a, b, 6, tcp(80, 45000, b"hi"))),
        ether(ipv4(b, a, 6, tcp(45000, 80, flags=FIN | ACK))),
    ]
    assert flows_of(frames) == [(a, b, "tcp/45000")] * 4


def test_tcp_open_before_the_capture() -> None:
    hub, broker = "192.168.1.128", "47.89.226.20"
    # the broker speaks first, from its service port: the hub is still the initiator
    assert (
        flows_of(
            [
                ether(ipv4(broker, hub, 6, tcp(1883, 62304, b"x"))),
                ether(ipv4(hub, broker, 6, tcp(62304, 1883))),
            ]
        )
        == [(hub, broker, "tcp/1883")] * 2
    )
    # between two client ports, whoever is seen first initiates
    assert flows_of([ether(ipv4(broker, hub, 6, tcp(40001, 50002)))]) == [
        (broker, hub, "tcp/50002")
    ]
    # only the SYN-ACK was captured: its receiver initiated
    assert flows_of([ether(ipv4(hub, broker, 6, tcp(40001, 50002, flags=SYN | ACK)))]) == [
        (broker, hub, "tcp/40001")
    ]


def test_udp_exchanges_and_their_expiry() -> None:
    a, b = "10.0.0.1", "10.0.0.2"
    frames = [
        ether(ipv4(b, a, 17, udp(53, 40000))),  # a DNS answer seen first: a asked
        ether(ipv4(a, b, 17, udp(40000, 53))),
        ether(ipv4(a, b, 17, udp(41000, 42000))),  # a starts an exchange between client ports
        ether(ipv4(b, a, 17, udp(42000, 41000))),  # b answers within the idle time
    ]
    assert flows_of(frames) == [(a, b, "udp/53")] * 2 + [(a, b, "udp/42000")] * 2
    # silent longer than idle_timeout: the next packet starts a new exchange
    later = [ether(ipv4(a, b, 17, udp(41000, 42000))), ether(ipv4(b, a, 17, udp(42000, 41000)))]
    assert flows_of(later, PacketDecoder(idle_timeout=120.0), step=121.0) == [
        (a, b, "udp/42000"),
        (b, a, "udp/41000"),
    ]


def test_icmp_and_other_protocols() -> None:
    a, b = "10.0.0.1", "10.0.0.2"
    frames = [
        ether(ipv4(b, a, 1, b"\x00\x00" + b"\x00" * 6)),  # echo reply seen first: a pinged
        ether(ipv4(a, b, 1, b"\x08\x00" + b"\x00" * 6)),
        ether(ipv4(a, "224.0.0.22", 2, b"\x22" * 8)),  # IGMP
        ether(
            ipv6("fe80::1", "fe80::2", 58, b"\x81\x00" + b"\x00" * 6), 0x86DD
        ),  # ICMPv6 echo reply
    ]
    assert flows_of(frames) == [
        (a, b, "icmp"),
        (a, b, "icmp"),
        (a, "224.0.0.22", "ip/2"),
        ("fe80::2", "fe80::1", "icmp"),
    ]


def test_vlan_tags_ipv6_extension_headers_and_non_ip_frames() -> None:
    hop_by_hop = bytes((17, 0)) + b"\x00" * 6  # next header UDP, 8 bytes
    frames = [
        ether(ipv4("10.0.0.1", "10.0.0.2", 17, udp(40000, 123, b"n" * 48)), vlans=(100, 200)),
        ether(ipv6("2001:db8::1", "2001:db8::2", 0, hop_by_hop + udp(40000, 5683, b"c")), 0x86DD),
        ether(b"\x00\x01\x08\x00" + b"\x00" * 24, kind=0x0806),  # ARP
        ether(b"\x01\x03\x00\x5f", kind=0x888E),  # EAPOL
    ]
    decoder = PacketDecoder()
    items = decoded(pcap([(1.0, f) for f in frames]), decoder)
    assert [item for _, item in items] == [
        (1.0, "10.0.0.1", "10.0.0.2", "udp/123", 56),
        (1.0, "2001:db8::1", "2001:db8::2", "udp/5683", 9),  # the UDP datagram, after the option
    ]
    assert decoder.stats.non_ip == 2


def test_ip_fragments_follow_their_first() -> None:
    a, b = "10.0.0.1", "10.0.0.2"
    datagram = udp(40000, 5683, b"x" * 40)
    frames = [
        ether(ipv4(a, b, 17, datagram[:24], ident=9, frag=0x2000)),  # more fragments
        ether(ipv4(a, b, 17, datagram[24:], ident=9, frag=3)),  # offset 24 bytes
        ether(ipv4(a, b, 17, b"y" * 16, ident=10, frag=3)),  # its first fragment never came
    ]
    decoder = PacketDecoder()
    assert flows_of(frames, decoder) == [(a, b, "udp/5683")] * 2
    assert decoder.stats.fragments_unmatched == 1


def dhcp(
    op: int, ciaddr: str, yiaddr: str, message_type: int, mac: bytes, *options: bytes
) -> bytes:
    fixed = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        op,
        1,
        6,
        0,
        0x1234,
        0,
        0,
        socket.inet_aton(ciaddr),
        socket.inet_aton(yiaddr),
        bytes(4),
        bytes(4),
        mac,
        b"",
        b"",
    )
    return fixed + b"\x63\x82\x53\x63" + bytes((53, 1, message_type)) + b"".join(options) + b"\xff"


def test_dhcp_is_the_clients_edge_even_from_0_0_0_0() -> None:
    mac = bytes.fromhex("246f28d9a764")
    server, client = "192.168.1.1", "192.168.1.50"
    frames = [
        # a DISCOVER before anything is known: all the decoder can say
        ether(
            ipv4(
                "0.0.0.0", "255.255.255.255", 17, udp(68, 67, dhcp(1, "0.0.0.0", "0.0.0.0", 1, mac))
            )
        ),
        # the server's OFFER (to the offered address), the REQUEST (broadcast, option 50)
        ether(ipv4(server, client, 17, udp(67, 68, dhcp(2, "0.0.0.0", client, 2, mac)))),
        ether(
            ipv4(
                "0.0.0.0",
                "255.255.255.255",
                17,
                udp(
                    68,
                    67,
                    dhcp(1, "0.0.0.0", "0.0.0.0", 3, mac, b"\x32\x04" + socket.inet_aton(client)),
                ),
            )
        ),
        # an ACK broadcast back, then days later a DISCOVER again: named by the lease
        ether(ipv4(server, "255.255.255.255", 17, udp(67, 68, dhcp(2, "0.0.0.0", client, 5, mac)))),
        ether(
            ipv4(
                "0.0.0.0", "255.255.255.255", 17, udp(68, 67, dhcp(1, "0.0.0.0", "0.0.0.0", 1, mac))
            )
        ),
        # a renewal, unicast
        ether(ipv4(client, server, 17, udp(68, 67, dhcp(1, client, "0.0.0.0", 3, mac)))),
        # DHCPv6: the side on port 546 is the client
        ether(ipv6("fe80::1", "ff02::1:2", 17, udp(546, 547, b"\x01" + b"\x00" * 3)), 0x86DD),
        ether(ipv6("fe80::9", "fe80::1", 17, udp(547, 546, b"\x02" + b"\x00" * 3)), 0x86DD),
    ]
    assert flows_of(frames) == [
        ("0.0.0.0", "255.255.255.255", "udp/67"),
        (client, server, "udp/67"),
        (client, server, "udp/67"),
        (client, server, "udp/67"),
        (client, server, "udp/67"),
        (client, server, "udp/67"),
        ("fe80::1", "ff02::1:2", "udp/547"),
        ("fe80::1", "fe80::9", "udp/547"),
    ]


def test_the_flow_table_is_bounded() -> None:
    decoder = PacketDecoder(max_flows=10)
    frames = [ether(ipv4("10.0.0.1", "10.0.0.2", 17, udp(20000 + i, 5683))) for i in range(100)]
    assert len(flows_of(frames, decoder, step=0.001)) == 100
    assert len(decoder._udp) <= 20
    assert decoder.stats.flows == 100
    assert decoder.stats.flows_evicted >= 80


# -- DNS ----------------------------------------------------------------------------------------


def dns_response(qname: str, answers: list[tuple[str, int, bytes]]) -> bytes:
    message = dpkt.dns.DNS(id=7)
    message.qr = dpkt.dns.DNS_R  # a response
    message.rd = message.ra = 1
    message.qd = [dpkt.dns.DNS.Q(name=qname, type=dpkt.dns.DNS_A)]
    records = []
    for name, kind, value in answers:
        rr = dpkt.dns.DNS.RR(name=name, type=kind, ttl=60)
        if kind == dpkt.dns.DNS_CNAME:
            rr.cname = value.decode()
        else:
            rr.rdata = value
        records.append(rr)
    message.an = records
    return bytes(message)


def test_dns_answers_follow_cnames_back_to_the_asked_name() -> None:
    answers: list[DNSAnswer] = []
    response = dns_response(
        "A1B2.iot.eu-west-1.amazonaws.com",
        [
            (
                "A1B2.iot.eu-west-1.amazonaws.com",
                dpkt.dns.DNS_CNAME,
                b"iot.eu-west-1.elb.amazonaws.com",
            ),
            ("iot.eu-west-1.elb.amazonaws.com", dpkt.dns.DNS_A, socket.inet_aton("52.1.2.3")),
            (
                "iot.eu-west-1.elb.amazonaws.com",
                dpkt.dns.DNS_AAAA,
                socket.inet_pton(socket.AF_INET6, "2a05::7"),
            ),
        ],
    )
    frames = [
        ether(ipv4("10.0.0.2", "10.0.0.53", 17, udp(40000, 53, b"q" * 12))),
        ether(ipv4("10.0.0.53", "10.0.0.2", 17, udp(53, 40000, response))),
        ether(ipv4("10.0.0.53", "10.0.0.2", 17, udp(53, 40000, response[:8] + b"\xff" * 40))),
    ]
    items = decoded(pcap([(5.0, f) for f in frames]), PacketDecoder(on_dns=answers.append))
    assert answers == [
        DNSAnswer(5.0, "52.1.2.3", "a1b2.iot.eu-west-1.amazonaws.com"),
        DNSAnswer(5.0, "2a05::7", "a1b2.iot.eu-west-1.amazonaws.com"),
    ]
    (error,) = errors(items)
    assert error.packet == 3 and "DNS response is malformed" in str(error)
    assert len(edges(items)) == 1 and sum(edges(items).values()) == 3


# -- MQTT inside TCP --------------------------------------------------------------------------

CLIENT, SERVER = "10.0.0.2", "10.0.0.1"


class Conversation:
    """Segments of one TCP connection client:50000 <-> broker:1883, numbered as sent."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, bytes]] = []
        self.seq = {CLIENT: 1000, SERVER: 90_000}
        self.ts = 1_700_000_000.0

    def send(
        self, side: str, payload: bytes = b"", *, flags: int = ACK | PSH, seq: int | None = None
    ) -> int:
        other = SERVER if side == CLIENT else CLIENT
        sport, dport = (50000, 1883) if side == CLIENT else (1883, 50000)
        at = self.seq[side] if seq is None else seq
        self.ts += 0.01
        self.frames.append(
            (self.ts, ether(ipv4(side, other, 6, tcp(sport, dport, payload, seq=at, flags=flags))))
        )
        if seq is None:
            self.seq[side] += len(payload) + (1 if flags & (SYN | FIN) else 0)
        return at

    def open(self) -> None:
        self.send(CLIENT, flags=SYN)
        self.send(SERVER, flags=SYN | ACK)
        self.send(CLIENT, flags=ACK)


def mqtt_of(items: list[Item]) -> list[tuple[str, str, str, int | None]]:
    return [
        (item[1], item[2], item[3], item[4])
        for _, item in items
        if not isinstance(item, PacketDecodeError) and not item[3].startswith("tcp/")
    ]


@pytest.mark.parametrize("level", [4, 5])
def test_mqtt_reassembled_in_order_despite_splits_retransmissions_and_reordering(
    level: int,
) -> None:
    v5 = level == 5
    talk = Conversation()
    talk.open()
    connect = encode_connect(
        "lock-7", protocol_level=level, will_topic="locks/7/status", will_payload=b"offline"
    )
    talk.send(CLIENT, connect[:5])  # CONNECT in two segments
    talk.send(CLIENT, connect[5:])
    talk.send(SERVER, encode_connack(v5=v5))
    burst = encode_subscribe(1, [("locks/7/cmd", 1), ("site/#", 0)], v5=v5) + encode_publish(
        "locks/7/state", b"locked", qos=1, packet_id=2, v5=v5
    )
    first = talk.seq[CLIENT]
    a, b, c = burst[:7], burst[7:20], burst[20:]
    talk.send(CLIENT, c, seq=first + 20)  # the last part arrives first
    talk.send(CLIENT, a, seq=first)
    talk.send(CLIENT, a, seq=first)  # a retransmission
    talk.send(CLIENT, b, seq=first + 7)
    talk.seq[CLIENT] = first + len(burst)
    deliver = encode_publish("locks/7/cmd", b"unlock", v5=v5) + encode_publish(
        "site/alarm", b"armed!", v5=v5
    )
    start = talk.seq[SERVER]
    talk.send(SERVER, encode_suback(1, [1, 0], v5=v5))
    start = talk.seq[SERVER]
    talk.send(SERVER, deliver[:10], seq=start)
    talk.send(SERVER, deliver[:10], seq=start)  # retransmitted
    talk.send(SERVER, deliver[5:25], seq=start + 5)  # overlaps what came and brings more
    talk.send(SERVER, deliver[25:], seq=start + 25)
    talk.seq[SERVER] = start + len(deliver)
    talk.send(CLIENT, b"", flags=FIN | ACK)

    decoder = PacketDecoder()
    items = decoded(pcap(talk.frames), decoder)
    assert not errors(items)
    assert mqtt_of(items) == [
        ("lock-7", "locks/7/status", "publish", None),  # the will, as the proxy records it
        ("lock-7", "locks/7/cmd", "subscribe", None),
        ("lock-7", "site/#", "subscribe", None),
        ("lock-7", "locks/7/state", "publish", 6),
        ("locks/7/cmd", "lock-7", "deliver", 6),
        ("site/alarm", "lock-7", "deliver", 6),
    ]
    # every segment is also a flow event of the connection
    flows = [
        item
        for _, item in items
        if not isinstance(item, PacketDecodeError) and item[3] == "tcp/1883"
    ]
    assert len(flows) == len(talk.frames)
    assert {(f[1], f[2]) for f in flows} == {(CLIENT, SERVER)}
    # a topic event carries the number of the packet that completed it
    numbers = [
        n for n, item in items if not isinstance(item, PacketDecodeError) and item[3] == "deliver"
    ]
    assert numbers == [len(talk.frames) - 2, len(talk.frames) - 1]  # bytes 0-20, then 21-
    assert decoder.stats.mqtt_streams == 1 and decoder.stats.mqtt_events == 6


def test_mqtt_garbage_is_one_error_and_the_flows_go_on() -> None:
    talk = Conversation()
    talk.open()
    talk.send(CLIENT, encode_connect("lock-7"))
    talk.send(CLIENT, b"\x00\x00garbage")
    talk.send(CLIENT, encode_publish("t", b"", v5=False))
    decoder = PacketDecoder()
    items = decoded(pcap(talk.frames), decoder)
    (error,) = errors(items)
    assert error.packet == 5
    assert (
        "MQTT from the client of 10.0.0.2 -> 10.0.0.1 tcp/1883: packet type 0 is reserved"
        in str(error)
    )
    assert mqtt_of(items) == []
    assert sum(edges(items).values()) == len(talk.frames)
    assert decoder.stats.mqtt_errors == 1


def test_mqtt_streams_that_cannot_be_decoded_are_given_up_quietly() -> None:
    tls = Conversation()
    tls.open()
    tls.send(CLIENT, b"\x16\x03\x01\x00\x50" + b"\x01" * 80)  # a TLS ClientHello on 1883
    decoder = PacketDecoder()
    assert not errors(decoded(pcap(tls.frames), decoder))
    assert decoder.stats.mqtt_not_mqtt == 1

    gap = Conversation()
    gap.open()
    gap.send(CLIENT, encode_connect("lock-7"))
    lost = gap.send(CLIENT, encode_publish("a", b"1", v5=False))
    gap.frames.pop()  # never captured
    for _ in range(3):
        gap.send(CLIENT, encode_publish("b", b"2", v5=False))
    decoder = PacketDecoder(max_ahead=10)
    items = decoded(pcap(gap.frames), decoder)
    assert not errors(items) and lost
    assert mqtt_of(items) == []  # the CONNECT alone yields nothing
    assert decoder.stats.mqtt_gaps == 1

    cut = Conversation()
    cut.open()
    cut.send(CLIENT, encode_connect("lock-7"))
    ts, frame = cut.frames[-1]
    cut.frames[-1] = (ts, frame[:54])  # the snapshot length kept the headers only
    decoder = PacketDecoder()
    assert not errors(decoded(pcap(cut.frames), decoder))
    assert decoder.stats.mqtt_truncated == 1


def test_mqtt_client_without_client_id_is_named_by_its_address() -> None:
    talk = Conversation()
    talk.open()
    talk.send(CLIENT, encode_connect("") + encode_publish("t/1", b"x", v5=False))
    assert mqtt_of(decoded(pcap(talk.frames))) == [(CLIENT, "t/1", "publish", 1)]


# -- damaged captures -------------------------------------------------------------------------


def sample() -> bytes:
    """The first 600 records of the Lockly capture: VLAN, ARP, EAPOL, LLC, DHCP, DNS, ICMP."""
    data = LOCKLY.read_bytes()
    pos = 24
    for _ in range(600):
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    return data[:pos]


def mqtt_sample() -> bytes:
    talk = Conversation()
    talk.open()
    talk.send(CLIENT, encode_connect("lock-7", will_topic="w", will_payload=b"x"))
    talk.send(SERVER, encode_connack(v5=False))
    talk.send(CLIENT, encode_subscribe(1, [("a/+", 1)], v5=False))
    talk.send(SERVER, encode_suback(1, [1], v5=False) + encode_publish("a/b", b"xyz", v5=False))
    talk.send(CLIENT, encode_publish("a/c", b"123", qos=1, packet_id=3, v5=False))
    return pcap(talk.frames)


SAMPLE = sample() if LOCKLY.exists() else b""
MQTT_SAMPLE = mqtt_sample()


def record_offsets(data: bytes) -> list[int]:
    offsets, pos = [], 24
    while pos + 16 <= len(data):
        offsets.append(pos)
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    return offsets


def check_only_our_errors(items: list[Item]) -> None:
    for number, item in items:
        if isinstance(item, PacketDecodeError):
            assert isinstance(item, EventDecodeError)
            assert item.packet == number == item.line
            assert str(item).startswith("file header: " if number == 0 else f"packet {number}: ")
        else:
            Event(ts=item[0], src=item[1], dst=item[2], relation=item[3], size=item[4])


@needs_lockly
@FUZZ
@given(cut=st.integers(min_value=0, max_value=len(SAMPLE)))
def test_truncated_capture_keeps_everything_before_the_cut(cut: int) -> None:
    original = decoded(SAMPLE)
    items = decoded(SAMPLE[:cut])
    check_only_our_errors(items)
    offsets = record_offsets(SAMPLE)
    whole = sum(
        1
        for offset in offsets
        if offset + 16 + struct.unpack_from("<I", SAMPLE, offset + 8)[0] <= cut
    )
    assert [item for item in items if 1 <= item[0] <= whole] == [
        item for item in original if item[0] <= whole
    ]
    rest = [item for item in items if item[0] > whole or item[0] == 0]
    if cut < 24:
        assert len(rest) == 1 and rest[0][0] == 0
    elif cut in offsets or cut == len(SAMPLE):
        assert rest == []
    else:
        assert len(rest) == 1 and rest[0][0] == whole + 1  # one error names the cut packet
        assert "the file ends inside this packet" in str(rest[0][1])


@needs_lockly
@FUZZ
@given(data=st.data())
def test_damaged_packet_headers_are_errors_of_those_packets_only(data: st.DataObject) -> None:
    offsets = record_offsets(SAMPLE)
    damaged = bytearray(SAMPLE)
    hit = set()
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(offsets) - 1))
        offset = offsets[index]
        caplen = struct.unpack_from("<I", SAMPLE, offset + 8)[0]
        at = offset + 16 + data.draw(st.integers(0, min(caplen, 60) - 1))
        damaged[at] ^= data.draw(st.integers(1, 255))
        hit.add(index + 1)
    original = decoded(SAMPLE)
    items = decoded(bytes(damaged))
    check_only_our_errors(items)
    assert {n for n, item in items if isinstance(item, PacketDecodeError)} <= hit
    with_flow = {n for n, item in original if not isinstance(item, PacketDecodeError)}
    assert with_flow - hit <= {n for n, item in items if not isinstance(item, PacketDecodeError)}


@needs_lockly
@FUZZ
@given(data=st.data())
def test_damaged_record_headers_lose_little_and_the_rest_is_read(data: st.DataObject) -> None:
    offsets = record_offsets(SAMPLE)
    damaged = bytearray(SAMPLE)
    for _ in range(data.draw(st.integers(1, 4))):
        # in the first half: a damaged length may swallow a few records that follow
        offset = offsets[data.draw(st.integers(0, len(offsets) // 2))]
        damaged[offset + data.draw(st.integers(0, 15))] ^= data.draw(st.integers(1, 255))
    original = decoded(SAMPLE)
    items = decoded(bytes(damaged))
    check_only_our_errors(items)
    # the last packets come out as they did (their numbers may shift when records were lost)
    tail = [item for _, item in original[-10:]]
    assert [item for _, item in items[-10:]] == tail


@needs_lockly
@pytest.mark.parametrize(
    "damage",
    [
        # found by the test above: the first record's time is off by 194 days, so nothing
        # after the damaged second header was near it and the rest of the file was skipped
        [(24 + 3, 0x01), (100 + 2, 0x01)],
        [(24 + 3, 0x01), (100 + 7, 0xFF)],  # ... and the second's fraction of a second
        [(24 + 3, 0x01), (100 + 9, 0x40)],  # ... and the second's captured length
    ],
)
def test_a_damaged_header_after_a_first_record_with_a_wrong_time_loses_only_itself(
    damage: list[tuple[int, int]],
) -> None:
    assert record_offsets(SAMPLE)[:3] == [24, 100, 170]
    damaged = bytearray(SAMPLE)
    for at, flip in damage:
        damaged[at] ^= flip
    original = decoded(SAMPLE)
    items = decoded(bytes(damaged))
    check_only_our_errors(items)
    [error] = errors(items)
    assert error.packet == 2 and "record header at byte 100 is corrupt" in str(error)
    assert "no readable record follows" not in str(error)
    assert [item for item in items if item[0] >= 3] == [item for item in original if item[0] >= 3]


def test_a_damaged_header_where_a_merged_capture_jumps_in_time_loses_only_itself() -> None:
    later = 60 * 86_400  # beyond how far a record found after a damaged one may be
    frames = [
        (1_600_000_000.0 + at + i, ether(ipv4("10.0.0.1", f"10.0.1.{i}", 17, udp(5000, 53))))
        for at in (0, later)
        for i in range(20)
    ]
    data = pcap(frames)
    original = decoded(data)
    offset = record_offsets(data)[20]
    damaged = bytearray(data)
    damaged[offset + 7] ^= 0xFF  # the fraction of a second: a million or more
    items = decoded(bytes(damaged))
    [error] = errors(items)
    assert error.packet == 21 and "skipped" in str(error)
    assert "no readable record follows" not in str(error)
    assert [item for item in items if item[0] != 21] == [item for item in original if item[0] != 21]


@FUZZ
@given(data=st.data())
def test_damaged_mqtt_streams_raise_nothing(data: st.DataObject) -> None:
    damaged = bytearray(MQTT_SAMPLE)
    for _ in range(data.draw(st.integers(1, 6))):
        damaged[data.draw(st.integers(24, len(damaged) - 1))] ^= data.draw(st.integers(1, 255))
    items = decoded(bytes(damaged))
    check_only_our_errors(items)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([b"", MQTT_SAMPLE[:24], MQTT_SAMPLE[:200]]))
def test_garbage_raises_nothing(garbage: bytes, prefix: bytes) -> None:
    check_only_our_errors(decoded(prefix + garbage))
    pcapng = io.BytesIO()
    dpkt.pcapng.Writer(pcapng, linktype=1).writepkt(
        ether(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2))), ts=1.0
    )
    check_only_our_errors(decoded(pcapng.getvalue()[: len(garbage)] + garbage))


def test_a_truncated_final_record_is_one_error() -> None:
    data = MQTT_SAMPLE[:-3]
    items = decoded(data)
    assert [n for n, item in items if isinstance(item, PacketDecodeError)] == [
        len(record_offsets(MQTT_SAMPLE))
    ]
    assert "the file ends inside this packet" in str(items[-1][1])
