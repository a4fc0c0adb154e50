"""The login throttle: how many failed logins are allowed, per what, and who is exempt.

Counters live in Redis, one per rule, each for a fixed window (LOGIN_WINDOW_S from its first failure):

| rule | key | limit (setting) |
| --- | --- | --- |
| one name from one address | name + client address | LOGIN_MAX_FAILURES (10) |
| one address, any names (password spraying) | client address | LOGIN_MAX_FAILURES_PER_ADDRESS (20) |
| one name, all addresses (a distributed attack on one account) | name | LOGIN_MAX_FAILURES_PER_ACCOUNT (20) |
| everything (a distributed attack on many accounts) | global | LOGIN_MAX_FAILURES_GLOBAL (300) |
| one trusted device | device id | DEVICE_MAX_FAILURES (10) |

An attempt takes a slot in every counter that applies *before* its password is checked, in one Lua script
(check all, then increment all, atomically): N parallel attempts against a limit of L let exactly L through.
A successful login gives its slots back, so only failures (and attempts still being checked) count.
A refused attempt (429) takes no slot and does no Argon2 work.

Trusted devices: a browser that logged in to an account before holds a device cookie for it (web/cookies.py,
HMAC-signed, bound to the user id, renewed at each login). A login for *that* account from *that* browser is
counted only against the device's own limit, not against the name, address, account or global counters, so
nobody can lock the owner out by flooding the account (or the whole server) with wrong passwords from elsewhere.
This exempts nothing an attacker can use: the cookie is only issued after the right password was given for that
very account, it opens nothing by itself (the password is still checked), and a device that fails
DEVICE_MAX_FAILURES times in a window loses the exemption and falls back to the ordinary counters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis.asyncio as aioredis

from proctor.settings import Settings

KEY = "proctor:web:login:{rule}:{digest}"
GLOBAL_KEY = "proctor:web:login:global"
# Failed logins a trusted device may make per window before its cookie stops exempting it.
DEVICE_MAX_FAILURES = 10

# KEYS: the counters; ARGV: limit and window (ms) of each. Returns {0, 0} when a slot was taken in every counter,
# else {i, ms} for the first counter that is full and how long until it empties.
_TAKE = """
for i, key in ipairs(KEYS) do
  local n = tonumber(redis.call('GET', key) or '0')
  if n >= tonumber(ARGV[2 * i - 1]) then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then
      redis.call('PEXPIRE', key, ARGV[2 * i])
      ttl = tonumber(ARGV[2 * i])
    end
    return {i, ttl}
  end
end
for i, key in ipairs(KEYS) do
  redis.call('INCR', key)
  if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, ARGV[2 * i]) end
end
return {0, 0}
"""
# Give the slots of a successful login back (a counter that expired meanwhile is left alone).
_GIVE_BACK = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 and redis.call('DECR', key) <= 0 then redis.call('DEL', key) end
end
return 0
"""


@dataclass(frozen=True)
class Limit:
    rule: str
    key: str
    limit: int
    window_s: int


@dataclass(frozen=True)
class Slot:
    """The counters one login attempt holds while its password is checked."""
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Refused:
    rule: str
    retry_after_s: int


def _key(rule: str, *parts: str) -> str:
    return KEY.format(rule=rule, digest=hashlib.sha256("|".join(parts).encode()).hexdigest()[:40])


def normal_name(name: str) -> str:
    return name.strip().lower()


def limits(settings: Settings, name: str, client: str) -> list[Limit]:
    """The counters an attempt without a trusted device takes a slot in, the widest first."""
    window, who = settings.login_window_s, normal_name(name)
    return [
        Limit("global", GLOBAL_KEY, settings.login_max_failures_global, window),
        Limit("address", _key("address", client), settings.login_max_failures_per_address, window),
        Limit("account", _key("account", who), settings.login_max_failures_per_account, window),
        Limit("name-address", _key("name-address", who, client), settings.login_max_failures, window),
    ]


def device_limits(settings: Settings, device_id: str) -> list[Limit]:
    return [Limit("device", _key("device", device_id), DEVICE_MAX_FAILURES, settings.login_window_s)]


async def take(redis: aioredis.Redis, wanted: list[Limit]) -> Slot | Refused:
    """A slot in every counter, or which one is full and for how long (nothing taken then)."""
    args: list[int] = []
    for limit in wanted:
        args += [limit.limit, limit.window_s * 1000]
    full, ttl_ms = await redis.register_script(_TAKE)(keys=[limit.key for limit in wanted], args=args)
    if int(full) == 0:
        return Slot(tuple(limit.key for limit in wanted))
    return Refused(wanted[int(full) - 1].rule, max(1, -(-int(ttl_ms) // 1000)))


async def give_back(redis: aioredis.Redis, slot: Slot) -> None:
    """The login succeeded: it does not count as a failure."""
    await redis.register_script(_GIVE_BACK)(keys=list(slot.keys))
