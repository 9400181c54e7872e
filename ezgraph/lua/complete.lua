-- A step succeeded: record it, walk its successors, create the ready ones, end the run if idle.
-- After the prelude's ARGV: 5 step, 6 node, 7 map index or '', 8 output JSON, 9 state JSON or '',
-- 10 chosen successors as JSON list or '' for all, 11 mapped successor or '', 12 its item count,
-- 13 started_at, 14 worker, 15 attempt, then the prebuilt jobs.
-- Returns {outcome, run ended (0/1), missing steps...}.
local STEP, NODE, INDEX = ARGV[5], ARGV[6], ARGV[7]
local status = redis.call('HGET', run_key, 'status')
if not status then return {'gone', 0} end
if TERMINAL[redis.call('HGET', steps_key, STEP .. '.status')] then return {'duplicate', 0} end
redis.call('HSET', steps_key, STEP .. '.status', 'finished', STEP .. '.output', ARGV[8],
  STEP .. '.started_at', ARGV[13], STEP .. '.ended_at', NOW_ISO, STEP .. '.worker', ARGV[14],
  STEP .. '.attempts', ARGV[15])
if ARGV[9] ~= '' then redis.call('HSET', state_key, STEP, ARGV[9]) end
redis.call('HINCRBY', run_key, 'pending', -1)
local missing = {}
if status == 'queued' or status == 'running' then
  if status == 'queued' then redis.call('HSET', run_key, 'status', 'running') end
  local graph = cjson.decode(redis.call('HGET', run_key, 'graph'))
  local jobs = read_jobs(16)
  local walker = make_walker(graph, jobs, missing)
  if INDEX ~= '' then
    -- One instance of a mapped node: the node resolves when its last instance is done.
    if redis.call('HINCRBY', join_key, 'mapleft:' .. NODE, -1) == 0 then
      redis.call('HSET', steps_key, NODE .. '.status', 'finished', NODE .. '.ended_at', NOW_ISO)
      for _, successor in ipairs(graph.succ[NODE]) do walker.arrive(successor, true) end
    end
  else
    local chosen = nil
    if ARGV[10] ~= '' then
      chosen = {}
      for _, name in ipairs(cjson.decode(ARGV[10])) do chosen[name] = true end
    end
    local mapped, count = ARGV[11], tonumber(ARGV[12])
    for _, successor in ipairs(graph.succ[NODE]) do
      if successor == mapped then
        redis.call('HSET', join_key, 'mapn:' .. mapped, count, 'mapleft:' .. mapped, count)
        redis.call('HSET', steps_key, mapped .. '.status', 'mapped', mapped .. '.map', count)
        if count == 0 then
          redis.call('HSET', steps_key, mapped .. '.status', 'finished', mapped .. '.ended_at', NOW_ISO)
          for _, after in ipairs(graph.succ[mapped]) do walker.arrive(after, true) end
        else
          for i = 0, count - 1 do
            local step = mapped .. '-' .. i
            create_job(step, jobs[step])
          end
        end
      else
        walker.arrive(successor, chosen == nil or chosen[successor] == true)
      end
    end
  end
end
local ended = end_run_if_idle()
local reply = {'ok', ended}
for _, step in ipairs(missing) do table.insert(reply, step) end
return reply
