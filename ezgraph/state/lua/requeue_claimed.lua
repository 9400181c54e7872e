-- Give back every job a dead ezgraph worker had claimed: each goes to the front of its queue
-- as 'queued' (the step runs again: at-least-once), and the worker's traces are removed.
-- Each job counts the workers that died holding it (its 'ezgraph_lost' field); a job that has
-- been held by a dead worker is then claimed alone (fast.lua), so that later deaths count
-- against the one job that may cause them. A job held by more than MAX dead workers is not
-- given back: its RQ job is failed, and the caller fails its step.
-- ARGV after the prelude (ARGV[2] unused): 5 worker name, 6 MAX for a dead worker (none for
-- a live worker giving back its own claims, stopping or after an outage: nothing is counted).
-- Returns {requeued job ids, failed job ids}.
local W, MAX = ARGV[5], tonumber(ARGV[6])
local claimed_key = P .. ':claimed:' .. W
local requeued, failed = {}, {}
local id = redis.call('RPOP', claimed_key)
while id do
  local job_key = 'rq:job:' .. id
  local status = redis.call('HGET', job_key, 'status')
  if status == 'started' or status == 'queued' then
    local queue = redis.call('HGET', job_key, 'origin')
    for _, member in ipairs(redis.call('ZRANGE', 'rq:wip:' .. queue, 0, -1)) do
      if string.sub(member, 1, string.len(id) + 1) == id .. ':' then
        redis.call('ZREM', 'rq:wip:' .. queue, member)
        redis.call('DEL', 'rq:execution:' .. member)
        redis.call('ZREM', 'rq:executions:' .. id, string.sub(member, string.len(id) + 2))
      end
    end
    redis.call('HDEL', job_key, 'worker_name')
    if MAX and redis.call('HINCRBY', job_key, 'ezgraph_lost', 1) > MAX then
      redis.call('HSET', job_key, 'status', 'failed', 'ended_at', NOW_ISO)
      redis.call('ZADD', 'rq:failed:' .. queue, NOW + 31536000, id)  -- RQ's failure_ttl: 1 year
      table.insert(failed, id)
    elseif status == 'queued' and redis.call('LPOS', 'rq:queue:' .. queue, id) then
      -- Back in its queue already (the watchdog, or RQ's retry, put it there): not twice.
    else
      redis.call('HSET', job_key, 'status', 'queued')
      redis.call('LPUSH', 'rq:queue:' .. queue, id)
      ring(queue)
      table.insert(requeued, id)
    end
  end
  id = redis.call('RPOP', claimed_key)
end
redis.call('SREM', P .. ':workers', W)
redis.call('SREM', 'rq:workers', 'rq:worker:' .. W)
redis.call('DEL', 'rq:worker:' .. W)
for _, queue_key in ipairs(redis.call('SMEMBERS', 'rq:queues')) do
  redis.call('SREM', 'rq:workers:' .. string.sub(queue_key, 10), 'rq:worker:' .. W)
end
return {requeued, failed}
