-- A step failed for good (no retry left): record it, stop its run, end the run if idle.
-- ARGV: the head, a failure (FIELDS.failure). Returns {outcome, run ended (0/1)}.
local f = read_record(FIELDS.failure, FIRST)
return run.fail_step(f)
