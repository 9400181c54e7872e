-- Sweep the next chunk of a stopped run's jobs (run.sweep_chunk), for the client that canceled
-- it or the watchdog. ARGV: the head, the run id. Returns {jobs left to sweep (0/1), run ended
-- (0/1)}.
local kept = recall()
if kept then return kept end
run.bind(ARGV[FIRST])
if redis.call('EXISTS', run.key) == 0 then
  redis.call('ZREM', key.runs_sweeping, run.id)
  return {0, 0}
end
if run.sweep_chunk(TUNING.sweep_chunk) then return remember({1, 0}) end
return remember({0, run.end_if_idle()})
