-- RQ's storage, written as the installed RQ's own code writes it: the one Lua code that names
-- RQ's keys (ezgraph/rq_compat.py is its Python side, and sets RQ_MAJOR, 2 or 3, ahead of every
-- script). tests/integration/test_rq_contract.py compares what these functions write with what
-- RQ writes for the same job.
local rq = {}
function rq.job_key(id) return RQ_PREFIX .. 'job:' .. id end
function rq.results_key(id) return RQ_PREFIX .. 'results:' .. id end
function rq.queue_key(queue) return RQ_PREFIX .. 'queue:' .. queue end
function rq.worker_key(worker) return RQ_PREFIX .. 'worker:' .. worker end
-- A registry of `queue`: 'wip' (started), 'finished', 'failed', 'canceled', 'scheduled'.
function rq.registry_key(kind, queue) return RQ_PREFIX .. kind .. ':' .. queue end
local function execution_key(member) return RQ_PREFIX .. 'execution:' .. member end
local function executions_key(id) return RQ_PREFIX .. 'executions:' .. id end
-- RQ 3: the executions a worker runs (members `<job_id>:<execution_id>`), where RQ 3 reads
-- what a worker is busy with (RQ 2 reads `current_job` in the worker's hash).
local function worker_executions_key(worker) return rq.worker_key(worker) .. ':executions' end

-- Put job `id` in `queue` (at the back, or at the front); a new queue is listed for rq info.
function rq.push(queue, id, at_front)
  local length = redis.call(at_front and 'LPUSH' or 'RPUSH', rq.queue_key(queue), id)
  if length == 1 then redis.call('SADD', RQ_PREFIX .. 'queues', rq.queue_key(queue)) end
end

-- Create job `id` from `fields` (a list of hash field names and values) and queue it, unless
-- its id exists (the atomic create that makes a step's job once-only). Returns whether it was
-- created.
function rq.create_job(id, queue, fields)
  local job_key = rq.job_key(id)
  if redis.call('EXISTS', job_key) == 1 then return false end
  redis.call('HSET', job_key, unpack(fields))
  rq.push(queue, id)
  return true
end

function rq.job_status(id) return redis.call('HGET', rq.job_key(id), 'status') end

-- Start job `id` for `worker` (execution `execution`, which expires after `ttl` seconds without a
-- heartbeat), as a worker's prepare_job_execution and Execution.create do. Its hash loses any
-- TTL (a finished job requeued keeps its result_ttl until then), as RQ's worker (RQ 3) or
-- Job.perform (RQ 2) does.
function rq.start_job(id, queue, worker, execution, ttl)
  local job_key = rq.job_key(id)
  redis.call('HSET', job_key, 'status', 'started', 'started_at', NOW_ISO,
    'worker_name', worker, 'last_heartbeat', NOW_ISO)
  redis.call('PERSIST', job_key)
  local member = id .. ':' .. execution
  redis.call('ZADD', rq.registry_key('wip', queue), NOW + ttl, member)
  local exec_key = execution_key(member)
  redis.call('HSET', exec_key, 'id', execution, 'created_at', NOW, 'last_heartbeat', NOW,
    'worker_name', worker)
  if RQ_MAJOR >= 3 then redis.call('HSET', exec_key, 'job_id', id) end
  redis.call('EXPIRE', exec_key, ttl)
  redis.call('ZADD', executions_key(id), NOW + ttl + 60, execution)
  redis.call('EXPIRE', executions_key(id), ttl + 60)
  if RQ_MAJOR >= 3 then
    redis.call('SADD', worker_executions_key(worker), member)
    redis.call('EXPIRE', worker_executions_key(worker), ttl + 60)
  end
end

-- End execution `member` (`<id>:<execution>`) of job `id` run by `worker`, as Execution.delete
-- does: out of the started registry, the job's executions and (RQ 3) the worker's.
local function end_execution(id, queue, member, worker)
  redis.call('ZREM', rq.registry_key('wip', queue), member)
  redis.call('DEL', execution_key(member))
  redis.call('ZREM', executions_key(id), string.sub(member, #id + 2))
  if RQ_MAJOR >= 3 and worker then redis.call('SREM', worker_executions_key(worker), member) end
end

-- Finish job `id` that succeeded, as handle_job_success does: its result (RQ's pickle, base64,
-- or '' for none) in the results stream, out of the started registry, into the finished one,
-- kept `result_ttl` seconds (0: deleted, -1: for ever).
function rq.finish_job(id, queue, worker, execution, execution_started, result_ttl, value)
  local job_key, results_key = rq.job_key(id), rq.results_key(id)
  if redis.call('EXISTS', job_key) == 0 or result_ttl == 0 then
    -- Gone (it expired with its run, which is in SQL: nothing is recreated), or to be deleted.
    end_execution(id, queue, id .. ':' .. execution, worker)
    redis.call('DEL', job_key)
    return
  end
  redis.call('HSET', job_key, 'status', 'finished', 'ended_at', NOW_ISO, 'last_heartbeat', NOW_ISO)
  local entry = {'type', 1, 'worker_name', worker, 'execution_id', execution,
    'execution_started_at', execution_started, 'execution_ended_at', NOW}
  if value ~= '' then
    table.insert(entry, 'return_value')
    table.insert(entry, value)
  end
  redis.call('XADD', results_key, 'MAXLEN', 10, '*', unpack(entry))
  end_execution(id, queue, id .. ':' .. execution, worker)
  if result_ttl > 0 then
    redis.call('EXPIRE', job_key, result_ttl)
    redis.call('EXPIRE', results_key, result_ttl)
    redis.call('ZADD', rq.registry_key('finished', queue), NOW + result_ttl, id)
  else
    redis.call('ZADD', rq.registry_key('finished', queue), '+inf', id)
  end
end

-- Let every key of job `id` expire within `ttl` seconds (its run is in SQL): its hash, its
-- results stream, and its entries in the registries that keep ended jobs (scored by their
-- expiry, as RQ scores them; a registry's cleanup drops the entries whose time has passed).
-- A shorter expiry already set is kept for the entries.
function rq.expire_job(id, queue, ttl)
  redis.call('EXPIRE', rq.job_key(id), ttl)
  redis.call('EXPIRE', rq.results_key(id), ttl)
  for _, kind in ipairs({'finished', 'failed', 'canceled'}) do
    redis.call('ZADD', rq.registry_key(kind, queue), 'XX', 'LT', NOW + ttl, id)
  end
end

-- Keep job `id` (a step of a retried run, queued again) until it runs again.
function rq.keep_job(id) redis.call('PERSIST', rq.job_key(id)) end

-- Drop every execution of job `id` (its started-registry entries, execution hashes and, RQ 3,
-- its workers' executions).
function rq.forget_executions(id, queue)
  local prefix = id .. ':'
  for _, member in ipairs(redis.call('ZRANGE', rq.registry_key('wip', queue), 0, -1)) do
    if string.sub(member, 1, #prefix) == prefix then
      local worker = RQ_MAJOR >= 3 and (redis.call('HGET', execution_key(member), 'worker_name')
        or redis.call('HGET', rq.job_key(id), 'worker_name'))
      end_execution(id, queue, member, worker)
    end
  end
end

-- Queue job `id` again, as FailedJobRegistry.requeue does: out of its registries and
-- executions, started_at and ended_at cleared, no exc_info, enqueued now; at the front (a job
-- recovered from a dead worker was taken first) or at the back (a retried run's step).
function rq.requeue(id, queue, at_front)
  rq.forget_executions(id, queue)
  for _, kind in ipairs({'failed', 'canceled', 'finished', 'scheduled'}) do
    redis.call('ZREM', rq.registry_key(kind, queue), id)
  end
  redis.call('LREM', rq.queue_key(queue) .. ':intermediate', 0, id)
  local job_key = rq.job_key(id)
  redis.call('HSET', job_key, 'status', 'queued', 'started_at', '', 'ended_at', '',
    'enqueued_at', NOW_ISO)
  redis.call('HDEL', job_key, 'exc_info', 'worker_name')
  -- A job canceled and left in its queue is still listed there: pushed again, it would run twice.
  if redis.call('HDEL', job_key, JOB_FIELD.left) == 0 then rq.push(queue, id, at_front) end
end

-- Cancel job `id` where it waits: its queue ('queued') or the scheduled registry (a retry's
-- delay), as Job.cancel does. Returns whether it was waiting.
function rq.cancel_waiting(id, queue, status)
  if status == 'queued' then
    -- LREM reads the list whole: from a long queue (a wide map's) the id is left, marked, and
    -- the worker that takes it drops it (finish_and_claim.lua; a stock one, run_step).
    local queue_key = rq.queue_key(queue)
    if redis.call('LLEN', queue_key) <= TUNING.lrem_max then
      redis.call('LREM', queue_key, 0, id)
    else
      redis.call('HSET', rq.job_key(id), JOB_FIELD.left, 1)
    end
  elseif status == 'scheduled' then
    redis.call('ZREM', rq.registry_key('scheduled', queue), id)
  else
    return false
  end
  redis.call('HSET', rq.job_key(id), 'status', 'canceled', 'ended_at', NOW_ISO)
  redis.call('ZADD', rq.registry_key('canceled', queue), NOW + TUNING.canceled_ttl, id)
  return true
end

-- Fail job `id`, whose worker died running it, as the failed registry holds such a job.
function rq.fail_lost(id, queue)
  redis.call('HSET', rq.job_key(id), 'status', 'failed', 'ended_at', NOW_ISO)
  redis.call('ZADD', rq.registry_key('failed', queue), NOW + TUNING.failed_ttl, id)
end

-- Move the retries of `queue` whose delay has passed back to it, as RQ's scheduler does.
-- Returns the ids moved.
function rq.enqueue_due(queue)
  local registry = rq.registry_key('scheduled', queue)
  local moved = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', registry, '-inf', NOW)) do
    redis.call('ZREM', registry, id)
    if redis.call('EXISTS', rq.job_key(id)) == 1 then
      redis.call('HSET', rq.job_key(id), 'status', 'queued', 'enqueued_at', NOW_ISO)
      rq.push(queue, id)
      table.insert(moved, id)
    end
  end
  return moved
end

-- The worker hash, as RQ's worker writes it (RQ 3 reads the current job from the worker's
-- executions, which start_job writes, and writes no `current_job`).
function rq.worker_busy(worker, id)
  if RQ_MAJOR >= 3 then
    redis.call('HSET', rq.worker_key(worker), 'state', 'busy')
  else
    redis.call('HSET', rq.worker_key(worker), 'state', 'busy', 'current_job', id)
  end
end
function rq.worker_idle(worker)
  redis.call('HSET', rq.worker_key(worker), 'state', 'idle')
  if RQ_MAJOR < 3 then
    redis.call('HDEL', rq.worker_key(worker), 'current_job')  -- as RQ: '' would read as a job
  end
end
function rq.worker_succeeded(worker, count)
  redis.call('HINCRBY', rq.worker_key(worker), 'successful_job_count', count)
end
-- Forget a dead worker, as RQ's clean_worker_registry (and RQ 3's register_death) does.
function rq.remove_worker(worker)
  local worker_key = rq.worker_key(worker)
  redis.call('SREM', RQ_PREFIX .. 'workers', worker_key)
  redis.call('DEL', worker_key)
  if RQ_MAJOR >= 3 then redis.call('DEL', worker_executions_key(worker)) end
  local queue_prefix = #(RQ_PREFIX .. 'queue:')
  for _, queue_key in ipairs(redis.call('SMEMBERS', RQ_PREFIX .. 'queues')) do
    redis.call('SREM', RQ_PREFIX .. 'workers:' .. string.sub(queue_key, queue_prefix + 1), worker_key)
  end
end
