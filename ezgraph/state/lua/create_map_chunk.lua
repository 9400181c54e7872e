-- Create the next chunk of a map's instances (run.create_map_chunk), for the worker that
-- recorded the Map, or the watchdog going on for a worker that died meanwhile.
-- ARGV: the head, FIELDS.map_chunk. Returns {instances left to create (0/1), run ended (0/1)}.
local kept = recall()
if kept then return kept end
local request = read_record(FIELDS.map_chunk, FIRST)
run.bind(request.run_id)
if redis.call('EXISTS', run.key) == 0 then
  redis.call('ZREM', key.maps_creating, request.run_id .. '/' .. request.node)
  return {0, 0}
end
local more = run.create_map_chunk(request.node, TUNING.map_chunk)
return remember({more and 1 or 0, run.settle_pending()})
