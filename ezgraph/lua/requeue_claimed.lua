-- Give back every job a dead ezgraph worker had claimed: each goes to the front of its queue
-- as 'queued' (the step runs again: at-least-once), and the worker's traces are removed.
-- ARGV after the prelude (ARGV[2] unused): 5 dead worker name. Returns the requeued job ids.
local W = ARGV[5]
local claimed_key = P .. ':claimed:' .. W
local requeued = {}
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
    redis.call('HSET', job_key, 'status', 'queued')
    redis.call('HDEL', job_key, 'worker_name')
    redis.call('LPUSH', 'rq:queue:' .. queue, id)
    ring(queue)
    table.insert(requeued, id)
  end
  id = redis.call('RPOP', claimed_key)
end
redis.call('SREM', P .. ':workers', W)
redis.call('SREM', 'rq:workers', 'rq:worker:' .. W)
redis.call('DEL', 'rq:worker:' .. W)
for _, queue_key in ipairs(redis.call('SMEMBERS', 'rq:queues')) do
  redis.call('SREM', 'rq:workers:' .. string.sub(queue_key, 10), 'rq:worker:' .. W)
end
return requeued
