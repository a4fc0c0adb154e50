"""The one owner of shared state: every write to a `sessions` row, every event inserted or changed, the media
node registry, and every live-monitor message published. Any other module that changes these calls here.

- `sessions`: create, consent, live/reconnect bookkeeping, media time, segment indexes, status transitions
  (checked against core.sessions.TRANSITIONS), the suspicion score, end and delete;
- `events`: insert and update from the rules, system alerts, evidence snapshots, review and acknowledgement,
  and the one JSON shape events are served in;
- `nodes`: media nodes' heartbeats in Redis and the live list placement chooses from;
- `live`: publishing core.live messages on the Redis channel the web processes relay to proctors.

Reads are not fenced in: a page or a worker may SELECT what it needs.
"""
