"""The Redis store: every read and atomic write of tracked exports (key names: keys.py).

Every change of state is one Lua script, so two workers, two beats or a replayed message can
never both move an export or both dispatch its callback. Broker messages carry only tracking ids
and poll tokens; a message whose token is not the record's current one does nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from export_poller.store import codec
from export_poller.store.codec import Arg
from export_poller.store.keys import Keys

_SIG_SLACK = 3600.0
# Seconds a poll may run before its planned time: covers clock skew between workers and the
# engine's train spread (follow-ups up to 1 s apart leave in one message at the earliest time).
# Only our own backoff is this loose: a record's `not_before` (a provider's Retry-After or
# X-RateLimit-Reset, an account hold) is a hard floor for claims and for train take-along.
_EARLY = 2.0


# The broker backlog ledger: a poll message handed to the broker is counted (by its first
# export) in {p}:flight ("acct|tid" -> due time), {p}:flight:{acct} (tid -> due time) and
# {p}:flight_n (acct -> count) until a worker starts it, or `grace` after its due time (lost
# with a worker: the sweep rescues its exports anyway).
_FORGET_MESSAGE = """
local function forget_message(P, acct, tid)
  if redis.call('ZREM', P .. 'flight', acct .. '|' .. tid) == 1 then
    redis.call('ZREM', P .. 'flight:' .. acct, tid)
    if redis.call('HINCRBY', P .. 'flight_n', acct, -1) <= 0 then
      redis.call('HDEL', P .. 'flight_n', acct)
    end
  end
end
local function forget_lost(P, before)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. 'flight', '-inf', before, 'LIMIT', 0, 500)) do
    local acct, tid = string.match(m, '^(.*)|([^|]*)$')
    forget_message(P, acct, tid)
  end
end
local function count_message(P, acct, tid, due)
  if redis.call('ZADD', P .. 'flight', due, acct .. '|' .. tid) == 1 then
    redis.call('HINCRBY', P .. 'flight_n', acct, 1)
  end
  redis.call('ZADD', P .. 'flight:' .. acct, due, tid)
end
"""

# A claimed export's entry in its account's due index moves to the end of its lease, so other
# runs looking for due exports to take along skip it; commit and release put it back.
# ARGV: now, lease_until, claim id, how early a poll may run, "{p}:", then tid/token pairs.
_CLAIM = (
    _FORGET_MESSAGE
    + """
