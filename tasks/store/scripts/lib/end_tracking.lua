-- piece end_tracking: an export that reached a terminal state leaves the schedule and its
-- account's due index, and gives its (account, export id) back to the idempotency index
-- (unless that already names a newer tracking). Takes key names from the calling script's KEYS.
local function end_tracking(record, sched, due, idem, tid)
  local digest = redis.call('HGET', record, 'idem')
  redis.call('ZREM', sched, tid)
  redis.call('ZREM', due, tid)
  if digest and redis.call('HGET', idem, digest) == tid then
    redis.call('HDEL', idem, digest)
  end
end
