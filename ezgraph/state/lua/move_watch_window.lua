-- Move a wide run's watchdog window on (RedisRuns.read_waiting_window): below `watchlow:<node>`
-- in its join hash every instance of the mapped node has ended. Not for a run that has ended
-- (its keys expire: none may be made again without a TTL).
-- ARGV: the head, the run id, then pairs of a mapped node and its new low.
local id = ARGV[FIRST]
run.bind(id)
local status = redis.call('HGET', run.key, 'status')
if status ~= 'queued' and status ~= 'running' then return 0 end
for n = FIRST + 1, #ARGV, 2 do
  redis.call('HSET', run.join, 'watchlow:' .. ARGV[n], ARGV[n + 1])
end
return 1
