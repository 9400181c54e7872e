-- A step succeeded (on a stock RQ worker): record it and create its ready successors.
-- ARGV: the head, a completion (FIELDS.completion), its planned jobs, its walk.
-- Returns {outcome, run ended (0/1)} (see run.complete).
local kept = recall()
if kept then return kept end
local c, i = read_record(FIELDS.completion, FIRST)
c.jobs, i = run.read_jobs(i)
c.walk = run.read_walk(i)
local reply = run.complete(c)
if reply[1] == 'ok' then remember(reply) end
return reply
