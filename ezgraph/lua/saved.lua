-- Runs are in SQL: drop them from the unsaved set and let their keys expire.
-- ARGV after the prelude (ARGV[2] unused): 5 TTL in seconds, 6.. run ids.
local ttl = tonumber(ARGV[5])
for n = 6, #ARGV do
  bind_run(ARGV[n])
  redis.call('ZREM', P .. ':runs:unsaved', RUN)
  for _, key in ipairs({run_key, steps_key, state_key, join_key, jobs_key}) do
    redis.call('EXPIRE', key, ttl)
  end
end
return #ARGV - 5
