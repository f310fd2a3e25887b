-- piece deferred: a claim's updates to its account's keys, kept until a script holding those
-- keys applies them.
--
-- A poll message names tracking ids and tokens, not the account, so the claim cannot name the
-- account's due index or its zset in the ledger in KEYS. It leaves the two updates it owes them
-- in {p}:deferred, a zset whose members all score 0 and so sort by name:
--   <acct> \0 lease \0 <lease_until> \0 <tid> \0 <tid> ...   claimed exports: their due-index
--                                                            entries move to the lease's end
--   <acct> \0 gone \0 <tid>                                  the message counted by <tid> left
--                                                            the broker: out of the ledger zset
-- Every script that reads the account's due index or ledger zset, or writes a member a deferred
-- update may name, calls settle() for the account first, so none ever sees them stale. The
-- fleet-wide parts of the ledger ({p}:flight, {p}:flight_n) change at once, in the claim.
-- `k` holds key names from the calling script's KEYS: deferred, and for settle() the account's
-- due index (due) and ledger zset (flight_of).

local function defer_lease(k, acct, lease_until, tids)
  local entry = acct .. '\0lease\0' .. lease_until .. '\0' .. table.concat(tids, '\0')
  redis.call('ZADD', k.deferred, 0, entry)
end

local function defer_gone(k, acct, tid)
  redis.call('ZADD', k.deferred, 0, acct .. '\0gone\0' .. tid)
end

local function split_nul(text)
  local out, at = {}, 1
  while true do
    local cut = string.find(text, '\0', at, true)
    if not cut then
      out[#out + 1] = string.sub(text, at)
      return out
    end
    out[#out + 1] = string.sub(text, at, cut - 1)
    at = cut + 1
  end
end

local function settle(k, acct)
  local lo, hi = '[' .. acct .. '\0', '(' .. acct .. '\1'
  local entries = redis.call('ZRANGEBYLEX', k.deferred, lo, hi)
  if #entries == 0 then return end
  local leases, order = {}, {}
  for _, entry in ipairs(entries) do
    local part = split_nul(string.sub(entry, #acct + 2))
    if part[1] == 'gone' then
      redis.call('ZREM', k.flight_of, part[2])
    else  -- a later lease of the same export (its earlier one ran out) wins
      for i = 3, #part do
        local tid, old = part[i], leases[part[i]]
        if not old then order[#order + 1] = tid end
        if not old or tonumber(part[2]) > tonumber(old) then leases[tid] = part[2] end
      end
    end
  end
  for _, tid in ipairs(order) do
    redis.call('ZADD', k.due, leases[tid], tid)
  end
  redis.call('ZREMRANGEBYLEX', k.deferred, lo, hi)
end
