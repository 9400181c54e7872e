-- What a join reads of its predecessors (run.read_join_input), for a step that did not get it
-- with its claim (a stock RQ worker's). ARGV: the head, FIELDS.join_input_request.
-- Returns the five replies, or false for a spec it cannot read.
local request = read_record(FIELDS.join_input_request, FIRST)
return run.read_join_input(request.spec, 0)
