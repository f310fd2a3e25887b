"""The Redis store: the truth about every tracked export.

Keys (prefix `ep` by default):

    {p}:x:{tid}        hash    one record per tracked export; small scalar fields only while
                               active, so Redis keeps it as a compact listpack
    {p}:idem           hash    digest(account, export id) -> tid while the export is active
    {p}:sched          zset    tid -> when the sweep must next look at it: the next poll time of
                               a parked poll, the rescue time of one handed to Celery or in
                               flight; a due entry past its deadline is expired instead
    {p}:outbox         zset    tid -> when its callback is (re)dispatched
    {p}:batch:{acct}   zset    tid -> next poll time, only for providers with bulk status calls
    {p}:sig:{digest}   string  a callback signature, shared by every export that names it
    {p}:metrics        hash    counters and gauges for Prometheus, kept by the same scripts

Every change of state is one Lua script, so two workers, two beats or a replayed message can
never both move an export or both dispatch its callback. Broker messages carry only a tracking id
and a poll token; a message whose token is not the record's current one does nothing. Scripts
touch keys they derive from a record (the idempotency and batch keys), so the store assumes one
Redis server (not Redis Cluster), as Celery's Redis transport does.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

Arg = str | int | float

ACTIVE = ("pending", "running")
_SIG_SLACK = 3600.0
DIGEST_CHARS = 20

_TRACK = """
local existing = redis.call('HGET', KEYS[1], ARGV[2])
if existing then
  local state = redis.call('HGET', ARGV[5] .. existing, 'state')
  if state == 'pending' or state == 'running' then return {0, existing} end
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 6))
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
local rec = redis.call('HMGET', KEYS[2], 'provider', 'batch')
if rec[2] == '1' then redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1]) end
redis.call('HINCRBY', KEYS[4], 'active|' .. rec[1] .. '|pending', 1)
return {1, ARGV[1]}
"""

_CLAIM = """
local v = redis.call('HMGET', KEYS[1], 'token', 'state', 'lease_until', 'next_poll_at')
if not v[1] then return {'missing'} end
if v[1] ~= ARGV[2] then return {'stale'} end
if v[2] ~= 'pending' and v[2] ~= 'running' then return {'done'} end
if v[3] and tonumber(v[3]) > tonumber(ARGV[3]) then return {'busy'} end
if v[4] and tonumber(v[4]) > tonumber(ARGV[3]) + tonumber(ARGV[6]) then return {'early'} end
redis.call('HSET', KEYS[1], 'lease_until', ARGV[4], 'claim', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, 1, 'ok')
return out
"""

# Shared tail of every move to a terminal state; P is the key prefix ("ep:").
_FINISH_TAIL = """
  local ids = redis.call('HMGET', KEYS[1], 'account', 'idem', 'batch')
  redis.call('ZREM', KEYS[2], ARGV[1])
  if ids[3] == '1' then redis.call('ZREM', P .. 'batch:' .. ids[1], ARGV[1]) end
  if ids[2] and redis.call('HGET', P .. 'idem', ids[2]) == ARGV[1] then
    redis.call('HDEL', P .. 'idem', ids[2])
  end
"""

_MOVE = """
local function move(metrics, provider, old, new)
  if old == new then return end
  if old == 'pending' or old == 'running' then
    redis.call('HINCRBY', metrics, 'active|' .. provider .. '|' .. old, -1)
  end
  if new == 'pending' or new == 'running' then
    redis.call('HINCRBY', metrics, 'active|' .. provider .. '|' .. new, 1)
  else
    redis.call('HINCRBY', metrics, 'finished|' .. provider .. '|' .. new, 1)
  end