local now, out = tonumber(ARGV[1]), {}
for i = 6, #ARGV, 2 do
  local tid, key = ARGV[i], ARGV[5] .. 'x:' .. ARGV[i]
  local v = redis.call(
    'HMGET', key, 'token', 'state', 'lease_until', 'next_poll_at', 'account', 'not_before')
  local why = nil
  if not v[1] then why = 'missing'
  elseif v[1] ~= ARGV[i + 1] then why = 'stale'
  elseif v[2] ~= 'pending' and v[2] ~= 'running' then why = 'done'
  elseif v[3] and tonumber(v[3]) > now then why = 'busy'
  elseif v[6] and tonumber(v[6]) > now then why = 'wait:' .. v[6]
  elseif v[4] and tonumber(v[4]) > now + tonumber(ARGV[4]) then why = 'early'
  end
  if i == 6 and v[5] then  -- the message has left the broker: no longer in its backlog
    forget_message(ARGV[5], v[5], tid)
  end
  if why then
    out[#out + 1] = why
  else
    redis.call('HSET', key, 'lease_until', ARGV[2], 'claim', ARGV[3])
    redis.call('ZADD', KEYS[1], ARGV[2], tid)
    redis.call('ZADD', ARGV[5] .. 'due:' .. v[5], ARGV[2], tid)
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
return out
"""
)

# ARGV: claim id, rescue time, "{p}:", then the tids whose claims go back unused.
_RELEASE = """
for i = 4, #ARGV do
  local key = ARGV[3] .. 'x:' .. ARGV[i]
  local v = redis.call('HMGET', key, 'claim', 'account', 'next_poll_at')
  if v[1] == ARGV[1] then
    redis.call('HDEL', key, 'claim', 'lease_until')
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    redis.call('ZADD', ARGV[3] .. 'due:' .. v[2], tonumber(v[3]) or 0, ARGV[i])
  end
end
return 1
"""

# Shared tail of every move to a terminal state; P is the key prefix ("ep:").
_FINISH_TAIL = """
  local ids = redis.call('HMGET', KEYS[1], 'account', 'idem')
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', P .. 'due:' .. ids[1], ARGV[1])
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
redis.call('HDEL', KEYS[1], 'claim', 'lease_until', 'not_before')
redis.call('HSET', KEYS[1], 'token', ARGV[6], unpack(ARGV, 10))
redis.call('HINCRBY', P .. 'metrics', 'polls|' .. before[3] .. '|' .. ARGV[9], 1)
move(P .. 'metrics', before[3], before[2], redis.call('HGET', KEYS[1], 'state'))
if ARGV[3] == '1' then
  {_FINISH_TAIL}
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  redis.call('ZADD', P .. 'due:' .. redis.call('HGET', KEYS[1], 'account'), ARGV[8], ARGV[1])
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
local expired = {}
for _, tid in ipairs(due) do
  local v = redis.call('HMGET', ARGV[4] .. tid, 'token', 'deadline', 'account')
  if not v[1] or v[1] == '' then
    redis.call('ZREM', KEYS[1], tid)
  else
    if tonumber(v[2]) + tonumber(ARGV[5]) < tonumber(ARGV[1]) then
      redis.call('ZADD', KEYS[1], ARGV[2], tid)
      expired[#expired + 1] = tid
    else  -- sent by the fair sweep, from its account's due index
      redis.call('SADD', KEYS[2], v[3])
    end
  end
end
return expired
"""

_CLAIM_DUE = """
local limit = tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[6], 'LIMIT', 0, 2 * limit)
local out = {}
for _, tid in ipairs(due) do
  if #out >= 2 * limit then break end
  local key = ARGV[5] .. tid
  local v = redis.call('HMGET', key, 'state', 'lease_until', 'not_before')
  if v[1] ~= 'pending' and v[1] ~= 'running' then
    redis.call('ZREM', KEYS[1], tid)
  elseif v[2] and tonumber(v[2]) > tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], v[2], tid)
  elseif v[3] and tonumber(v[3]) > tonumber(ARGV[1]) then
    -- a provider's stated time: not taken along early, and moved to that time so it does not
    -- sit at the head of the index in front of exports that are due
    redis.call('ZADD', KEYS[1], v[3], tid)
  else
    redis.call('HSET', key, 'lease_until', ARGV[2], 'claim', ARGV[3])
    redis.call('ZADD', KEYS[2], ARGV[2], tid)
    redis.call('ZADD', KEYS[1], ARGV[2], tid)
    out[#out + 1] = tid
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
return out
"""


# A finished export answered again (`refresh`) or its callback sent again (`redeliver`): only a
# finished record changes, and the counter says how often.  ARGV: counter field, then pairs.
_NOTE_FINISHED = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'pending' or state == 'running' then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""

_CLAIM_OUTBOX = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) > tonumber(ARGV[2]) then return false end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return redis.call('HGETALL', KEYS[2])
"""

# Hand polls to the broker only while it holds little ready work (policy.admits, applied here
# in the round trip that hands a train over): at the message's due time, fewer than `cap`
# messages of the fleet and fewer than the account's share (cap / accounts in flight or
# waiting) ready, or none of the account's own. A message turned away is parked: its exports
# go back to the schedule at its due time and the account waits for the fair sweep.
# ARGV: now, cap, "{p}:", grace, account, then per message: due time, n, n (tid, token) pairs.
_ADMIT_FN = (
    _FORGET_MESSAGE
    + """
local function share_of(P, acct, cap)
  local busy = redis.call('HLEN', P .. 'flight_n')
  for _, w in ipairs(redis.call('SMEMBERS', P .. 'waiting')) do
    if redis.call('HEXISTS', P .. 'flight_n', w) == 0 then busy = busy + 1 end
  end
  if redis.call('HEXISTS', P .. 'flight_n', acct) == 0
      and redis.call('SISMEMBER', P .. 'waiting', acct) == 0 then
    busy = busy + 1
  end
  return math.max(1, math.floor(cap / busy))
end
local function admit(P, acct, now, cap, share, due, first)
  local by = math.max(now, due)
  local total = redis.call('ZCOUNT', P .. 'flight', '-inf', by)
  local mine = redis.call('ZCOUNT', P .. 'flight:' .. acct, '-inf', by)
  if mine == 0 or (total < cap and mine < share) then
    count_message(P, acct, first, due)
    return true
  end
  redis.call('SADD', P .. 'waiting', acct)
  redis.call('HINCRBY', P .. 'metrics', 'parked|' .. acct, 1)
  return false
end
"""
)

# A new record, and the admission of its first poll in the same round trip (ARGV[6] is the
# backlog bound, 0 for none; ARGV[7] the rescue grace): 1 to send it, 0 if it was parked.
_TRACK = (
    _ADMIT_FN
    + """
local existing = redis.call('HGET', KEYS[1], ARGV[2])
if existing then
  local state = redis.call('HGET', ARGV[5] .. existing, 'state')
  if state == 'pending' or state == 'running' then return {0, existing, 0} end
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 8))
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1])
local provider = redis.call('HGET', KEYS[2], 'provider')
redis.call('HINCRBY', KEYS[4], 'active|' .. provider .. '|pending', 1)
local account, cap = redis.call('HGET', KEYS[2], 'account'), tonumber(ARGV[6])
redis.call('SADD', KEYS[6], account)
if cap == 0 then return {1, ARGV[1], 1} end
local P, now = string.sub(ARGV[5], 1, -3), tonumber(ARGV[4])
forget_lost(P, now - tonumber(ARGV[7]))
if admit(P, account, now, cap, share_of(P, account, cap), now, ARGV[1]) then
  return {1, ARGV[1], 1}
end
redis.call('ZADD', KEYS[3], now, ARGV[1])  -- parked, due now: the fair sweep sends it
return {1, ARGV[1], 0}
"""
)

# A caller-chosen id: a repeat with the same (account, export id) is the same tracking; an id
# already used by another export is refused (""), never overwritten.
_TRACK_AS = (
    """
local taken = redis.call('HGET', KEYS[2], 'idem')
if taken then
  if taken == ARGV[2] then return {0, ARGV[1], 0} end
  return {0, '', 0}
end
"""
    + _TRACK
)

_ADMIT = (
    _ADMIT_FN
    + """
local now, cap, P, acct = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[5]
forget_lost(P, now - tonumber(ARGV[4]))
local share = share_of(P, acct, cap)
local out, i = {}, 6
while i <= #ARGV do
  local due, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if admit(P, acct, now, cap, share, due, ARGV[i + 2]) then
    out[#out + 1] = 1
  else
    for j = i + 2, i + 2 * n, 2 do
      if redis.call('HGET', P .. 'x:' .. ARGV[j], 'token') == ARGV[j + 1] then
        redis.call('ZADD', P .. 'sched', due, ARGV[j])
      end
    end
    out[#out + 1] = 0
  end
  i = i + 2 + 2 * n
end
return out
"""
)

# The fair sweep's view: ready messages of the fleet, and per account with tracked exports its
# due polls, its ready messages, and how late its most overdue poll is (kept for metrics).
# ARGV: now, "{p}:", grace.
_SHARE_STATE = (
    _FORGET_MESSAGE
    + """
local now, P = tonumber(ARGV[1]), ARGV[2]
forget_lost(P, now - tonumber(ARGV[3]))
local out = {redis.call('ZCOUNT', P .. 'flight', '-inf', now)}
for _, acct in ipairs(redis.call('SMEMBERS', P .. 'accounts')) do
  local due = P .. 'due:' .. acct
  local head = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if #head == 0 then
    redis.call('SREM', P .. 'accounts', acct)
    redis.call('SREM', P .. 'waiting', acct)
    redis.call('HDEL', P .. 'metrics', 'lag|' .. acct)
  else
    local lag = math.max(0, now - tonumber(head[2]))
    redis.call('HSET', P .. 'metrics', 'lag|' .. acct, string.format('%.3f', lag))
    local waiting = redis.call('ZCOUNT', due, '-inf', now)
    if waiting == 0 then redis.call('SREM', P .. 'waiting', acct) end
    out[#out + 1] = acct
    out[#out + 1] = waiting
    out[#out + 1] = redis.call('ZCOUNT', P .. 'flight:' .. acct, '-inf', now)
  end
end
return out
"""
)

# Take each account's share of due polls from its due index, earliest first, skipping exports
# handed off or claimed (their schedule entry is in the future); counts each message.
# ARGV: now, rescue time, "{p}:", grace, then per account: account, most exports, train size.
_TAKE_DUE = (
    _FORGET_MESSAGE
    + """
local now, rescue, P, grace = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local send, expired = {}, {}
for i = 5, #ARGV, 3 do
  local acct, want, size, got = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), 0
  local index = P .. 'due:' .. acct
  local scan = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 2 * want + 200)
  for _, tid in ipairs(scan) do
    if got >= want then break end
    local v = redis.call('HMGET', P .. 'x:' .. tid, 'token', 'deadline')
    if not v[1] or v[1] == '' then
      redis.call('ZREM', index, tid)
    elseif tonumber(redis.call('ZSCORE', P .. 'sched', tid) or '0') <= now then
      redis.call('ZADD', P .. 'sched', rescue, tid)
      if tonumber(v[2]) + grace < now then
        expired[#expired + 1] = tid
      else
        if got % size == 0 then count_message(P, acct, tid, now) end
        got = got + 1
        send[#send + 1] = acct
        send[#send + 1] = tid
        send[#send + 1] = v[1]
      end
    end
  end
  if got < want then redis.call('SREM', P .. 'waiting', acct) end
end
return {send, expired}
"""
)


@dataclass(frozen=True)
class Claim:
    """A poll's exclusive right to update one record until `commit` or its lease runs out."""

    tracking_id: str
    claim_id: str
    fields: dict[str, str]


@dataclass(frozen=True)
class Write:
    """One poll's result, to be written only while its claim still holds."""

    claim: Claim
    fields: Mapping[str, Any]
    new_token: str
    now: float
    terminal: bool
    sched_score: float | None
    outcome: str = "unknown"


class Store:
    """Every read and atomic write of tracked exports; the only module that knows the key layout."""

    def __init__(self, client: redis.Redis, prefix: str = "ep") -> None:
        self.r = client
        self.prefix = prefix
        self.keys = keys = Keys(prefix)
        self.sched, self.outbox, self.deadletter = keys.sched, keys.outbox, keys.deadletter
        self.metrics, self.idem, self.accounts = keys.metrics, keys.idem, keys.accounts
        self.flight, self.flight_n, self.waiting = keys.flight, keys.flight_n, keys.waiting
        self._sig_expiry: dict[str, float] = {}
        self._track = client.register_script(_TRACK)
        self._claim = client.register_script(_CLAIM)
        self._commit = client.register_script(_COMMIT)
        self._finish = client.register_script(_FINISH)
        self._due = client.register_script(_DUE)
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._release = client.register_script(_RELEASE)
        self._claim_outbox = client.register_script(_CLAIM_OUTBOX)
        self._track_as = client.register_script(_TRACK_AS)
        self._note_finished = client.register_script(_NOTE_FINISHED)
        self._admit = client.register_script(_ADMIT)
        self._share_state = client.register_script(_SHARE_STATE)
        self._take_due = client.register_script(_TAKE_DUE)

    def key(self, tid: str) -> str:
        return self.keys.record(tid)

    def due_key(self, account: str) -> str:
        return self.keys.due(account)

    # -- callback signatures -----------------------------------------------------------------

    def put_signature(self, signature: Mapping[str, Any], ttl: float) -> str:
        """Store a signature once for all the exports that name it; returns its reference.

        The key must outlive the last export naming it, so its expiry is pushed out whenever a
        new export needs more than an hour beyond what this process last set.
        """
        text = json.dumps(signature, separators=(",", ":"), sort_keys=True)
        ref = codec.digest(text)
        needed = time.time() + ttl
        if self._sig_expiry.get(ref, 0.0) < needed:
            self.r.set(self.keys.signature(ref), text, ex=max(1, int(ttl + _SIG_SLACK)))
            self._sig_expiry[ref] = needed + _SIG_SLACK
        return ref

    def get_signature(self, ref: str) -> dict[str, Any] | None:
        text = self.r.get(self.keys.signature(ref))
        return cast(dict[str, Any], json.loads(cast(bytes, text))) if text else None

    # -- state changes -----------------------------------------------------------------------

    def track(
        self,
        tid: str,
        fields: Mapping[str, Any],
        *,
        rescue_at: float,
        cap: int = 0,
        grace: float = 0.0,
    ) -> tuple[bool, str, bool]:
        """Create a record unless this (account, export id) is already active: (created, tid,
        whether its first poll may go to the broker now under the backlog bound `cap`; 0 for
        none: else it is parked, due now, for the fair sweep)."""
        return self._tracked(self._track, tid, fields, rescue_at, cap, grace)

    def track_as(
        self,
        tid: str,
        fields: Mapping[str, Any],
        *,
        rescue_at: float,
        cap: int = 0,
        grace: float = 0.0,
    ) -> tuple[bool, str, bool]:
        """`track` under a caller-chosen id: (False, tid, _) for a repeat of the same export,
        (False, other, _) if the export is active under another id, (False, "", _) if the id
        is taken."""
        return self._tracked(self._track_as, tid, fields, rescue_at, cap, grace)

    def _tracked(
        self,
        script: Any,
        tid: str,
        fields: Mapping[str, Any],
        rescue_at: float,
        cap: int,
        grace: float,
    ) -> tuple[bool, str, bool]:
        account, export_id = str(fields["account"]), str(fields["export_id"])
        digest = codec.idem_digest(account, export_id)
        args: list[Arg] = [tid, digest, rescue_at, codec.encode(fields["next_poll_at"])]
        args += [f"{self.prefix}:x:", cap, grace, *codec.pairs({**fields, "idem": digest})]
        keys = [self.idem, self.key(tid), self.sched, self.metrics, self.due_key(account)]
        keys.append(self.accounts)
        created, existing, admitted = script(keys=keys, args=args)
        return bool(created), codec.text(existing), bool(admitted)

    def note_finished(self, tid: str, counter: str, fields: Mapping[str, Any]) -> int | None:
        """Write fields on a finished record and count the event; None if it is not finished."""
        args: list[Arg] = [counter, *codec.pairs(fields)]
        count = int(self._note_finished(keys=[self.key(tid)], args=args))
        return None if count < 0 else count

    def claim(
        self, tid: str, token: str, claim_id: str, *, now: float, lease_until: float
    ) -> Claim | str:
        """Take the poll lease, or say why not: missing, stale, done, busy, early, or
        `wait:<time>` when the record may not be polled before a provider's stated time."""
        return self.claim_many([(tid, token)], claim_id, now=now, lease_until=lease_until)[0]

    def claim_many(
        self, pairs: Sequence[tuple[str, str]], claim_id: str, *, now: float, lease_until: float
    ) -> list[Claim | str]:
        """`claim` for every (tid, token) a message names, in one round trip."""
        args: list[Arg] = [now, lease_until, claim_id, _EARLY, f"{self.prefix}:"]
        for tid, token in pairs:
            args += [tid, token]
        replies = self._claim(keys=[self.sched], args=args)
        return [
            codec.text(reply)
            if isinstance(reply, bytes | str)
            else Claim(tid, claim_id, codec.fields(reply))
            for (tid, _), reply in zip(pairs, replies, strict=True)
        ]

    def release(self, claims: Sequence[Claim], *, rescue_at: float) -> None:
        """Give back claims a poll took but did not get to; their tokens stay valid."""
        if claims:
            args: list[Arg] = [claims[0].claim_id, rescue_at, f"{self.prefix}:"]
            self._release(keys=[self.sched], args=args + [c.tracking_id for c in claims])

    def commit_many(self, writes: Sequence[Write]) -> list[bool]:
        """Write each poll's result if its claim still holds (terminal writes also fill the
        outbox): a whole train in one round trip, each write succeeding on its own."""
        with self.r.pipeline(transaction=False) as pipe:
            for w in writes:
                tid = w.claim.tracking_id
                args: list[Arg] = [tid, w.claim.claim_id, int(w.terminal), w.sched_score or 0]
                args += [w.now, "" if w.terminal else w.new_token, f"{self.prefix}:"]
                args += [w.fields.get("next_poll_at") or 0, w.outcome, *codec.pairs(w.fields)]
                self._commit(keys=[self.key(tid), self.sched, self.outbox], args=args, client=pipe)
            return [bool(x) for x in pipe.execute()]

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
        args += [f"{self.prefix}:", *codec.pairs(fields)]
        keys = [self.key(tid), self.sched, self.outbox]
        return bool(self._finish(keys=keys, args=args))

    def due(self, now: float, rescue_at: float, limit: int, grace: float) -> list[str]:
        """Exports past their deadline, re-armed for rescue so one sweep expires each once.
        Other due entries are left to the fair sweep (`take_due`); their accounts are noted
        for it, so an export tracked before accounts were kept is found too."""
        args: list[Arg] = [now, rescue_at, limit, f"{self.prefix}:x:", grace]
        expired = self._due(keys=[self.sched, self.accounts], args=args)
        return [codec.text(x) for x in expired]

    # -- the bounded backlog and the fair sweep ------------------------------------------------

    def admit(
        self,
        account: str,
        messages: Sequence[tuple[Sequence[tuple[str, str]], float]],
        *,
        now: float,
        cap: int,
        grace: float,
    ) -> list[bool]:
        """For each (pairs, due time) message of one account: True to hand it to the broker
        (it is counted until a worker starts it), False if it was parked in the schedule."""
        if not messages:
            return []
        args: list[Arg] = [now, cap, f"{self.prefix}:", grace, account]
        for pairs, due in messages:
            args += [due, len(pairs)]
            for tid, token in pairs:
                args += [tid, token]
        return [bool(x) for x in self._admit(keys=[self.flight], args=args)]

    def share_state(self, now: float, grace: float) -> tuple[int, dict[str, tuple[int, int]]]:
        """Ready messages of the fleet, and per account (due polls, ready messages)."""
        flat = self._share_state(keys=[self.flight], args=[now, f"{self.prefix}:", grace])
        rows = [codec.text(x) for x in flat[1:]]
        accounts = {
            acct: (int(due), int(ready))
            for acct, due, ready in zip(rows[::3], rows[1::3], rows[2::3], strict=True)
        }
        return int(flat[0]), accounts

    def take_due(
        self, now: float, rescue_at: float, grace: float, wants: Sequence[tuple[str, int, int]]
    ) -> tuple[list[tuple[str, str, str]], list[str]]:
        """Up to `most` due polls of each (account, most, train size), earliest first, as
        (account, tid, token) re-armed for rescue; and exports found past their deadline."""
        args: list[Arg] = [now, rescue_at, f"{self.prefix}:", grace]
        for account, most, size in wants:
            args += [account, most, size]
        send, expired = self._take_due(keys=[self.sched], args=args)
        flat = [codec.text(x) for x in send]
        taken = list(zip(flat[::3], flat[1::3], flat[2::3], strict=True))
        return taken, [codec.text(x) for x in expired]

    def backlog(self, now: float) -> dict[str, Any]:
        """For views: poll messages in the broker (ready now, all), per account, and due polls
        parked in Redis; plus each account's lag as the last sweep saw it."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.zcount(self.flight, "-inf", now)
            pipe.zcard(self.flight)
            pipe.hgetall(self.flight_n)
            pipe.zcount(self.sched, "-inf", now)
            ready, total, per_account, due = pipe.execute()
        return {
            "ready": int(ready),
            "in_broker": int(total),
            "by_account": {codec.text(k): int(v) for k, v in per_account.items()},
            "due_in_redis": int(due),
        }

    def claim_due(
        self,
        account: str,
        claim_id: str,
        *,
        now: float,
        lease_until: float,
        due_by: float,
        limit: int,
    ) -> list[Claim]:
        """Take up to `limit` more polls of one account due by `due_by`, to ride along."""
        if limit <= 0:
            return []
        args: list[Arg] = [now, lease_until, claim_id, limit, f"{self.prefix}:x:", due_by]
        flat = self._claim_due(keys=[self.due_key(account), self.sched], args=args)
        return [
            Claim(codec.text(tid), claim_id, codec.fields(fields))
            for tid, fields in zip(flat[::2], flat[1::2], strict=True)
        ]

    # -- the outbox --------------------------------------------------------------------------

    def outbox_due(self, now: float, limit: int) -> list[str]:
        ids = self.r.zrangebyscore(self.outbox, "-inf", now, start=0, num=limit)
        return [codec.text(x) for x in cast(list[Any], ids)]

    def claim_outbox(self, tid: str, *, now: float, retry_at: float) -> dict[str, str] | None:
        """Take one callback to dispatch; None if another dispatcher has it or it is gone."""
        reply = self._claim_outbox(keys=[self.outbox, self.key(tid)], args=[tid, now, retry_at])
        if not reply:
            return None
        return codec.fields(reply)

    def ack_outbox(
        self, tid: str, *, now: float, ttl: float, provider: str = "", lag: float | None = None
    ) -> None:
        """Done with a callback; its lag (terminal state -> dispatch) feeds the metrics."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.zrem(self.outbox, tid)
            if lag is not None:
                pipe.hincrby(self.metrics, f"callbacks|{provider}", 1)
                pipe.hincrbyfloat(self.metrics, f"callback_lag_sum|{provider}", max(lag, 0.0))
            pipe.hset(self.key(tid), "callback_at", codec.encode(now))
            pipe.expire(self.key(tid), int(ttl))
            pipe.execute()

    def drop_outbox(self, tid: str) -> None:
        self.r.zrem(self.outbox, tid)

    def fail_outbox(self, tid: str, *, now: float, error: str, most: int, ttl: float) -> bool:
        """Count a failed dispatch; at `most` failures the callback is moved aside to the
        dead-letter set, so one bad signature is never retried forever. True when moved."""
        key = self.key(tid)
        failures = cast(int, self.r.hincrby(key, "callback_failures", 1))
        if failures < most:
            return False
        with self.r.pipeline(transaction=True) as pipe:
            pipe.zrem(self.outbox, tid)
            pipe.zadd(self.deadletter, {tid: now})
            pipe.hset(key, mapping={"callback_error": error, "callback_dead_at": codec.encode(now)})
            pipe.expire(key, int(ttl))
            pipe.execute()
        return True

    # -- reads -------------------------------------------------------------------------------

    def get(self, tid: str) -> dict[str, str] | None:
        raw = cast(dict[Any, Any], self.r.hgetall(self.key(tid)))
        return {codec.text(k): codec.text(v) for k, v in raw.items()} or None

    def iter_ids(self, count: int = 1000) -> Iterator[str]:
        """Every tracking id, by SCAN: for the CLI and operators, never on the poll path."""
        for key in self.r.scan_iter(match=self.keys.records_matching(), count=count):
            yield self.keys.tid_of(codec.text(key))

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Tracking ids starting with `prefix` (an operator's shortened id), at most `limit`;
        a SCAN, so for the CLI only. The prefix must hold no glob characters."""
        found = []
        for key in self.r.scan_iter(match=self.keys.records_matching(prefix), count=1000):
            found.append(self.keys.tid_of(codec.text(key)))
            if len(found) >= limit:
                break
        return sorted(found)

    def account_lags(self) -> dict[str, float]:
        """Seconds each account's most overdue poll was late at the last sweep."""
        return {k[4:]: v for k, v in self.metric_fields().items() if k.startswith("lag|")}

    def metric_fields(self) -> dict[str, float]:
        raw = cast(dict[Any, Any], self.r.hgetall(self.metrics))
        return {codec.text(k): float(codec.text(v)) for k, v in raw.items()}

    def counts(self) -> dict[str, int]:
        return {
            "scheduled": cast(int, self.r.zcard(self.sched)),
            "outbox": cast(int, self.r.zcard(self.outbox)),
            "deadletter": cast(int, self.r.zcard(self.deadletter)),
        }
