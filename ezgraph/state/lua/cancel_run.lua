-- Cancel a run: stop it, cancel its waiting steps in RQ, end it once nothing of it runs.
-- Steps whose job will never report also end here: stopped by RQ's stop command (or killed),
-- or waiting in RQ's scheduled registry for a retry. Calling it again ends those stopped since.
-- The watchdog stops a run past its deadline the same way, as `failed` (request.status).
-- A wide run's jobs are swept a chunk per call (run.sweep): it ends once the sweep is done.
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
if live then
  run.abort(request.status, request.error, SWEEP_CANCEL)
else
  run.sweep(SWEEP_CANCEL)  -- again: end the steps stopped since
end
return remember({'ok', run.end_if_idle()})
