"""The domain: what the proctoring server is about, in plain Python that imports nothing else of ours.

Event kinds, session statuses and their transitions, the hysteresis rules, score weights, node placement,
typed live-monitor messages and VP8 bitstream facts. Every other package may import this one; it imports none
of them (enforced by the import-linter contracts in pyproject.toml).
"""