end
"""

_COMMIT = f"""
{_MOVE}
local before = redis.call('HMGET', KEYS[1], 'claim', 'state', 'provider')
if before[1] ~= ARGV[2] then return 0 end
local P = ARGV[7]
redis.call('HDEL', KEYS[1], 'claim', 'lease_until')
redis.call('HSET', KEYS[1], 'token', ARGV[6], unpack(ARGV, 10))
redis.call('HINCRBY', P .. 'metrics', 'polls|' .. before[3] .. '|' .. ARGV[9], 1)
move(P .. 'metrics', before[3], before[2], redis.call('HGET', KEYS[1], 'state'))
if ARGV[3] == '1' then
  {_FINISH_TAIL}
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  local acct = redis.call('HMGET', KEYS[1], 'account', 'batch')
  if acct[2] == '1' then redis.call('ZADD', P .. 'batch:' .. acct[1], ARGV[8], ARGV[1]) end
end
return 1
"""

_FINISH = f"""
{_MOVE}
local v = redis.call('HMGET', KEYS[1], 'state', 'lease_until', 'provider')
if v[1] ~= 'pending' and v[1] ~= 'running' then return 0 end
if ARGV[5] == '1' and v[2] and tonumber(v[2]) > tonumber(ARGV[3]) then return 0 end
local P = ARGV[7]
redis.call('HDEL', KEYS[1], 'claim', 'lease_until')
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'token', '', unpack(ARGV, 8))
move(P .. 'metrics', v[3], v[1], ARGV[2])
{_FINISH_TAIL}
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
else
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
return 1
"""

_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local send, expired = {}, {}
for _, tid in ipairs(due) do
  local v = redis.call('HMGET', ARGV[4] .. tid, 'token', 'deadline')
  if not v[1] or v[1] == '' then
    redis.call('ZREM', KEYS[1], tid)
  else
    redis.call('ZADD', KEYS[1], ARGV[2], tid)
    if tonumber(v[2]) + tonumber(ARGV[5]) < tonumber(ARGV[1]) then
      expired[#expired + 1] = tid
    else
      send[#send + 1] = tid
      send[#send + 1] = v[1]
    end
  end
end
return {send, expired}
"""

_CLAIM_BATCH = """
local limit = tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[6], 'LIMIT', 0, 2 * limit)
local out = {}
for _, tid in ipairs(due) do
  if #out >= 2 * limit then break end
  local key = ARGV[5] .. tid
  local v = redis.call('HMGET', key, 'state', 'lease_until')
  if (v[1] == 'pending' or v[1] == 'running')
      and not (v[2] and tonumber(v[2]) > tonumber(ARGV[1])) then
    redis.call('HSET', key, 'lease_until', ARGV[2], 'claim', ARGV[3])
    redis.call('ZADD', KEYS[2], ARGV[2], tid)
    out[#out + 1] = tid
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
return out
"""

_CLAIM_OUTBOX = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) > tonumber(ARGV[2]) then return false end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return redis.call('HGETALL', KEYS[2])
"""


@dataclass(frozen=True)
class Claim:
    """A poll's exclusive right to update one record until `commit` or its lease runs out."""

    tracking_id: str
    claim_id: str
    fields: dict[str, str]


def idem_digest(account: str, export_id: str) -> str:
    """Short enough to keep the record a listpack, long enough (80 bits) never to collide."""
    text = f"{account}\n{export_id}".encode()
    return hashlib.sha1(text, usedforsecurity=False).hexdigest()[:DIGEST_CHARS]


def _pairs(fields: Mapping[str, Any]) -> list[Arg]:
    out: list[Arg] = []
    for key, value in fields.items():
        out += [key, _encode(value)]
    return out


