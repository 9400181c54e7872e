-- A signal to a live run: kept in its mailbox first, so that a step that waits for it later
-- finds it; a second signal of the same name is refused. When a step waits for it already,
-- the watchdog is told to resume that step after `resume_after` seconds, should the sender
-- (which resumes it at once) die first.
-- ARGV: the head, a signal (FIELDS.signal).
-- Returns {'ok', the waiting step or ''}, {'duplicate'}, {'ended', run status} or {'gone'}.
local kept = recall()
if kept then return kept end
local s = read_record(FIELDS.signal, FIRST)
run.bind(s.run_id)
local status = redis.call('HGET', run.key, 'status')
if not status then return {'gone'} end  -- nothing written: a resend answers the same
if (status ~= 'queued' and status ~= 'running') or redis.call('HEXISTS', run.key, 'ended_at') == 1 then
  return remember({'ended', status})
end
if redis.call('HSETNX', run.signals, 'signal:' .. s.name, s.data) == 0 then
  return remember({'duplicate'})
end
local waiter = redis.call('HGET', run.signals, 'waiter:' .. s.name)
if waiter and run.step_status(waiter) == 'waiting' then
  redis.call('ZADD', key.waiting_steps, NOW + tonumber(s.resume_after), run.id .. ' ' .. waiter)
else
  waiter = ''
end
return remember({'ok', waiter})
