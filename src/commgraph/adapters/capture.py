"""Live capture: frames from one network interface, for the decoder capture files go through.

An ``AF_PACKET`` raw socket (Linux; needs CAP_NET_RAW) receives every frame of the
interface with the kernel's receive time stamp; a :class:`CaptureFilter` on ports and hosts,
checked in Python, keeps what is wanted. On the loopback interface the kernel hands a raw
socket each packet twice, once leaving and once arriving: the leaving copy is dropped there
(on other interfaces it is the host's own traffic, and kept). The frames go to
:func:`commgraph.adapters.pcap.decode_frames`, or into a pcap file with :func:`save_pcap`.

Three shells around the socket: :meth:`LiveCapture.read_available` (never waits),
:meth:`LiveCapture.read` (asyncio: waits with ``loop.add_reader``) and
:meth:`LiveCapture.collect` / :func:`capture` (block for a bounded time, for tests and tools).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import select
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import dpkt  # type: ignore[import-untyped]

from commgraph.adapters.pcap import (
    MAX_RECORD,
    LinkType,
    PacketDecoder,
    PacketRecord,
    decode_frames,
)
from commgraph.errors import CaptureError

__all__ = [
    "CaptureError",
    "CaptureFilter",
    "CaptureStats",
    "Frame",
    "LiveCapture",
    "capture",
    "live_events",
    "save_pcap",
]

# (receive time in epoch seconds, the frame's bytes from its link-layer header on)
Frame = tuple[float, bytes]

_ETH_P_ALL: Final = 0x0003
_SO_TIMESTAMPNS: Final = 35  # = SCM_TIMESTAMPNS; Linux, all architectures
_TIMESPEC: Final = struct.Struct("@ll")
_ARPHRD_LOOPBACK: Final = 772
# ARPHRD_ type of the interface -> the link type its frames have
_LINK_TYPES: Final = {
    1: LinkType.ETHERNET,
    _ARPHRD_LOOPBACK: LinkType.ETHERNET,  # Ethernet headers with zero addresses
    519: LinkType.RAW,  # ARPHRD_RAWIP
    0xFFFE: LinkType.RAW,  # ARPHRD_NONE: tun, WireGuard
}


@dataclass(frozen=True, slots=True)
class CaptureFilter:
    """Which packets to keep: a port (either end) among ``ports`` and a host (either end)
    among ``hosts``. Empty means any; with either set, frames without IP are dropped."""

    ports: frozenset[int] = frozenset()
    hosts: frozenset[str] = frozenset()
    _packed: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ports", frozenset(self.ports))
        object.__setattr__(self, "hosts", frozenset(self.hosts))
        for port in self.ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
                raise CaptureError(f"capture filter: port {port!r} is not a number 0-65535")
        packed = set()
        for host in self.hosts:
            try:
                packed.add(ipaddress.ip_address(host).packed)
            except ValueError:
                raise CaptureError(f"capture filter: host {host!r} is not an IP address") from None
        object.__setattr__(self, "_packed", frozenset(packed))

    @property
    def everything(self) -> bool:
        """Whether every frame is kept (no ports, no hosts)."""
        return not self.ports and not self.hosts

    def matches(self, frame: bytes, linktype: int = LinkType.ETHERNET) -> bool:
        """Whether to keep this frame; a frame too short to tell is dropped."""
        if not self.ports and not self.hosts:
            return True
        if linktype == LinkType.ETHERNET:
            if len(frame) < 14:
                return False
            kind = frame[12] << 8 | frame[13]
            p = 14
            while kind in (0x8100, 0x88A8) and len(frame) >= p + 4:
                kind = frame[p + 2] << 8 | frame[p + 3]
                p += 4
        elif linktype == LinkType.RAW and frame:
            kind = {4: 0x0800, 6: 0x86DD}.get(frame[0] >> 4, 0)
            p = 0
        else:
            return False
        if kind == 0x0800 and len(frame) >= p + 20:
            source, destination = frame[p + 12 : p + 16], frame[p + 16 : p + 20]
            proto = frame[p + 9]
            l4 = p + ((frame[p] & 0x0F) << 2)
            if (frame[p + 6] << 8 | frame[p + 7]) & 0x1FFF:
                l4 = -1  # a later fragment carries no ports
        elif kind == 0x86DD and len(frame) >= p + 40:
            source, destination = frame[p + 8 : p + 24], frame[p + 24 : p + 40]
            proto = frame[p + 6]
            l4 = p + 40  # extension headers before ports are not followed
        else:
            return False
        if self._packed and source not in self._packed and destination not in self._packed:
            return False
        if not self.ports:
            return True
        if proto not in (6, 17) or l4 < 0 or len(frame) < l4 + 4:
            return False
        return (frame[l4] << 8 | frame[l4 + 1]) in self.ports or (
            frame[l4 + 2] << 8 | frame[l4 + 3]
        ) in self.ports


@dataclass(slots=True)
class CaptureStats:
    """What the socket delivered, and what was not kept."""

    frames: int = 0  # kept
    filtered: int = 0  # dropped by the filter
    loopback_copies: int = 0  # the leaving copy of a loopback packet
    truncated: int = 0  # longer than the receive buffer: kept, cut


def _link_type(interface: str) -> LinkType:
    try:
        socket.if_nametoindex(interface)
    except OSError:
        raise CaptureError(f"no network interface named {interface!r}") from None
    try:
        hardware = int(Path(f"/sys/class/net/{interface}/type").read_text())
    except (OSError, ValueError):
        return LinkType.ETHERNET
    link = _LINK_TYPES.get(hardware)
    if link is None:
        raise CaptureError(
            f"interface {interface!r} has hardware type {hardware}; the decoder reads Ethernet, "
            "loopback and raw IP interfaces"
        )
    return link


class LiveCapture:
    """An open capture on ``interface``; close it (or use ``with``) to release the socket.

    Raises :class:`CaptureError` when the interface does not exist or the process lacks
    CAP_NET_RAW.
    """

    def __init__(
        self,
        interface: str,
        capture_filter: CaptureFilter | None = None,
        *,
        buffer_size: int = 4 * 1024 * 1024,
    ) -> None:
        self.interface = interface
        self.filter = capture_filter if capture_filter is not None else CaptureFilter()
        self.linktype = _link_type(interface)
        self.stats = CaptureStats()
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(_ETH_P_ALL))
        except PermissionError:
            python = os.path.realpath(sys.executable)
            raise CaptureError(
                "live capture needs CAP_NET_RAW: run as root or "
                f"`sudo setcap cap_net_raw+ep {python}`"
            ) from None
        except OSError as exc:
            raise CaptureError(f"cannot open a packet socket: {exc.strerror}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            sock.bind((interface, _ETH_P_ALL))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.ENODEV:
                raise CaptureError(f"no network interface named {interface!r}") from None
            raise CaptureError(f"cannot capture on {interface!r}: {exc.strerror}") from None
        self._sock: socket.socket | None = sock
        self._ancillary = socket.CMSG_SPACE(_TIMESPEC.size)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        if self._sock is None:
            raise CaptureError(f"the capture on {self.interface!r} is closed")
        return self._sock.fileno()

    def read_available(self, limit: int = 10_000) -> list[Frame]:
        """The frames waiting in the socket (at most ``limit``); never waits."""
        sock = self._sock
        if sock is None:
            raise CaptureError(f"the capture on {self.interface!r} is closed")
        stats = self.stats
        keep = self.filter.matches
        everything = self.filter.everything
        linktype = self.linktype
        frames: list[Frame] = []
        for _ in range(limit):
            try:
                frame, ancillary, flags, address = sock.recvmsg(MAX_RECORD, self._ancillary)
            except (BlockingIOError, InterruptedError):
                break
            if address[0] != self.interface:
                continue  # queued before the socket was bound
            if address[2] == socket.PACKET_OUTGOING and address[3] == _ARPHRD_LOOPBACK:
                stats.loopback_copies += 1
                continue
            if not everything and not keep(frame, linktype):
                stats.filtered += 1
                continue
            if flags & socket.MSG_TRUNC:
                stats.truncated += 1
            stats.frames += 1
            frames.append((_receive_time(ancillary), frame))
        return frames

    def collect(
        self,
        seconds: float,
        *,
        max_frames: int = 1_000_000,
        stop: Callable[[], bool] | None = None,
    ) -> list[Frame]:
        """Frames received during ``seconds`` (blocking), fewer when ``max_frames`` are in
        or ``stop()`` turns true (it is asked at least every 0.1 s). What the socket holds
        when the time is up or ``stop()`` answers true is taken too."""
        deadline = time.monotonic() + seconds
        frames: list[Frame] = []
        fd = self.fileno()
        while len(frames) < max_frames:
            left = deadline - time.monotonic()
            if left <= 0 or (stop is not None and stop()):
                frames += self.read_available(max_frames - len(frames))
                break
            readable, _, _ = select.select([fd], [], [], min(left, 0.1))
            if readable:
                frames += self.read_available(max_frames - len(frames))
        return frames

    async def read(self) -> list[Frame]:
        """The next frames; waits on the event loop until at least one is kept."""
        frames = self.read_available()
        if frames:
            return frames
        loop = asyncio.get_running_loop()
        fd = self.fileno()
        while not frames:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            frames = self.read_available()
        return frames


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _receive_time(ancillary: list[tuple[int, int, bytes]]) -> float:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return float(seconds + nanoseconds / 1e9)
    return time.time()


def capture(
    interface: str,
    seconds: float,
    capture_filter: CaptureFilter | None = None,
    *,
    max_frames: int = 1_000_000,
) -> list[Frame]:
    """Capture on ``interface`` for ``seconds`` (blocking); raises :class:`CaptureError`."""
    with LiveCapture(interface, capture_filter) as live:
        return live.collect(seconds, max_frames=max_frames)


def save_pcap(
    path: str | os.PathLike[str],
    frames: Iterable[Frame],
    *,
    linktype: int = LinkType.ETHERNET,
) -> int:
    """Write frames to a pcap file (microsecond time stamps); returns how many."""
    count = 0
    with open(path, "wb") as out:
        writer = dpkt.pcap.Writer(out, snaplen=MAX_RECORD, linktype=linktype)
        for ts, frame in frames:
            writer.writepkt(frame, ts=ts)
            count += 1
    return count


async def live_events(
    live: LiveCapture, decoder: PacketDecoder | None = None
) -> AsyncIterator[tuple[int, PacketRecord]]:
    """Decoded events of a live capture as they come, numbered from 1; runs until cancelled
    or the capture is closed."""
    if decoder is None:
        decoder = PacketDecoder()
    number = 1
    while True:
        frames = await live.read()
        for item in decode_frames(frames, linktype=live.linktype, decoder=decoder, first=number):
            yield item
        number += len(frames)
