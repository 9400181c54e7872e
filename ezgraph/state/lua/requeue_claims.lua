-- Give back every job an ezgraph worker had claimed: each goes to the front of its queue (the
-- step runs again: at-least-once) and the worker's traces are removed. For a dead worker, each
-- job counts the workers that died holding it (JOB_FIELD.deaths), and one held by more than
-- `max_deaths` dead workers is not given back: its RQ job fails, and the caller fails its step.
-- ARGV: the head, FIELDS.requeue_claims (max_deaths '' for a live worker giving back its own
-- claims as it stops or after an outage: nothing is counted).
-- Returns {requeued job ids, failed job ids}.
local kept = recall()
if kept then return kept end
local request = read_record(FIELDS.requeue_claims, FIRST)
local max_deaths = tonumber(request.max_deaths)
local claimed_key = key.claimed(request.worker)
local requeued, failed = {}, {}
local id = redis.call('RPOP', claimed_key)
while id do
  local status = rq.job_status(id)
  if status == 'started' or status == 'queued' then
    local queue = redis.call('HGET', rq.job_key(id), 'origin')
    rq.forget_executions(id, queue)
    if max_deaths and redis.call('HINCRBY', rq.job_key(id), JOB_FIELD.deaths, 1) > max_deaths then
      rq.fail_lost(id, queue)
      table.insert(failed, id)
    elseif status == 'queued' and redis.call('LPOS', rq.queue_key(queue), id) then
      -- Back in its queue already (the watchdog, or RQ's retry, put it there): not twice.
    else
      rq.requeue(id, queue, true)
      wake.queue(queue)
      table.insert(requeued, id)
    end
  end
  id = redis.call('RPOP', claimed_key)
end
redis.call('SREM', key.workers, request.worker)
rq.remove_worker(request.worker)
return remember({requeued, failed})
