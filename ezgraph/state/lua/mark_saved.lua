-- Runs are in SQL as they were read: drop them from the unsaved set and let their keys expire.
-- A run whose end changed since it was read is left as it is: one retried meanwhile (running
-- again, or ended again) must not expire, and one that ended again goes back in the unsaved
-- set, so that its new end is written after the old one whatever order two writers took.
-- ARGV: the head, the TTL in seconds, then per run its id and the ended_at written ('' for a
-- run that had left Redis). Returns how many runs were marked saved.
local ttl = tonumber(ARGV[FIRST])
local marked = 0
for n = FIRST + 1, #ARGV, 2 do
  run.bind(ARGV[n])
  local status, ended, idem = unpack(redis.call('HMGET', run.key, 'status', 'ended_at',
    'idempotency_key'))
  local keys = {run.key, run.steps, run.state, run.join, run.jobs}
  if idem then table.insert(keys, key.idempotency(idem)) end  -- SQL knows the key now
  if not status or ended == ARGV[n + 1] then  -- gone (no status), or as written
    redis.call('ZREM', key.unsaved_runs, run.id)
    for _, k in ipairs(keys) do redis.call('EXPIRE', k, ttl) end
    marked = marked + 1
  elseif ended then
    redis.call('ZADD', key.unsaved_runs, NOW, run.id)
    for _, k in ipairs(keys) do redis.call('PERSIST', k) end
  end
end
return marked
