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
    # Draining (media_server/drain.py): the node keeps the streams it carries but takes no new one, not even a
    # reload of a session it carries; it stays listed so calls about those streams still find it.
    draining: bool = False

    @property
    def load(self) -> float:
        return self.streams / self.capacity if self.capacity else 1.0

    @property
    def has_room(self) -> bool:
        return self.streams < self.capacity

    @property
    def placeable(self) -> bool:
        """Whether a new offer may go to this node: room, and not draining."""
        return self.has_room and not self.draining

    def public(self) -> dict[str, Any]:
        return asdict(self)


def choose(nodes: list[NodeInfo], prefer: str | None = None) -> NodeInfo | None:
    """The least-loaded node with room that is not draining; `prefer` (the node a reconnecting session was on)
    wins while it has room and is not draining."""
    with_room = [n for n in nodes if n.placeable]
    if prefer is not None:
        for node in with_room:
            if node.node_id == prefer:
                return node
    if not with_room:
        return None
    return min(with_room, key=lambda n: (n.load, n.streams, n.cpu, n.node_id))
