-- The prelude of every script: the request's head, ezgraph's key names, the reply kept for a
-- call sent again, and readers of the records state/protocol.py writes. FIELDS (each record's
-- field names, in order) and TUNING are prepended from protocol.py, which alone knows that order.

-- One record of `fields` read from ARGV at position i, by name; returns it and the next position.
local function read_record(fields, i)
  local record = {}
  for n, name in ipairs(fields) do record[name] = ARGV[i + n - 1] end
  return record, i + #fields
end

local HEAD, FIRST = read_record(FIELDS.head, 1)  -- FIRST: where a script's own arguments start
local PREFIX, RQ_PREFIX, NOW_ISO, NOW = HEAD.prefix, HEAD.rq_prefix, HEAD.now_iso, tonumber(HEAD.now)

-- ezgraph's keys (mirrored by ezgraph/state/keys.py; a test checks they agree).
local key = {}
function key.run(id) return PREFIX .. ':run:' .. id end
function key.steps(id) return PREFIX .. ':run:' .. id .. ':steps' end
function key.state(id) return PREFIX .. ':run:' .. id .. ':state' end
function key.join(id) return PREFIX .. ':run:' .. id .. ':join' end
function key.jobs(id) return PREFIX .. ':run:' .. id .. ':jobs' end
function key.events(id) return PREFIX .. ':run:' .. id .. ':events' end
function key.signals(id) return PREFIX .. ':run:' .. id .. ':signals' end
function key.stopped(id) return PREFIX .. ':run:' .. id .. ':stopped' end
function key.map_items(id, token) return PREFIX .. ':run:' .. id .. ':map:' .. token end
function key.alive(worker) return PREFIX .. ':alive:' .. worker end
function key.claimed(worker) return PREFIX .. ':claimed:' .. worker end
function key.idle(queue) return PREFIX .. ':idle:' .. queue end
function key.wake(queue) return PREFIX .. ':wake:' .. queue end
function key.reply(caller) return PREFIX .. ':reply:' .. caller end
function key.idempotency(k) return PREFIX .. ':idem:' .. k end
key.live_runs = PREFIX .. ':runs:live'
key.unsaved_runs = PREFIX .. ':runs:unsaved'
key.expiring_runs = PREFIX .. ':runs:expiring'
key.deadlines = PREFIX .. ':runs:deadlines'
key.waiting_steps = PREFIX .. ':runs:waiting'
key.workers = PREFIX .. ':workers'
key.maps_creating = PREFIX .. ':maps:creating'
key.runs_sweeping = PREFIX .. ':runs:sweeping'

-- A list of strings written as its length then its items; returns it and the next position.
local function read_list(i)
  local count = tonumber(ARGV[i])
  local items = {}
  for n = 1, count do items[n] = ARGV[i + n] end
  return items, i + count + 1
end

-- `record`'s values in the order of `fields`, appended to `reply` (false for a missing value).
local function write_record(reply, fields, record)
  for _, name in ipairs(fields) do
    local value = record[name]
    if value == nil then value = false end
    table.insert(reply, value)
  end
  return reply
end

-- A call sent again after a client timeout (the same caller and request: Redis may have run the
-- first one) gets the first call's reply instead of running again. Each caller (a thread of a
-- process) keeps its last reply that changed something, for TUNING.reply_ttl seconds. A script
-- that changes state starts with `local kept = recall(); if kept then return kept end`, and
-- returns `remember(reply)` where it changed something (a refusal may simply run again).
local function recall()
  local kept = redis.call('GET', key.reply(HEAD.caller))
  if kept and string.sub(kept, 1, #HEAD.request + 1) == HEAD.request .. ' ' then
    return cmsgpack.unpack(string.sub(kept, #HEAD.request + 2))
  end
  return nil
end
local function remember(reply)
  redis.call('SET', key.reply(HEAD.caller), HEAD.request .. ' ' .. cmsgpack.pack(reply),
    'EX', TUNING.reply_ttl)
  return reply
end