def _encode(value: Any) -> str:
    """Compact text for a hash field: millisecond timestamps, JSON without spaces."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _hash(flat: list[Any]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Store:
    """Every read and atomic write of tracked exports; the only module that knows the key layout."""

    def __init__(self, client: redis.Redis, prefix: str = "ep") -> None:
        self.r = client
        self.prefix = prefix
        self.sched = f"{prefix}:sched"
        self.outbox = f"{prefix}:outbox"
        self.metrics = f"{prefix}:metrics"
        self.idem = f"{prefix}:idem"
        self._sig_expiry: dict[str, float] = {}
        self._track = client.register_script(_TRACK)
        self._claim = client.register_script(_CLAIM)
        self._commit = client.register_script(_COMMIT)
        self._finish = client.register_script(_FINISH)
        self._due = client.register_script(_DUE)
        self._claim_batch = client.register_script(_CLAIM_BATCH)
        self._claim_outbox = client.register_script(_CLAIM_OUTBOX)

    def key(self, tid: str) -> str:
        return f"{self.prefix}:x:{tid}"

    def batch_key(self, account: str) -> str:
        return f"{self.prefix}:batch:{account}"

    # -- callback signatures -----------------------------------------------------------------

    def put_signature(self, signature: Mapping[str, Any], ttl: float) -> str:
        """Store a signature once for all the exports that name it; returns its reference.

        The key must outlive the last export naming it, so its expiry is pushed out whenever a
        new export needs more than an hour beyond what this process last set.
        """
        text = json.dumps(signature, separators=(",", ":"), sort_keys=True)
        ref = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:DIGEST_CHARS]
        needed = time.time() + ttl
        if self._sig_expiry.get(ref, 0.0) < needed:
            self.r.set(f"{self.prefix}:sig:{ref}", text, ex=max(1, int(ttl + _SIG_SLACK)))
            self._sig_expiry[ref] = needed + _SIG_SLACK
        return ref

    def get_signature(self, ref: str) -> dict[str, Any] | None:
        text = self.r.get(f"{self.prefix}:sig:{ref}")
        return cast(dict[str, Any], json.loads(cast(bytes, text))) if text else None

    # -- state changes -----------------------------------------------------------------------

    def track(self, tid: str, fields: Mapping[str, Any], *, rescue_at: float) -> tuple[bool, str]:
        """Create a record unless this (account, export id) is already active: (created, tid)."""
        account, export_id = str(fields["account"]), str(fields["export_id"])
        digest = idem_digest(account, export_id)
        args: list[Arg] = [tid, digest, rescue_at, _encode(fields["next_poll_at"])]
        args += [f"{self.prefix}:x:", *_pairs({**fields, "idem": digest})]
        keys = [self.idem, self.key(tid), self.sched, self.metrics, self.batch_key(account)]
        created, existing = self._track(keys=keys, args=args)
        return bool(created), _text(existing)

    def claim(
        self, tid: str, token: str, claim_id: str, *, now: float, lease_until: float
    ) -> Claim | str:
        """Take the poll lease, or say why not: missing, stale, done, busy or early."""
        args: list[Arg] = [tid, token, now, lease_until, claim_id, 2.0]
        reply = self._claim(keys=[self.key(tid), self.sched], args=args)
        status = _text(reply[0])
        if status != "ok":
            return status
        return Claim(tid, claim_id, _hash([_text(x) for x in reply[1:]]))

    def commit(
        self,
        claim: Claim,
        fields: Mapping[str, Any],
        *,
        new_token: str,
        now: float,
        terminal: bool,
        sched_score: float | None,
        outcome: str = "unknown",
    ) -> bool:
        """Write a poll's result if its claim still holds; terminal writes also fill the outbox."""
        tid = claim.tracking_id
        args: list[Arg] = [tid, claim.claim_id, int(terminal), sched_score or 0, now]
        args += ["" if terminal else new_token, f"{self.prefix}:"]
        args += [fields.get("next_poll_at") or 0, outcome]
        keys = [self.key(tid), self.sched, self.outbox]
        return bool(self._commit(keys=keys, args=args + _pairs(fields)))

    def finish(
        self,
        tid: str,
        state: str,
        fields: Mapping[str, Any],
        *,
        now: float,
        notify: bool,
        respect_lease: bool,
        ttl: float,
    ) -> bool:
        """Force an active export into a terminal state (cancel, deadline expiry)."""
        args: list[Arg] = [tid, state, now, int(notify), int(respect_lease), int(ttl)]
        args += [f"{self.prefix}:", *_pairs(fields)]
        keys = [self.key(tid), self.sched, self.outbox]
        return bool(self._finish(keys=keys, args=args))

    def due(
        self, now: float, rescue_at: float, limit: int, grace: float
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """Polls due (or lost) now, and exports past their deadline; both re-armed for rescue,
        so one sweep handles each once."""
        args: list[Arg] = [now, rescue_at, limit, f"{self.prefix}:x:", grace]
        send, expired = self._due(keys=[self.sched], args=args)
        flat = [_text(x) for x in send]
        return list(zip(flat[::2], flat[1::2], strict=True)), [_text(x) for x in expired]

    def claim_batch(
        self,
        account: str,
        claim_id: str,
        *,
        now: float,
        lease_until: float,
        due_by: float,
        limit: int,
    ) -> list[Claim]:
        """Take up to `limit` more polls of one account due by `due_by`, for one bulk request."""
        if limit <= 0:
            return []
        args: list[Arg] = [now, lease_until, claim_id, limit, f"{self.prefix}:x:", due_by]
        flat = self._claim_batch(keys=[self.batch_key(account), self.sched], args=args)
        return [
            Claim(_text(tid), claim_id, _hash([_text(x) for x in fields]))
            for tid, fields in zip(flat[::2], flat[1::2], strict=True)
        ]

    # -- the outbox --------------------------------------------------------------------------

    def outbox_due(self, now: float, limit: int) -> list[str]:
        ids = self.r.zrangebyscore(self.outbox, "-inf", now, start=0, num=limit)
        return [_text(x) for x in cast(list[Any], ids)]

    def claim_outbox(self, tid: str, *, now: float, retry_at: float) -> dict[str, str] | None:
        """Take one callback to dispatch; None if another dispatcher has it or it is gone."""
        reply = self._claim_outbox(keys=[self.outbox, self.key(tid)], args=[tid, now, retry_at])
        if not reply:
            return None
        return _hash([_text(x) for x in reply])

    def ack_outbox(
        self, tid: str, *, now: float, ttl: float, provider: str = "", lag: float | None = None
    ) -> None:
        """Done with a callback; its lag (terminal state -> dispatch) feeds the metrics."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.zrem(self.outbox, tid)
            if lag is not None:
                pipe.hincrby(self.metrics, f"callbacks|{provider}", 1)
                pipe.hincrbyfloat(self.metrics, f"callback_lag_sum|{provider}", max(lag, 0.0))
            pipe.hset(self.key(tid), "callback_at", _encode(now))
            pipe.expire(self.key(tid), int(ttl))
            pipe.execute()

    def drop_outbox(self, tid: str) -> None:
        self.r.zrem(self.outbox, tid)

    # -- reads -------------------------------------------------------------------------------

    def get(self, tid: str) -> dict[str, str] | None:
        raw = cast(dict[Any, Any], self.r.hgetall(self.key(tid)))
        return {_text(k): _text(v) for k, v in raw.items()} or None

    def iter_ids(self, count: int = 1000) -> Iterator[str]:
        """Every tracking id, by SCAN: for the CLI and operators, never on the poll path."""
        cut = len(self.prefix) + 3
        for key in self.r.scan_iter(match=f"{self.prefix}:x:*", count=count):
            yield _text(key)[cut:]

    def metric_fields(self) -> dict[str, float]:
        raw = cast(dict[Any, Any], self.r.hgetall(self.metrics))
        return {_text(k): float(_text(v)) for k, v in raw.items()}

    def counts(self) -> dict[str, int]:
        return {
            "scheduled": cast(int, self.r.zcard(self.sched)),
            "outbox": cast(int, self.r.zcard(self.outbox)),
        }
