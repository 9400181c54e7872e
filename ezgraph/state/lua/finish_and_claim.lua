-- The ezgraph worker's one call: finish the jobs it ran as RQ would, record their steps
-- (run.complete) and create their ready successors, then claim the next jobs of its queues
-- into its claimed list (never a bare pop, so a dead worker's jobs can be given back).
-- ARGV: the head, a claim (FIELDS.claim), the queues (a list), then the finished jobs: a
-- count, and per job FIELDS.finished, followed by its completion (as complete_step reads it)
-- when it is an ezgraph step.
-- Returns {{outcome per finished job}, claimed jobs...}, each claimed job FIELDS.claimed
-- (its join_input: what run.read_join_input read for a join's job, else false); an outcome is
-- 'lost' for a job this worker no longer held. Sent again after a timeout, the first reply.
local kept = recall()
if kept then return kept end
local claim, i = read_record(FIELDS.claim, FIRST)
local queues
queues, i = read_list(i)
local worker = claim.worker
local claimed_key = key.claimed(worker)
local outcomes = {}
wake.hold()

local finished = tonumber(ARGV[i]); i = i + 1
local succeeded = 0
for _ = 1, finished do
  local job
  job, i = read_record(FIELDS.finished, i)
  local c
  if job.completion == '1' then
    c, i = read_record(FIELDS.completion, i)
    c.jobs, i = run.read_jobs(i)
    c.walk, i = run.read_walk(i)
  end
  -- A job this worker no longer holds (it was taken for dead, paused past its heartbeat, and
  -- its claims given back) is another worker's now: its end is dropped, not recorded twice.
  if redis.call('LREM', claimed_key, 1, job.job_id) == 0 then
    table.insert(outcomes, {'lost', 0})
  else
    local outcome = c and run.complete(c) or {}
    local result_ttl = tonumber(job.result_ttl)
    if outcome[1] == 'gone' or outcome[1] == 'duplicate' then
      result_ttl = run.job_ttl(c.run_id, result_ttl)  -- a stale run: it expires with its run
    end
    rq.finish_job(job.job_id, job.queue, worker, job.execution, job.execution_started,
      result_ttl, job.return_value)
    succeeded = succeeded + 1
    table.insert(outcomes, outcome)
  end
end
if succeeded > 0 then rq.worker_succeeded(worker, succeeded) end

-- Claim: a job that a dead worker held (its JOB_FIELD.deaths count, see requeue_claims.lua) is
-- claimed alone, so that a later death counts against the one job that may cause it.
local reply = {outcomes}
local count = 0
local alone = false
local max_claims, ttl = tonumber(claim.max_claims), tonumber(claim.claim_ttl)
local join_limit = tonumber(claim.max_join_input)
for _, queue in ipairs(queues) do
  while count < max_claims and not alone do
    local id = redis.call('LMOVE', rq.queue_key(queue), claimed_key, 'LEFT', 'RIGHT')
    if not id then break end
    local job_key = rq.job_key(id)
    local head = redis.call('HMGET', job_key, 'status', JOB_FIELD.deaths)  -- no status: no job
    if head[1] == 'canceled' then
      redis.call('LREM', claimed_key, 1, id)  -- canceled, and left in a long queue: dropped
      redis.call('HDEL', job_key, JOB_FIELD.left)
    elseif head[2] and count > 0 then
      redis.call('LMOVE', claimed_key, rq.queue_key(queue), 'RIGHT', 'LEFT')  -- the next claim's
      alone = true
    elseif head[1] then
      alone = head[2] ~= false
      count = count + 1
      local execution = claim.execution_prefix .. count
      rq.start_job(id, queue, worker, execution, ttl)
      local fields = redis.call('HMGET', job_key, 'data', 'timeout', 'retries_left', 'meta',
        'result_ttl', JOB_FIELD.join_input)
      write_record(reply, FIELDS.claimed, {job_id = id, queue = queue, data = fields[1],
        timeout = fields[2], retries_left = fields[3], meta = fields[4], result_ttl = fields[5],
        join_input = fields[6] and run.read_join_input(fields[6], join_limit) or false})
      if count == 1 then rq.worker_busy(worker, id) end
    else
      redis.call('LREM', claimed_key, 1, id)  -- its hash expired while queued: RQ skips it too
    end
  end
  if alone then break end
end
wake.release()
if count == 0 then
  -- Nothing to claim: this worker now waits on its queues' wake lists, which only receive
  -- wake-ups while this mark lives (longer than its wait; renewed at its next empty claim).
  for _, queue in ipairs(queues) do
    redis.call('SET', key.idle(queue), 1, 'PX', claim.idle_mark_ms)
  end
  if finished > 0 then rq.worker_idle(worker) end
end
return remember(reply)
