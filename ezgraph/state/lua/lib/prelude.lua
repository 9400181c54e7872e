-- The prelude of every script: the request's head, ezgraph's key names, the wake-ups of idle
-- ezgraph workers, and readers of the records state/protocol.py writes. FIELDS (each record's
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
function key.stopped(id) return PREFIX .. ':run:' .. id .. ':stopped' end
function key.alive(worker) return PREFIX .. ':alive:' .. worker end
function key.claimed(worker) return PREFIX .. ':claimed:' .. worker end
function key.idle(queue) return PREFIX .. ':idle:' .. queue end
function key.wake(queue) return PREFIX .. ':wake:' .. queue end
function key.reply(caller) return PREFIX .. ':reply:' .. caller end
key.live_runs = PREFIX .. ':runs:live'
key.unsaved_runs = PREFIX .. ':runs:unsaved'
key.workers = PREFIX .. ':workers'

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

-- Wake-ups of idle ezgraph workers. A worker whose claim found its queues empty marks them idle
-- (for a few seconds) and blocks on their wake lists; a job pushed to a marked queue wakes one.
-- A script that claims after creating jobs (finish_and_claim) holds its wake-ups until it has
-- claimed: a job the caller took itself wakes nobody.
local wake = {held = nil}
function wake.now(queue, only_if_jobs_left)
  if redis.call('EXISTS', key.idle(queue)) == 0 then return end
  if only_if_jobs_left and redis.call('LLEN', RQ_PREFIX .. 'queue:' .. queue) == 0 then return end
  if redis.call('RPUSH', key.wake(queue), 1) > TUNING.wake_list_max then
    redis.call('LTRIM', key.wake(queue), -TUNING.wake_list_max, -1)
  end
end
function wake.queue(queue)
  if wake.held then wake.held[queue] = true else wake.now(queue) end
end
function wake.hold() wake.held = {} end
function wake.release()
  local queues = wake.held or {}
  wake.held = nil
  for queue in pairs(queues) do wake.now(queue, true) end
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
