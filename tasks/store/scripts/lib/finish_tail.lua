-- piece finish_tail: the shared tail of every move to a terminal state (inline code: uses
-- KEYS[1] the record, KEYS[2] the schedule, ARGV[1] the tid and P the key prefix).
  local ids = redis.call('HMGET', KEYS[1], 'account', 'idem')
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', P .. 'due:' .. ids[1], ARGV[1])
  if ids[2] and redis.call('HGET', P .. 'idem', ids[2]) == ARGV[1] then
    redis.call('HDEL', P .. 'idem', ids[2])
  end
