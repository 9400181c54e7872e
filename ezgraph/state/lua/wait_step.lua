-- A step's module returned Wait: if its signal is in the run's mailbox already, hand it back
-- (the caller completes the step with it, as any step completes); else record the step
-- waiting: it holds no worker and stays pending, so the run stays live. Either way the step is
-- its signal's waiter (one step per name and run). With a timeout, the watchdog looks at it
-- at its deadline (the waiting_steps set).
-- ARGV: the head, a wait (FIELDS.wait).
-- Returns {'signaled', data}, {'waiting'} (recorded, now or before), {'taken', step} (another
-- step waits for that name) or {'gone'} (no live run, or the step ended: nothing to record).
local kept = recall()
if kept then return kept end
local w = read_record(FIELDS.wait, FIRST)
run.bind(w.run_id)
local status = redis.call('HGET', run.key, 'status')
local step_status = run.step_status(w.step)
if (status ~= 'queued' and status ~= 'running') or TERMINAL[step_status] then
  return remember({'gone'})
end
if step_status == 'waiting' then return remember({'waiting'}) end  -- a rerun of a recorded wait
local waiter = redis.call('HGET', run.signals, 'waiter:' .. w.name)
if waiter and waiter ~= w.step then return remember({'taken', waiter}) end
redis.call('HSET', run.signals, 'waiter:' .. w.name, w.step)
local data = redis.call('HGET', run.signals, 'signal:' .. w.name)
if data then return remember({'signaled', data}) end
redis.call('HSET', run.steps, w.step .. '.status', 'waiting', w.step .. '.wait', w.name,
  w.step .. '.output', w.output, w.step .. '.resume', w.resume,
  w.step .. '.started_at', w.started_at, w.step .. '.worker', w.worker,
  w.step .. '.attempts', w.attempt)
if status == 'queued' then redis.call('HSET', run.key, 'status', 'running') end
if w.timeout ~= '' then
  redis.call('ZADD', key.waiting_steps, NOW + tonumber(w.timeout), run.id .. ' ' .. w.step)
end
return remember({'waiting'})
