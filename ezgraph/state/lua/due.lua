-- Move retries whose delay has passed from RQ's scheduled registries back to their queues
-- (what RQ's scheduler does, atomically). ARGV after the prelude: 5.. queue names.
-- Returns how many jobs were moved.
local moved = 0
for q = 5, #ARGV do
  local queue = ARGV[q]
  local registry = 'rq:scheduled:' .. queue
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', registry, '-inf', NOW)) do
    redis.call('ZREM', registry, id)
    if redis.call('EXISTS', 'rq:job:' .. id) == 1 then
      redis.call('HSET', 'rq:job:' .. id, 'status', 'queued', 'enqueued_at', NOW_ISO)
      redis.call('RPUSH', 'rq:queue:' .. queue, id)
      ring(queue)
      moved = moved + 1
    end
  end
end
return moved
