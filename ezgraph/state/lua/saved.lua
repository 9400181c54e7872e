-- Runs are in SQL as they were read: drop them from the unsaved set and let their keys expire.
-- A run whose end changed since it was read is left as it is: one retried meanwhile (running
-- again, or ended again) must not expire, and one that ended again goes back in the unsaved
-- set, so that its new end is written after the old one whatever order two writers took.
-- ARGV after the prelude (ARGV[2] unused): 5 TTL in seconds, then per run: its id, and the
-- ended_at it was written with ('' for a run that had left Redis).
-- Returns how many runs were marked saved.
local ttl = tonumber(ARGV[5])
local marked = 0
for n = 6, #ARGV, 2 do
  bind_run(ARGV[n])
  local run = redis.call('HMGET', run_key, 'status', 'ended_at')
  local ended = run[2]
  if not run[1] or ended == ARGV[n + 1] then  -- gone (no status), or as written
    redis.call('ZREM', P .. ':runs:unsaved', RUN)
    for _, key in ipairs({run_key, steps_key, state_key, join_key, jobs_key}) do
      redis.call('EXPIRE', key, ttl)
    end
    marked = marked + 1
  elseif ended then
    redis.call('ZADD', P .. ':runs:unsaved', NOW, RUN)
    for _, key in ipairs({run_key, steps_key, state_key, join_key, jobs_key}) do
      redis.call('PERSIST', key)
    end
  end
end
return marked
