-- A step failed for good (no retry left), or the run is canceled: record it, stop the run,
-- cancel what is still queued, end the run if idle.
-- After the prelude's ARGV: 5 step ('' for a run-level cancel), 6 run status to set,
-- 7 run error (one line), 8 started_at, 9 worker, 10 attempt, 11 input JSON,
-- 12 step error (with its traceback).
-- Returns {outcome, run ended (0/1)}; a run-level call returns {'refused', 0} when the run has
-- ended, or has stopped with another status.
local STEP = ARGV[5]
if redis.call('EXISTS', run_key) == 0 then return {'gone', 0} end
local before = redis.call('HGET', run_key, 'status')
local live = before == 'queued' or before == 'running'
if STEP == '' and (redis.call('HEXISTS', run_key, 'ended_at') == 1
    or (not live and before ~= ARGV[6])) then
  return {'refused', 0}
end
if STEP ~= '' then
  if TERMINAL[redis.call('HGET', steps_key, STEP .. '.status')] then return {'duplicate', 0} end
  redis.call('HSET', steps_key, STEP .. '.status', 'failed', STEP .. '.error', ARGV[12],
    STEP .. '.started_at', ARGV[8], STEP .. '.ended_at', NOW_ISO, STEP .. '.worker', ARGV[9],
    STEP .. '.attempts', ARGV[10], STEP .. '.input', ARGV[11])
  redis.call('HINCRBY', run_key, 'pending', -1)
end
abort_run(ARGV[6], ARGV[7])
if live then
  -- This call stopped the run. A step still in flight creates no successors when it finishes
  -- now (complete_step walks only live runs): mark it, so that a retry runs it again.
  local fields = redis.call('HGETALL', steps_key)
  for i = 1, #fields, 2 do
    local step = string.match(fields[i], '^(.*)%.status$')
    if step and (fields[i + 1] == 'queued' or fields[i + 1] == 'ready') then
      redis.call('HSET', steps_key, step .. '.inflight', 1)
    end
  end
end
if STEP == '' then
  -- A cancel also ends the steps whose job will never report: stopped by
  -- send_stop_job_command (or killed), or waiting in RQ's scheduled registry for a retry.
  local jobs = redis.call('HGETALL', jobs_key)
  local prefix_len = string.len(RUN) + 2
  for i = 1, #jobs, 2 do
    local id, queue = jobs[i], jobs[i + 1]
    local step = string.sub(id, prefix_len)
    if redis.call('HGET', steps_key, step .. '.status') == 'queued' then
      local job_status = redis.call('HGET', 'rq:job:' .. id, 'status')
      if job_status == 'scheduled' then
        redis.call('ZREM', 'rq:scheduled:' .. queue, id)
        redis.call('HSET', 'rq:job:' .. id, 'status', 'canceled', 'ended_at', NOW_ISO)
        redis.call('ZADD', 'rq:canceled:' .. queue, NOW + 86400, id)
      end
      if job_status == 'scheduled' or job_status == 'stopped' or job_status == 'failed' then
        redis.call('HSET', steps_key, step .. '.status', 'canceled', step .. '.ended_at', NOW_ISO)
        redis.call('HINCRBY', run_key, 'pending', -1)
      end
    end
  end
end
return {'ok', end_run_if_idle()}
