-- What a join reads of its predecessors (run.read_join_input), for a step that did not get it
-- with its claim (a stock RQ worker's, or one with over TUNING.max_join_input outputs), a
-- chunk of the mapped outputs per call. ARGV: the head, FIELDS.join_input_request.
-- Returns the five replies (the fifth: the outputs from `offset`, `chunk` at most), or false
-- for a spec it cannot read.
local request = read_record(FIELDS.join_input_request, FIRST)
return run.read_join_input(request.spec, 0, tonumber(request.offset), tonumber(request.chunk))
