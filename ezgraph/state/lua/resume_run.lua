-- Retry a failed run that has ended: set it running again and requeue the RQ job of each step
-- to run again: failed and canceled steps, and steps that finished after the run had stopped
-- (marked stopped_while_running: their successors were never created; a sink, having none,
-- stays finished). A job's kwargs hold its step's input (the state, or a join's spec, read
-- again), so requeueing the same job runs the step on the same input.
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
local graph = cjson.decode(redis.call('HGET', run.key, 'graph'))
local REQUEUEABLE = {failed = true, canceled = true, stopped = true, finished = true}
local again = {}
local jobs = redis.call('HGETALL', run.jobs)
local prefix_len = #run.id + 2
for n = 1, #jobs, 2 do
  local id, queue = jobs[n], jobs[n + 1]
  local step = string.sub(id, prefix_len)
  local step_status = run.step_status(step)
  local rerun = step_status == 'failed' or step_status == 'canceled'
  if step_status == 'finished'
      and redis.call('HEXISTS', run.steps, step .. '.stopped_while_running') == 1 then
    local successors = graph.succ[step]  -- nil for a mapped instance, which must resolve its node
    rerun = successors == nil or #successors > 0
  end
  if rerun then
    local job_status = rq.job_status(id)
    if not REQUEUEABLE[job_status] then return {'job', step, job_status or 'expired'} end
    table.insert(again, {step = step, id = id, queue = queue})
  end
end
if #again == 0 then return {'empty'} end

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
local reply = {'ok'}
for _, s in ipairs(again) do
  -- retries_left stays as it is, as with RQ; a retry counts its worker deaths anew.
  rq.requeue(s.id, s.queue, false)
  rq.keep_job(s.id)  -- set to expire with its run: it must wait in its queue
  redis.call('HDEL', rq.job_key(s.id), JOB_FIELD.deaths)
  wake.queue(s.queue)
  redis.call('HSET', run.steps, s.step .. '.status', 'queued')
  redis.call('HDEL', run.steps, s.step .. '.error', s.step .. '.ended_at',
    s.step .. '.stopped_while_running', s.step .. '.recovered')
  redis.call('HINCRBY', run.key, 'pending', 1)
  table.insert(reply, s.step)
end
return remember(reply)
