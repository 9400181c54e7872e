-- Read runs whole, one JSON document per run (false for a run Redis no longer holds):
-- {"header": {...}, "steps": {...}, "state": {...}}, each a hash's fields as an object.
-- One bulk reply per run is far cheaper for the client to parse than three hashes' fields.
-- ARGV after the prelude (ARGV[2] unused): 5.. run ids.
local function as_object(flat)
  local object = {}
  for n = 1, #flat, 2 do object[flat[n]] = flat[n + 1] end
  return object
end

local reply = {}
for n = 5, #ARGV do
  bind_run(ARGV[n])
  local header = redis.call('HGETALL', run_key)
  if #header == 0 then
    reply[#reply + 1] = false
  else
    reply[#reply + 1] = cjson.encode({
      header = as_object(header),
      steps = as_object(redis.call('HGETALL', steps_key)),
      state = as_object(redis.call('HGETALL', state_key)),
    })
  end
end
return reply
