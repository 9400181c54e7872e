-- Retry a failed run that has ended: set it running again and requeue the RQ job of each step
-- to run again: failed and canceled steps, and steps that finished after the run had failed
-- (marked inflight by fail.lua: their successors were never created; a sink, having none,
-- stays finished). A job's kwargs hold its step's input (the state, or gather=True for a join,
-- which gathers it again), so requeueing the same job runs the step on the same input.
-- No ARGV after the prelude.
-- Returns {'ok', requeued steps...}, or why nothing changed: {'gone'}, {'status', run status},
-- {'running'} (steps still running), {'job', step, job status or 'expired'}, {'empty'}.
if redis.call('EXISTS', run_key) == 0 then return {'gone'} end
local status = redis.call('HGET', run_key, 'status')
if status ~= 'failed' then return {'status', status} end
if redis.call('HEXISTS', run_key, 'ended_at') == 0 then return {'running'} end
local graph = cjson.decode(redis.call('HGET', run_key, 'graph'))
local REQUEUEABLE = {failed = true, canceled = true, stopped = true, finished = true}
local again = {}
local jobs = redis.call('HGETALL', jobs_key)
local prefix_len = string.len(RUN) + 2
for i = 1, #jobs, 2 do
  local id, queue = jobs[i], jobs[i + 1]
  local step = string.sub(id, prefix_len)
  local step_status = redis.call('HGET', steps_key, step .. '.status')
  local rerun = step_status == 'failed' or step_status == 'canceled'
  if step_status == 'finished' and redis.call('HEXISTS', steps_key, step .. '.inflight') == 1 then
    local successors = graph.succ[step]  -- nil for a mapped instance, which must resolve its node
    rerun = successors == nil or #successors > 0
  end
  if rerun then
    local job_status = redis.call('HGET', 'rq:job:' .. id, 'status')
    if not REQUEUEABLE[job_status] then return {'job', step, job_status or 'expired'} end
    table.insert(again, {step = step, id = id, queue = queue})
  end
end
if #again == 0 then return {'empty'} end

redis.call('HSET', run_key, 'status', 'running')
redis.call('HDEL', run_key, 'error', 'ended_at')
redis.call('ZADD', P .. ':runs:live', NOW, RUN)
redis.call('ZREM', P .. ':runs:unsaved', RUN)
-- The run was written to SQL, so its keys were set to expire (EZGRAPH_RUN_TTL): keep them.
for _, key in ipairs({run_key, steps_key, state_key, join_key, jobs_key}) do
  redis.call('PERSIST', key)
end
local reply = {'ok'}
for _, s in ipairs(again) do
  -- As RQ's FailedJobRegistry.requeue: out of its registry; started_at, ended_at and exc_info
  -- cleared (RQ stores a compressed ''; no field reads the same); enqueued_at now; queued at
  -- the back of its queue. retries_left stays as it is, as with RQ.
  local key = 'rq:job:' .. s.id
  for _, registry in ipairs({'failed', 'canceled', 'finished'}) do
    redis.call('ZREM', 'rq:' .. registry .. ':' .. s.queue, s.id)
  end
  redis.call('HSET', key, 'status', 'queued', 'started_at', '', 'ended_at', '',
    'enqueued_at', NOW_ISO)
  redis.call('HDEL', key, 'exc_info', 'ezgraph_lost')  -- a retry starts the count of deaths anew
  push_job(s.queue, s.id)
  redis.call('HSET', steps_key, s.step .. '.status', 'queued')
  redis.call('HDEL', steps_key, s.step .. '.error', s.step .. '.ended_at', s.step .. '.inflight',
    s.step .. '.recovered')
  redis.call('HINCRBY', run_key, 'pending', 1)
  table.insert(reply, s.step)
end
return reply
