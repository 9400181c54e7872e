-- A step failed for good (no retry left), or the run is canceled: record it, stop the run,
-- cancel what is still queued, end the run if idle.
-- After the prelude's ARGV: 5 step ('' for a run-level cancel), 6 run status to set,
-- 7 run error (one line), 8 started_at, 9 worker, 10 attempt, 11 input JSON,
-- 12 step error (with its traceback).
-- Returns {outcome, run ended (0/1)}.
local STEP = ARGV[5]
if redis.call('EXISTS', run_key) == 0 then return {'gone', 0} end
if STEP ~= '' then
  if TERMINAL[redis.call('HGET', steps_key, STEP .. '.status')] then return {'duplicate', 0} end
  redis.call('HSET', steps_key, STEP .. '.status', 'failed', STEP .. '.error', ARGV[12],
    STEP .. '.started_at', ARGV[8], STEP .. '.ended_at', NOW_ISO, STEP .. '.worker', ARGV[9],
    STEP .. '.attempts', ARGV[10], STEP .. '.input', ARGV[11])
  redis.call('HINCRBY', run_key, 'pending', -1)
end
abort_run(ARGV[6], ARGV[7])
return {'ok', end_run_if_idle()}
