"""What a candidate's SDP offer must hold before a media node acts on it, and which ICE candidates it may name.

Signaling checks an offer with `check_offer` before relaying it, and the media node checks it again (defence in
depth) before aiortc sees it:
- every media section has DTLS (`a=fingerprint`) and ICE credentials (`a=ice-ufrag`, `a=ice-pwd`), at
  session level or in the section: without them aiortc fails later, inside a task nobody awaits;
- it names at most MAX_CANDIDATES distinct candidate transport addresses: the node sends STUN checks to every one.

A media node only sends STUN to the candidate addresses an offer names, so an offer naming addresses on the
node's own side (loopback, the private network it sits in) would make the node probe them. `screen_candidates`
drops candidates whose address is not globally routable unless private addresses are allowed
(ICE_ALLOW_PRIVATE_CANDIDATES); multicast, broadcast and unspecified addresses are never a peer and
always go. A browser whose own candidates were all dropped still connects: its connectivity checks reach the
node, which learns the address they come from (a peer-reflexive candidate) and answers there. So when any
candidate is dropped, `a=end-of-candidates` goes too, which keeps the node listening for those checks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

# Distinct transport addresses (transport, address, port) one offer may name. A browser lists one per
# interface address, transport and gathering transport (host, server-reflexive, relay): ~10-25 on a laptop.
MAX_CANDIDATES = 32

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class OfferError(ValueError):
    """The offer cannot be used; the message says why (shown to the caller with a 400)."""


@dataclass(frozen=True)
class Candidate:
    line_index: int
    transport: str
    host: str
    port: int

    @property
    def address(self) -> tuple[str, str, int]:
        return (self.transport, self.host.lower(), self.port)

    @property
    def is_mdns(self) -> bool:
        return self.host.lower().endswith(".local")


def _sections(lines: list[str]) -> list[list[str]]:
    """The session part, then one list of lines per `m=` section."""
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def _has(section: list[str], prefix: str) -> bool:
    return any(line.startswith(prefix) and line[len(prefix):].strip() for line in section)


def candidates(sdp: str) -> list[Candidate]:
    """Every `a=candidate:` line; OfferError for one that cannot be read."""
    out = []
    for index, line in enumerate(sdp.splitlines()):
        if not line.startswith("a=candidate:"):
            continue
        # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
        parts = line[len("a=candidate:"):].split()
        try:
            if len(parts) < 8 or parts[6] != "typ":
                raise ValueError
            port, component, priority = int(parts[5]), int(parts[1]), int(parts[3])
            if not (0 <= port <= 65535 and component >= 0 and priority >= 0):
                raise ValueError
        except ValueError:
            raise OfferError(f"malformed ICE candidate: {line[:120]!r}") from None
        out.append(Candidate(index, parts[2].lower(), parts[4], port))
    return out


def check_offer(sdp: str) -> None:
    """OfferError unless every media section has a DTLS fingerprint and ICE credentials and the offer names
    at most MAX_CANDIDATES distinct candidate addresses."""
    lines = sdp.splitlines()
    session, *media = _sections(lines)
    if not media:
        raise OfferError("the offer has no media section")
    for attribute, what in (("a=fingerprint:", "a DTLS fingerprint (a=fingerprint)"),
                            ("a=ice-ufrag:", "an ICE username fragment (a=ice-ufrag)"),
                            ("a=ice-pwd:", "an ICE password (a=ice-pwd)")):
        if _has(session, attribute):
            continue
        for section in media:
            if not _has(section, attribute):
                raise OfferError(f"every media section needs {what}; {section[0].split()[0]!r} has none")
    distinct = {c.address for c in candidates(sdp)}
    if len(distinct) > MAX_CANDIDATES:
        raise OfferError(f"the offer names {len(distinct)} ICE candidate addresses; at most {MAX_CANDIDATES}")


def _ip(host: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        # IPv4 inside IPv6 (mapped, 6to4, NAT64) reaches that IPv4 address: judge it.
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def refusal(host: str, *, allow_private: bool) -> str | None:
    """Why a node must not send to this candidate address (None: it may). `host` is an IP address; a name that
    is not one (a DNS name, or an mDNS name nobody resolved) is refused."""
    address = _ip(host)
    if address is None:
        return "not an IP address"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    if allow_private:
        return None
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if not address.is_global:
        return "private"
    return None


def mdns_names(sdp: str) -> list[str]:
    """The distinct mDNS (`.local`) candidate names of an offer."""
    return sorted({c.host.lower() for c in candidates(sdp) if c.is_mdns})


def screen_candidates(sdp: str, *, allow_private: bool,
                      resolved: Mapping[str, str | None] | None = None) -> tuple[str, list[str]]:
    """The offer without the candidates a node must not send to, and a description of each one dropped.

    mDNS candidates: with private addresses allowed they stay as they are (aioice resolves them). Otherwise
    `resolved` maps each name (lower case) to the address it resolved to (None: it did not); the candidate is
    kept with that address in place of the name when the address is allowed, so the node sends where it was
    checked (a second resolution could answer differently), and dropped otherwise."""
    lines = sdp.splitlines()
    dropped: list[str] = []
    for candidate in candidates(sdp):
        host = candidate.host
        if candidate.is_mdns:
            if allow_private:
                continue
            address = (resolved or {}).get(host.lower())
            if address is None:
                dropped.append(f"{host} (mDNS name not resolved)")
                lines[candidate.line_index] = ""
                continue
            reason = refusal(address, allow_private=False)
            if reason is None:
                parts = lines[candidate.line_index].split()
                parts[4] = address
                lines[candidate.line_index] = " ".join(parts)
                continue
            dropped.append(f"{host} -> {address} ({reason})")
            lines[candidate.line_index] = ""
            continue
        reason = refusal(host, allow_private=allow_private)
        if reason is not None:
            dropped.append(f"{host}:{candidate.port} ({reason})")
            lines[candidate.line_index] = ""
    if not dropped:
        return sdp, []
    kept = [line for line in lines if line and line != "a=end-of-candidates"]
    return "\r\n".join(kept) + "\r\n", dropped
