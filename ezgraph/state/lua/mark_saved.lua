-- Runs are in SQL as they were read: drop them from the unsaved set and let their keys, and
-- every key of their RQ jobs, expire. A run whose end changed since it was read is left as it
-- is: one retried meanwhile (running again, or ended again) must not expire, and one that ended
-- again goes back in the unsaved set, so that its new end is written after the old one whatever
-- order two writers took.
-- A run's jobs are set to expire TUNING.expire_chunk at a time at most per call (a map may
-- have 100,000): the run waits in the expiring set (scored by its jobs hash's HSCAN cursor, a
-- whole number), and every call, one with no runs too, goes on with the runs waiting there.
-- Its jobs hash, which lists them, expires once all of them are set to expire.
-- ARGV: the head, the TTL in seconds, then per run its id and the ended_at written ('' for a
-- run that had left Redis). Returns {runs marked saved, runs whose jobs are still expiring}.
local ttl = tonumber(ARGV[FIRST])
local marked = 0
for n = FIRST + 1, #ARGV, 2 do
  run.bind(ARGV[n])
  local status, ended, idem = unpack(redis.call('HMGET', run.key, 'status', 'ended_at',
    'idempotency_key'))
  local keys = {run.key, run.steps, run.state, run.join, run.events, run.signals}
  if idem then table.insert(keys, key.idempotency(idem)) end  -- SQL knows the key now
  if not status or ended == ARGV[n + 1] then  -- gone (no status), or as written
    redis.call('ZREM', key.unsaved_runs, run.id)
    for _, k in ipairs(keys) do redis.call('EXPIRE', k, ttl) end
    redis.call('ZADD', key.expiring_runs, 0, run.id)
    marked = marked + 1
  elseif ended then
    redis.call('ZADD', key.unsaved_runs, NOW, run.id)
    for _, k in ipairs(keys) do redis.call('PERSIST', k) end
    redis.call('PERSIST', run.jobs)
    redis.call('ZREM', key.expiring_runs, run.id)
  end
end

local budget = TUNING.expire_chunk
while budget > 0 do
  local waiting = redis.call('ZRANGE', key.expiring_runs, 0, 9, 'WITHSCORES')
  if #waiting == 0 then break end
  for n = 1, #waiting, 2 do
    if budget <= 0 then break end
    local id, cursor = waiting[n], waiting[n + 1]
    repeat
      local scan = redis.call('HSCAN', key.jobs(id), cursor, 'COUNT', budget)
      cursor = scan[1]
      local jobs = scan[2]
      for j = 1, #jobs, 2 do rq.expire_job(jobs[j], jobs[j + 1], ttl) end
      budget = budget - math.max(#jobs / 2, 1)
    until cursor == '0' or budget <= 0
    if cursor == '0' then
      redis.call('EXPIRE', key.jobs(id), ttl)
      redis.call('ZREM', key.expiring_runs, id)
    else
      redis.call('ZADD', key.expiring_runs, cursor, id)
    end
  end
end
return {marked, redis.call('ZCARD', key.expiring_runs)}
