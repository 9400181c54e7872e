-- Create the jobs of steps a graph walk found ready but had no prebuilt job for (rare: a join
-- made ready by a chain of skips). The walk reserved a pending slot for each; the create adds
-- another, so give one back. After the prelude's ARGV: the prebuilt jobs.
local jobs = read_jobs(5)
local created = 0
for step, job in pairs(jobs) do
  if redis.call('HGET', steps_key, step .. '.status') == 'ready' then
    if create_job(step, job) then created = created + 1 end
    pending_delta = pending_delta - 1
  end
end
apply_pending()
return created
