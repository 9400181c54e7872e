-- The fast worker's one call per step: finish the previous job as RQ would, record its step
-- (complete_step), and claim the next job into this worker's claimed list, atomically.
-- ARGV after the prelude (ARGV[2] is the previous step's run id, or '' when there is none):
--  5 worker name, 6 previous job id or '', 7 its queue, 8 its result_ttl, 9 its pickled return
--  value (base64) or '', 10 its execution id, 11 its execution start (epoch), 12 heartbeat TTL
--  of the claimed job, 13 new execution id, 14 number of queues Q, 15.. the queues, then (when
--  ARGV[2] is not '') the complete_step arguments.
-- Returns {completion reply or {}, claimed job id or false, its queue, data, timeout,
--          retries_left, meta, result_ttl}.
local W, PREV, PREV_Q = ARGV[5], ARGV[6], ARGV[7]
local claimed_key = P .. ':claimed:' .. W
local worker_key = 'rq:worker:' .. W
local nqueues = tonumber(ARGV[14])
local completion = {}

if PREV ~= '' then
  local ttl = tonumber(ARGV[8])
  local job_key = 'rq:job:' .. PREV
  local exec = ARGV[10]
  redis.call('HSET', job_key, 'status', 'finished', 'ended_at', NOW_ISO, 'last_heartbeat', NOW_ISO)
  local result = {'type', 1, 'worker_name', W, 'execution_id', exec,
    'execution_started_at', ARGV[11], 'execution_ended_at', NOW}
  if ARGV[9] ~= '' then table.insert(result, 'return_value'); table.insert(result, ARGV[9]) end
  redis.call('XADD', 'rq:results:' .. PREV, 'MAXLEN', 10, '*', unpack(result))
  redis.call('ZREM', 'rq:wip:' .. PREV_Q, PREV .. ':' .. exec)
  redis.call('DEL', 'rq:execution:' .. PREV .. ':' .. exec)
  redis.call('ZREM', 'rq:executions:' .. PREV, exec)
  if ttl > 0 then
    redis.call('EXPIRE', job_key, ttl)
    redis.call('EXPIRE', 'rq:results:' .. PREV, ttl)
    redis.call('ZADD', 'rq:finished:' .. PREV_Q, NOW + ttl, PREV)
  elseif ttl < 0 then
    redis.call('ZADD', 'rq:finished:' .. PREV_Q, '+inf', PREV)
  else
    redis.call('DEL', job_key)
  end
  redis.call('LREM', claimed_key, 1, PREV)
  redis.call('HINCRBY', worker_key, 'successful_job_count', 1)
  redis.call('HSET', worker_key, 'state', 'idle', 'current_job', '')
  if RUN ~= '' then completion = complete_step(15 + nqueues) end
end

for q = 1, nqueues do
  local queue = ARGV[14 + q]
  local id = redis.call('LMOVE', 'rq:queue:' .. queue, claimed_key, 'LEFT', 'RIGHT')
  while id do
    local job_key = 'rq:job:' .. id
    if redis.call('EXISTS', job_key) == 1 then
      local ttl = tonumber(ARGV[12])
      local exec = ARGV[13]
      redis.call('HSET', job_key, 'status', 'started', 'started_at', NOW_ISO,
        'worker_name', W, 'last_heartbeat', NOW_ISO)
      redis.call('ZADD', 'rq:wip:' .. queue, NOW + ttl, id .. ':' .. exec)
      redis.call('HSET', 'rq:execution:' .. id .. ':' .. exec, 'id', exec, 'created_at', NOW,
        'last_heartbeat', NOW, 'worker_name', W)
      redis.call('EXPIRE', 'rq:execution:' .. id .. ':' .. exec, ttl)
      redis.call('ZADD', 'rq:executions:' .. id, NOW + ttl, exec)
      redis.call('HSET', worker_key, 'state', 'busy', 'current_job', id)
      local fields = redis.call('HMGET', job_key, 'data', 'timeout', 'retries_left', 'meta',
        'result_ttl')
      return {completion, id, queue, fields[1], fields[2], fields[3], fields[4], fields[5]}
    end
    -- A job whose hash expired while queued: RQ skips it too.
    redis.call('LREM', claimed_key, 1, id)
    id = redis.call('LMOVE', 'rq:queue:' .. queue, claimed_key, 'LEFT', 'RIGHT')
  end
end
return {completion, false}
