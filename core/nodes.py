"""Media nodes as placement sees them, and the choice of node for a new stream."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    url: str  # internal API base URL, e.g. http://10.0.0.5:8090
    streams: int
    capacity: int
    cpu: float = 0.0
    heartbeat_at: float = 0.0

    @property
    def load(self) -> float:
        return self.streams / self.capacity if self.capacity else 1.0

    @property
    def has_room(self) -> bool:
        return self.streams < self.capacity

    def public(self) -> dict[str, Any]:
        return asdict(self)


def choose(nodes: list[NodeInfo], prefer: str | None = None) -> NodeInfo | None:
    """The least-loaded node with room; `prefer` (the node a reconnecting session was on) wins while it has room."""
    with_room = [n for n in nodes if n.has_room]
    if prefer is not None:
        for node in with_room:
            if node.node_id == prefer:
                return node
    if not with_room:
        return None
    return min(with_room, key=lambda n: (n.load, n.streams, n.cpu, n.node_id))
