-- Cancel a run: stop it, cancel its waiting steps in RQ, end it once nothing of it runs.
-- Steps whose job will never report also end here: stopped by RQ's stop command (or killed),
-- or waiting in RQ's scheduled registry for a retry. Calling it again ends those stopped since.
-- The watchdog stops a run past its deadline the same way, as `failed` (request.status).
-- ARGV: the head, a cancel (FIELDS.cancel). Returns {outcome, run ended (0/1)}: ok, gone (no
-- run) or refused (the run has ended, or stopped otherwise than this request stops it).
local kept = recall()
if kept then return kept end
local request = read_record(FIELDS.cancel, FIRST)
run.bind(request.run_id)
redis.call('ZREM', key.deadlines, run.id)  -- stopped now, or stopped already: nothing to watch
if redis.call('EXISTS', run.key) == 0 then return {'gone', 0} end
local status, error_text = unpack(redis.call('HMGET', run.key, 'status', 'error'))
local live = status == 'queued' or status == 'running'
local again = status == request.status and error_text == request.error
if redis.call('HEXISTS', run.key, 'ended_at') == 1 or not (live or again) then
  return {'refused', 0}
end
run.stop(request.status, request.error)
local jobs = redis.call('HGETALL', run.jobs)
local prefix_len = #run.id + 2
for n = 1, #jobs, 2 do
  local id, queue = jobs[n], jobs[n + 1]
  local step = string.sub(id, prefix_len)
  if run.step_status(step) == 'queued' then
    local job_status = rq.job_status(id)
    if rq.cancel_waiting(id, queue, job_status == 'scheduled' and 'scheduled' or '')
        or job_status == 'stopped' or job_status == 'failed' then
      redis.call('HSET', run.steps, step .. '.status', 'canceled', step .. '.ended_at', NOW_ISO)
      redis.call('HINCRBY', run.key, 'pending', -1)
    end
  end
end
return remember({'ok', run.end_if_idle()})
