-- Put one lost step's job back at the front of its queue, if it is still as the watchdog saw
-- it (so that a worker that finished or failed it meanwhile wins): its run still waits for the
-- step, and its RQ job has the expected status ('started', 'queued', or 'failed' for a job
-- whose work-horse died). ARGV: the head, FIELDS.requeue_step. Returns 1 when requeued.
local request = read_record(FIELDS.requeue_step, FIRST)
run.bind(request.run_id)
local id, queue = request.job_id, request.queue
local step = string.sub(id, #run.id + 2)
if run.step_status(step) ~= 'queued' then return 0 end
if rq.job_status(id) ~= request.expected then return 0 end
if request.expected == 'queued' and redis.call('LPOS', rq.queue_key(queue), id) then return 0 end
rq.requeue(id, queue, true)
wake.queue(queue)
redis.call('HINCRBY', run.steps, step .. '.recovered', 1)
return 1
