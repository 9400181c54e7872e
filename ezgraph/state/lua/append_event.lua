-- Append one event (progress or a step's own) to a run's stream, capped at about
-- TUNING.events_max entries; the stream takes the expiry of the run's header, so it leaves
-- Redis with the run's other keys (mark_saved and resume_run also treat it as one of them).
-- ARGV: the head, FIELDS.event. Returns the entry's id, or false when the run is gone.
local kept = recall()
if kept then return kept end
local request = read_record(FIELDS.event, FIRST)
run.bind(request.run_id)
local ttl = redis.call('PTTL', run.key)
if ttl == -2 then return false end
local id = redis.call('XADD', run.events, 'MAXLEN', '~', TUNING.events_max, '*',
  'e', request.body)
if ttl > 0 then redis.call('PEXPIRE', run.events, ttl) end
return remember(id)
