-- Create a run and its first step, unless the run id exists.
-- ARGV: the head, a submission (FIELDS.submission), then the start step's planned job.
-- `joins` is JSON {join: arrivals expected} for joins some of whose predecessors cannot run
-- from this start. Returns 1 when created, 0 when the run id exists (sent again after a
-- timeout, the first call's reply).
local kept = recall()
if kept then return kept end
local s, i = read_record(FIELDS.submission, FIRST)
local jobs = run.read_jobs(i)
run.bind(s.run_id)
if redis.call('EXISTS', run.key) == 1 then return 0 end
redis.call('HSET', run.key, 'status', 'queued', 'start', s.start, 'package', s.package,
  'graph', s.graph, 'version', s.version, 'input', s.input, 'created_at', NOW_ISO, 'pending', 0)
for join, left in pairs(cjson.decode(s.joins)) do
  redis.call('HSET', run.join, 'left:' .. join, left)
end
redis.call('ZADD', key.live_runs, NOW, run.id)
run.create_job(s.start, jobs[s.start])
run.apply_pending()
return remember(1)
