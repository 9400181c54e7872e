-- The fast worker's one call: finish the jobs it ran as RQ would, record their steps
-- (complete_step) and create their ready successors, then claim the next jobs into this
-- worker's claimed list (never a bare pop), atomically.
-- ARGV after the prelude (ARGV[2] unused): 5 worker name, 6 heartbeat TTL of claimed jobs,
-- 7 execution id prefix, 8 how many jobs to claim at most, 9 how long an empty claim marks the
-- queues idle (ms, see ring in common.lua), 10 number of queues Q, 11.. queues,
-- then F, the number of finished jobs, and per finished job: job id, queue, result_ttl,
-- pickled return value (base64) or '', execution id, execution start (epoch), run id,
-- number C of complete_step arguments, those C arguments.
-- Returns {{completion reply per finished job}, claimed job fields...} where each claimed job
-- is 8 fields: id, queue, data, timeout, retries_left, meta, result_ttl, and for a job that
-- gathers its input (a join) what read_gathered read for it, else false.
local W = ARGV[5]
local CLAIM_TTL, EXEC_PREFIX, MAX_CLAIMS = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local IDLE_MARK_MS = tonumber(ARGV[9])
local nqueues = tonumber(ARGV[10])
local claimed_key = P .. ':claimed:' .. W
local worker_key = 'rq:worker:' .. W
local completions = {}
hold_bells()

local i = 11 + nqueues
local finished = tonumber(ARGV[i]); i = i + 1
for _ = 1, finished do
  local id, queue, ttl, value = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local exec, exec_started, run, nargs = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], tonumber(ARGV[i + 7])
  local job_key = 'rq:job:' .. id
  redis.call('HSET', job_key, 'status', 'finished', 'ended_at', NOW_ISO, 'last_heartbeat', NOW_ISO)
  if value ~= '' then
    redis.call('XADD', 'rq:results:' .. id, 'MAXLEN', 10, '*', 'type', 1, 'worker_name', W,
      'execution_id', exec, 'execution_started_at', exec_started, 'execution_ended_at', NOW,
      'return_value', value)
  else
    redis.call('XADD', 'rq:results:' .. id, 'MAXLEN', 10, '*', 'type', 1, 'worker_name', W,
      'execution_id', exec, 'execution_started_at', exec_started, 'execution_ended_at', NOW)
  end
  redis.call('ZREM', 'rq:wip:' .. queue, id .. ':' .. exec)
  redis.call('DEL', 'rq:execution:' .. id .. ':' .. exec)
  redis.call('ZREM', 'rq:executions:' .. id, exec)
  if ttl > 0 then
    redis.call('EXPIRE', job_key, ttl)
    redis.call('EXPIRE', 'rq:results:' .. id, ttl)
    redis.call('ZADD', 'rq:finished:' .. queue, NOW + ttl, id)
  elseif ttl < 0 then
    redis.call('ZADD', 'rq:finished:' .. queue, '+inf', id)
  else
    redis.call('DEL', job_key)
  end
  redis.call('LREM', claimed_key, 1, id)
  if run ~= '' then
    bind_run(run)
    table.insert(completions, complete_step(i + 8))
  else
    table.insert(completions, {})
  end
  i = i + 8 + nargs
end
if finished > 0 then
  redis.call('HINCRBY', worker_key, 'successful_job_count', finished)
end

local reply = {completions}
local count = 0
local alone = false  -- a job a dead worker held is claimed alone (see requeue_claimed.lua)
for q = 1, nqueues do
  local queue = ARGV[10 + q]
  while count < MAX_CLAIMS and not alone do
    local id = redis.call('LMOVE', 'rq:queue:' .. queue, claimed_key, 'LEFT', 'RIGHT')
    if not id then break end
    local job_key = 'rq:job:' .. id
    local head = redis.call('HMGET', job_key, 'status', 'ezgraph_lost')  -- no status: no job
    if head[2] and count > 0 then
      redis.call('LMOVE', claimed_key, 'rq:queue:' .. queue, 'RIGHT', 'LEFT')  -- next claim's
      alone = true
    elseif head[1] then
      alone = head[2] ~= false
      count = count + 1
      local exec = EXEC_PREFIX .. count
      redis.call('HSET', job_key, 'status', 'started', 'started_at', NOW_ISO,
        'worker_name', W, 'last_heartbeat', NOW_ISO)
      redis.call('ZADD', 'rq:wip:' .. queue, NOW + CLAIM_TTL, id .. ':' .. exec)
      redis.call('HSET', 'rq:execution:' .. id .. ':' .. exec, 'id', exec, 'created_at', NOW,
        'last_heartbeat', NOW, 'worker_name', W)
      redis.call('EXPIRE', 'rq:execution:' .. id .. ':' .. exec, CLAIM_TTL)
      redis.call('ZADD', 'rq:executions:' .. id, NOW + CLAIM_TTL, exec)
      local fields = redis.call('HMGET', job_key, 'data', 'timeout', 'retries_left', 'meta',
        'result_ttl', 'ezgraph_gather')
      table.insert(reply, id)
      table.insert(reply, queue)
      for f = 1, 5 do table.insert(reply, fields[f] or false) end
      table.insert(reply, fields[6] and read_gathered(fields[6]) or false)
      if count == 1 then redis.call('HSET', worker_key, 'state', 'busy', 'current_job', id) end
    else
      redis.call('LREM', claimed_key, 1, id)  -- its hash expired while queued: RQ skips it too
    end
  end
  if alone then break end
end
ring_held()
if count == 0 then
  -- Nothing to claim: this worker now waits on its queues' bells; ring() rings for them only
  -- while this mark lives (longer than the worker's wait, renewed at its next empty claim).
  for q = 1, nqueues do
    redis.call('SET', P .. ':idle:' .. ARGV[10 + q], 1, 'PX', IDLE_MARK_MS)
  end
  if finished > 0 then
    redis.call('HSET', worker_key, 'state', 'idle')
    redis.call('HDEL', worker_key, 'current_job')  -- as RQ: an empty id would read as a job
  end
end
return reply
