"""Signed webhooks: exam platforms hear about sessions, flags and decisions without polling.

    endpoints  what an admin registers (URL, event types, secret), checked before it is stored
    ssrf       which addresses a delivery may reach (never loopback, private, link-local, metadata by default)
    signing    the signature scheme: Webhook-Signature: v1=<hex HMAC-SHA256 over "<timestamp>.<body>">
    delivery   one HTTP attempt: resolve, check every address, connect to the checked one, no redirects
    worker     the dispatcher (due deliveries -> the Redis job stream) and the job handler, run by `proctor worker`
    routes     the admins' REST API (/api/webhooks...)

Events are queued by proctor/store/webhooks.py in the transaction of the change they report (an outbox).
"""
