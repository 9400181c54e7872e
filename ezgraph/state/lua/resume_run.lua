-- Retry a failed run that has ended: set it running again and requeue the RQ job of each step
-- to run again: failed and canceled steps, and steps that finished after the run had stopped
-- (marked stopped_while_running: their successors were never created; a sink, having none,
-- stays finished). A job's kwargs hold its step's input (the state, or a join's spec, read
-- again), so requeueing the same job runs the step on the same input.
-- A wide run (more jobs than TUNING.sweep_chunk) is requeued a chunk per call (run.sweep), its
-- jobs checked as they are reached: then the reply is {'ok'} alone.
-- ARGV: the head, FIELDS.resume. Returns {'ok', requeued steps...}, or why nothing changed:
-- {'gone'}, {'status', run status}, {'running'} (steps still running), {'job', step, job
-- status or 'expired'}, {'empty'}.
local kept = recall()
if kept then return kept end
local request = read_record(FIELDS.resume, FIRST)
run.bind(request.run_id)
if redis.call('EXISTS', run.key) == 0 then return {'gone'} end
local status = redis.call('HGET', run.key, 'status')
if status ~= 'failed' then return {'status', status} end
if redis.call('HEXISTS', run.key, 'ended_at') == 0 then return {'running'} end
local wide = redis.call('HLEN', run.jobs) > TUNING.sweep_chunk
local again = {}
if not wide then
  local succ = cjson.decode(redis.call('HGET', run.key, 'graph')).succ
  local jobs = redis.call('HGETALL', run.jobs)
  local prefix_len = #run.id + 2
  for n = 1, #jobs, 2 do
    local id, queue = jobs[n], jobs[n + 1]
    local step = string.sub(id, prefix_len)
    if run.reruns(step, succ) then
      local job_status = rq.job_status(id)
      if not REQUEUEABLE[job_status] then return {'job', step, job_status or 'expired'} end
      table.insert(again, {step = step, id = id, queue = queue})
    end
  end
  if #again == 0 then return {'empty'} end
end

local error_text = redis.call('HGET', run.key, 'error')
redis.call('HSET', run.key, 'status', 'running')
redis.call('HDEL', run.key, 'error', 'ended_at')
redis.call('ZADD', key.live_runs, NOW, run.id)
redis.call('ZREM', key.unsaved_runs, run.id)
-- The run was written to SQL, so its keys were set to expire (EZGRAPH_RUN_TTL): keep them.
for _, k in ipairs({run.key, run.steps, run.state, run.join, run.jobs, run.events,
    run.signals}) do
  redis.call('PERSIST', k)
end
redis.call('ZREM', key.expiring_runs, run.id)  -- its jobs are no longer set to expire
if wide then
  -- A wide run's steps are requeued a chunk per call (run.sweep): a job that cannot be
  -- requeued fails the run again; none to run again leaves it failed as it was.
  redis.call('HSET', run.join, 'sweep:error', error_text or '')
  if not run.sweep(SWEEP_RETRY) then run.end_if_idle() end  -- swept whole: nothing may rerun
  return remember({'ok'})
end
local reply = {'ok'}
for _, s in ipairs(again) do
  run.requeue_step(s.step, s.id, s.queue)
  table.insert(reply, s.step)
end
return remember(reply)
