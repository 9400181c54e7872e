-- Create a run and its first step. After the prelude's ARGV: 5 start node, 6 package,
-- 7 graph JSON, 8 input JSON, 9 JSON {join: arrivals expected} for joins some of whose
-- predecessors cannot run from this start, then the prebuilt start job.
-- Returns 0 when the run id already exists.
if redis.call('EXISTS', run_key) == 1 then return 0 end
local jobs = read_jobs(10)
redis.call('HSET', run_key, 'status', 'queued', 'start', ARGV[5], 'package', ARGV[6],
  'graph', ARGV[7], 'input', ARGV[8], 'created_at', NOW_ISO, 'pending', 0)
for join, left in pairs(cjson.decode(ARGV[9])) do
  redis.call('HSET', join_key, 'left:' .. join, left)
end
redis.call('ZADD', P .. ':runs:live', NOW, RUN)
create_job(ARGV[5], jobs[ARGV[5]])
apply_pending()
return 1
