"""Our own RSA key pair: it signs the LtiDeepLinkingResponse (and would sign service-token requests), and its public
half is served at /.well-known/jwks.json for platforms to verify with.

Kept in Postgres (table lti_keys, written by proctor.store.lti), not in a file under PROCTOR_DATA_DIR: every web
process on every machine must sign with the same key and serve the same JWKS, and they already share the database
(a file would need copying to each machine, and a lost data dir would silently change the key the LMS trusts).
Generated once, on first use, off the event loop. The private key is never served: only `public_jwk` leaves.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto.jwk import JWK

from lti.threads import off_loop
from proctor.store import lti as store

KEY_BITS = 2048


def generate() -> store.ToolKey:
    """A new RSA key (CPU: tens to hundreds of ms; call off the event loop). kid: its RFC 7638 thumbprint."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    jwk = JWK.from_pem(pem.encode())
    public: dict[str, Any] = json.loads(jwk.export_public())
    kid = jwk.thumbprint()
    public.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return store.ToolKey(kid=kid, private_pem=pem, public_jwk=public)


def public_pem(key: store.ToolKey) -> str:
    """The public half as PEM (pylti1p3's Registration wants it to put the kid in the JWT header)."""
    private = serialization.load_pem_private_key(key.private_pem.encode(), password=None)
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


async def signing_key(pool: asyncpg.Pool) -> store.ToolKey:
    """The key that signs, made (and stored) the first time it is needed."""
    async with pool.acquire() as conn:
        key = await store.signing_key(conn)
    if key is not None:
        return key
    fresh = await off_loop(generate)
    async with pool.acquire() as conn:
        return await store.add_first_key(conn, fresh)


async def jwks(pool: asyncpg.Pool) -> dict[str, Any]:
    """{"keys": [...]}: the public JWK of every key we hold, at least the one that signs."""
    await signing_key(pool)
    async with pool.acquire() as conn:
        return {"keys": await store.public_jwks(conn)}
