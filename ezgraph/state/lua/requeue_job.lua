-- Put one step job back at the front of its queue, when it is still in the state the caller
-- saw (so a worker that finished or failed it meanwhile wins): its run still waits for the
-- step, and its RQ job has the expected status. ARGV after the prelude (ARGV[2] is the run
-- id): 5 job id, 6 queue, 7 expected RQ status ('started', 'queued', or 'failed' for a job
-- whose work-horse died).
-- Returns 1 when requeued.
local id, queue, expected = ARGV[5], ARGV[6], ARGV[7]
local job_key = 'rq:job:' .. id
local step = string.sub(id, string.len(RUN) + 2)
if redis.call('HGET', steps_key, step .. '.status') ~= 'queued' then return 0 end
if redis.call('HGET', job_key, 'status') ~= expected then return 0 end
if expected == 'queued' and redis.call('LPOS', 'rq:queue:' .. queue, id) then return 0 end
for _, member in ipairs(redis.call('ZRANGE', 'rq:wip:' .. queue, 0, -1)) do
  if string.sub(member, 1, string.len(id) + 1) == id .. ':' then
    redis.call('ZREM', 'rq:wip:' .. queue, member)
    redis.call('DEL', 'rq:execution:' .. member)
  end
end
redis.call('LREM', 'rq:queue:' .. queue .. ':intermediate', 0, id)
redis.call('ZREM', 'rq:failed:' .. queue, id)
redis.call('HDEL', job_key, 'exc_info', 'ended_at')
redis.call('HSET', job_key, 'status', 'queued')
redis.call('HDEL', job_key, 'worker_name', 'started_at')
redis.call('LPUSH', 'rq:queue:' .. queue, id)
ring(queue)
redis.call('HINCRBY', steps_key, step .. '.recovered', 1)
return 1
