-- A step failed for good (no retry left): record it, stop its run, end the run if idle.
-- ARGV: the head, a failure (FIELDS.failure). Returns {outcome, run ended (0/1)}.
local kept = recall()
if kept then return kept end
local f = read_record(FIELDS.failure, FIRST)
local reply = run.fail_step(f)
if reply[1] == 'ok' then remember(reply) end
return reply
