"""Everything that crosses a lab's network, for tests that prove what an eavesdropper on the network
between a fleet's hosts sees: a raw packet socket on every port of the lab's bridge (in the lab's
switch namespace), and the payload of each TCP connection reassembled in order."""

from __future__ import annotations

import socket
import struct
import threading
from collections import defaultdict
from types import TracebackType

from synfleet.lab import Lab
from synfleet.lab.netns import entered

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
TCP = 6

Flow = tuple[str, int, str, int]


class BridgeCapture:
    """``with BridgeCapture(lab) as capture:`` records every frame that crosses the lab's switch
    until the block ends (the bridge forwards between its ports without passing frames to its own
    interface, so all of the switch's interfaces are read); :meth:`streams` then gives each TCP
    flow's bytes."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            with (
                entered(self.lab.switch_netns),
                socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sniffer,
            ):
                sniffer.settimeout(0.2)
                self._ready.set()
                while not self._stop.is_set():
                    try:
                        self.frames.append(sniffer.recv(65535))
                    except TimeoutError:
                        continue
        except BaseException as error:  # reported by __exit__
            self._error = error
            self._ready.set()

    def __enter__(self) -> BridgeCapture:
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise self._error
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._error and kind is None:
            raise self._error

    def streams(self) -> dict[Flow, bytes]:
        """Each TCP flow (source address, port, destination address, port) -> its payload in
        sequence order, each segment once (the bridge sees every frame once per port it crosses)."""
        segments: dict[Flow, dict[int, bytes]] = defaultdict(dict)
        for frame in self.frames:
            if len(frame) < 34 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
                continue
            ip = frame[14:]
            header = (ip[0] & 0x0F) * 4
            total = struct.unpack("!H", ip[2:4])[0]
            if ip[9] != TCP:
                continue
            source, destination = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
            tcp = ip[header:total]
            sport, dport, sequence = struct.unpack("!HHI", tcp[:8])
            payload = tcp[(tcp[12] >> 4) * 4 :]
            if payload:
                segments[(source, sport, destination, dport)][sequence] = payload
        return {flow: b"".join(parts[s] for s in sorted(parts)) for flow, parts in segments.items()}

    def holding(self, secrets: dict[str, bytes]) -> dict[str, list[Flow]]:
        """Which of ``secrets`` (by name) appear in which flows."""
        found: dict[str, list[Flow]] = {}
        for flow, data in self.streams().items():
            for name, secret in secrets.items():
                if secret and secret in data:
                    found.setdefault(name, []).append(flow)
        return found
