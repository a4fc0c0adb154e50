"""Media nodes as placement sees them, and the choice of node for a new stream.

A node admits by measured load (`admission == "load"`, media_server/admission.py) or by count (MEDIA_NODE_CAPACITY
only). With load admission its `headroom` is how many more streams it can analyse (0 when its CPU is at target, or
its event-loop lag or analysis rate is unhealthy; `reason` says which); the capacity stays a ceiling either way.
Placement goes to the node with the most headroom, so a fast node takes more than a slow one."""

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
    # Admission (media_server/admission.py). A node registered before issue 14 has none of these: count.
    admission: str = "count"
    headroom: int = 0  # load admission: streams more it takes, net of its streams and reservations
    cpus: float = 0.0  # CPUs it may use
    cpu_util: float = 0.0  # share of them used over its measuring window
    stream_cost: float = 0.0  # estimated cores per stream
    lag_p99_ms: float = 0.0
    analysis_rate: float | None = None  # frames analysed / due over the window; None: too few to judge
    reason: str = ""  # why it takes no new stream, when it does not

    @property
    def load(self) -> float:
        return self.streams / self.capacity if self.capacity else 1.0

    @property
    def by_load(self) -> bool:
        return self.admission == "load"

    @property
    def spare(self) -> int:
        """Streams more it takes: its measured headroom, never beyond the capacity."""
        room = max(0, self.capacity - self.streams)
        return min(room, max(0, self.headroom)) if self.by_load else room

    @property
    def has_room(self) -> bool:
        return self.spare > 0

    @property
    def placeable(self) -> bool:
        """Whether a new offer may go to this node: room, and not draining."""
        return self.has_room and not self.draining

    def public(self) -> dict[str, Any]:
        return asdict(self)


def choose(nodes: list[NodeInfo], prefer: str | None = None) -> NodeInfo | None:
    """The node with room that is not draining and has the most measured headroom (the least loaded when every
    node admits by count); `prefer` (the node a reconnecting session was on) wins while it has room and is not
    draining."""
    with_room = [n for n in nodes if n.placeable]
    if prefer is not None:
        for node in with_room:
            if node.node_id == prefer:
                return node
    if not with_room:
        return None
    if not any(n.by_load for n in with_room):
        return min(with_room, key=lambda n: (n.load, n.streams, n.cpu, n.node_id))
    return min(with_room, key=lambda n: (-n.spare, n.cpu_util, n.load, n.node_id))


def refusals(nodes: list[NodeInfo]) -> str:
    """Why none of `nodes` takes a stream, one clause per node (for logs and the operator, not the candidate)."""
    if not nodes:
        return "no media node is running"
    parts = []
    for n in nodes:
        if n.draining:
            why = "draining"
        elif n.streams >= n.capacity:
            why = f"at its capacity ({n.streams}/{n.capacity})"
        else:
            why = n.reason or f"no headroom ({n.streams} streams)"
        parts.append(f"{n.node_id}: {why}")
    return "; ".join(parts)
