-- Shared prelude of every ezgraph script: one run's keys and the graph walk.
-- ARGV[1] key prefix, ARGV[2] run id, ARGV[3] now as RQ's ISO date, ARGV[4] now as epoch seconds.
local P, NOW_ISO, NOW = ARGV[1], ARGV[3], tonumber(ARGV[4])
local RUN, run_key, steps_key, state_key, join_key, jobs_key

-- Point the run keys at run `id` (the fast worker's script records several runs per call).
local function bind_run(id)
  RUN = id
  run_key = P .. ':run:' .. id
  steps_key = run_key .. ':steps'
  state_key = run_key .. ':state'
  join_key = run_key .. ':join'
  jobs_key = run_key .. ':jobs'
end
bind_run(ARGV[2])
local TERMINAL = {finished = true, failed = true, skipped = true, canceled = true}

-- Changes to the run's pending count (steps created and not yet ended), summed in Lua and
-- written by one HINCRBY (apply_pending) before anything reads the count or the run changes.
local pending_delta = 0

-- Write the summed changes; returns the run's pending count.
local function apply_pending()
  local delta = pending_delta
  pending_delta = 0
  if delta == 0 then return tonumber(redis.call('HGET', run_key, 'pending')) end
  return redis.call('HINCRBY', run_key, 'pending', delta)
end

-- Prebuilt RQ jobs, read from ARGV starting at position i: count, then per job
-- step, job id, queue, number of hash fields, the fields. Returns the table and the next position.
local function read_jobs(i)
  local jobs = {}
  local count = tonumber(ARGV[i]); i = i + 1
  for _ = 1, count do
    local step, id, queue, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
    jobs[step] = {id = id, queue = queue, first = i + 4, last = i + 3 + n}
    i = i + 4 + n
  end
  return jobs, i
end

-- Wake an idle ezgraph worker of `queue`. A worker that found its queues empty marked them
-- idle in the same call (fast.lua) and blocks on their bells; a queue nobody waits on rings
-- nothing. At most BELLS bells wait in a queue's list.
local BELLS = 8
local function ring_now(queue, if_jobs_left)
  if redis.call('EXISTS', P .. ':idle:' .. queue) == 0 then return end
  if if_jobs_left and redis.call('LLEN', 'rq:queue:' .. queue) == 0 then return end
  if redis.call('RPUSH', P .. ':bell:' .. queue, 1) > BELLS then
    redis.call('LTRIM', P .. ':bell:' .. queue, -BELLS, -1)
  end
end
-- A script that claims jobs after creating them (fast.lua) holds its bells until it has
-- claimed (ring_held): a job the caller took itself wakes nobody.
local held_bells = nil
local function ring(queue)
  if held_bells then held_bells[queue] = true else ring_now(queue) end
end
local function hold_bells() held_bells = {} end
-- Ring the held bells of queues that still hold jobs.
local function ring_held()
  local queues = held_bells or {}
  held_bells = nil
  for queue in pairs(queues) do ring_now(queue, true) end
end

-- Put job `id` at the back of `queue`, as RQ enqueues, and wake an idle ezgraph worker of it.
local function push_job(queue, id)
  if redis.call('RPUSH', 'rq:queue:' .. queue, id) == 1 then
    -- A new queue list: list it for rq info and the dashboard (a longer one is listed already).
    redis.call('SADD', 'rq:queues', 'rq:queue:' .. queue)
  end
  ring(queue)
end

-- Create an RQ job unless its id exists (the atomic create that makes successors once-only).
local function create_job(step, job)
  local key = 'rq:job:' .. job.id
  if redis.call('EXISTS', key) == 1 then return false end
  redis.call('HSET', key, unpack(ARGV, job.first, job.last))
  push_job(job.queue, job.id)
  redis.call('HSET', jobs_key, job.id, job.queue)
  redis.call('HSET', steps_key, step .. '.status', 'queued', step .. '.job', job.id)
  pending_delta = pending_delta + 1
  return true
end

-- Walk the graph from a resolved node: each successor gets an arrival, 'done' or 'skip'.
-- A node runs when all its predecessors have arrived and one of them was done; it is skipped
-- (and passes skips on) when all arrivals were skips. Nodes ready without a prebuilt job are
-- returned in `missing` for the caller to create.
local function make_walker(graph, jobs, missing)
  local walker = {}
  function walker.ready(node)
    local job = jobs[node]
    if job then create_job(node, job) else
      redis.call('HSET', steps_key, node .. '.status', 'ready')
      pending_delta = pending_delta + 1
      table.insert(missing, node)
    end
  end
  function walker.skip(node)
    redis.call('HSET', steps_key, node .. '.status', 'skipped', node .. '.ended_at', NOW_ISO)
    for _, successor in ipairs(graph.succ[node]) do walker.arrive(successor, false) end
  end
  function walker.arrive(node, done)
    local indegree = graph.indeg[node]
    if indegree <= 1 then
      if done then walker.ready(node) else walker.skip(node) end
      return
    end
    redis.call('HSETNX', join_key, 'left:' .. node, indegree)
    if done then redis.call('HSET', join_key, 'any:' .. node, 1) end
    if redis.call('HINCRBY', join_key, 'left:' .. node, -1) == 0 then
      if redis.call('HEXISTS', join_key, 'any:' .. node) == 1 then walker.ready(node)
      else walker.skip(node) end
    end
  end
  return walker
end

-- End the run when nothing of it is pending; returns 1 when this call ended it.
local function end_run_if_idle()
  if apply_pending() > 0 then return 0 end
  local status, ended_at = unpack(redis.call('HMGET', run_key, 'status', 'ended_at'))
  if ended_at then return 0 end
  if status == 'queued' or status == 'running' then
    redis.call('HSET', run_key, 'status', 'finished', 'ended_at', NOW_ISO)
  else
    redis.call('HSET', run_key, 'ended_at', NOW_ISO)
  end
  redis.call('ZREM', P .. ':runs:live', RUN)
  redis.call('ZADD', P .. ':runs:unsaved', NOW, RUN)
  redis.call('PUBLISH', run_key .. ':stopped', 'ended')
  return 1
end

-- What a step that gathers its input (a join) reads, read as the fast worker claims its job
-- (the step needs no round trip of its own). spec: the job's ezgraph_gather field, JSON of
-- {run, preds, states}. Returns the five replies RunBook.gather reads: the predecessors'
-- statuses and outputs, the kept states, the map counts and the mapped instances' outputs in
-- item order; false for a map too large to read in one call, or a field it cannot read (the
-- step then reads its input itself).
local MAX_GATHERED = 1000
local function read_gathered(spec_json)
  local ok, spec = pcall(cjson.decode, spec_json)
  if not ok or type(spec) ~= 'table' or type(spec.run) ~= 'string'
      or type(spec.preds) ~= 'table' or type(spec.states) ~= 'table' then return false end
  local base = P .. ':run:' .. spec.run
  local steps = base .. ':steps'
  local statuses, outputs, counts = {}, {}, {}
  for n, pred in ipairs(spec.preds) do
    statuses[n], outputs[n], counts[n] = pred .. '.status', pred .. '.output', 'mapn:' .. pred
  end
  if #statuses == 0 or #statuses > MAX_GATHERED or #spec.states == 0
      or #spec.states > MAX_GATHERED then return false end
  counts = redis.call('HMGET', base .. ':join', unpack(counts))
  local mapped = {}
  for n, pred in ipairs(spec.preds) do
    local count = tonumber(counts[n]) or 0
    if #mapped + count > MAX_GATHERED then return false end
    for i = 0, count - 1 do table.insert(mapped, pred .. '-' .. i .. '.output') end
  end
  if #mapped > 0 then mapped = redis.call('HMGET', steps, unpack(mapped)) end
  statuses = redis.call('HMGET', steps, unpack(statuses))
  outputs = redis.call('HMGET', steps, unpack(outputs))
  return {statuses, outputs, redis.call('HMGET', base .. ':state', unpack(spec.states)), counts,
    mapped}
end

-- Stop a run: set its terminal status, and cancel every step still waiting in an RQ queue.
local function abort_run(status, error_text)
  local current = redis.call('HGET', run_key, 'status')
  if current ~= 'queued' and current ~= 'running' then return end
  redis.call('HSET', run_key, 'status', status, 'error', error_text)
  redis.call('PUBLISH', run_key .. ':stopped', status)
  local jobs = redis.call('HGETALL', jobs_key)
  local prefix_len = string.len(RUN) + 2
  for i = 1, #jobs, 2 do
    local id, queue = jobs[i], jobs[i + 1]
    local step = string.sub(id, prefix_len)
    if redis.call('HGET', steps_key, step .. '.status') == 'queued'
        and redis.call('HGET', 'rq:job:' .. id, 'status') == 'queued' then
      redis.call('LREM', 'rq:queue:' .. queue, 0, id)
      redis.call('HSET', 'rq:job:' .. id, 'status', 'canceled', 'ended_at', NOW_ISO)
      redis.call('ZADD', 'rq:canceled:' .. queue, NOW + 86400, id)
      redis.call('HSET', steps_key, step .. '.status', 'canceled', step .. '.ended_at', NOW_ISO)
      redis.call('HINCRBY', run_key, 'pending', -1)
    end
  end
end

-- A step succeeded: record it, walk its successors, create the ready ones, end the run if idle.
-- ARGV from position i: step, node, map index or '', output JSON, state JSON or '', chosen
-- successors as a JSON list or '' for all, mapped successor or '', its item count, started_at,
-- worker, attempt, then the prebuilt jobs. Returns {outcome, run ended (0/1), missing steps...}.
local function complete_step(i)
  local STEP, NODE, INDEX = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local status, graph_json = unpack(redis.call('HMGET', run_key, 'status', 'graph'))
  if not status then return {'gone', 0} end
  if TERMINAL[redis.call('HGET', steps_key, STEP .. '.status')] then return {'duplicate', 0} end
  redis.call('HSET', steps_key, STEP .. '.status', 'finished', STEP .. '.output', ARGV[i + 3],
    STEP .. '.started_at', ARGV[i + 8], STEP .. '.ended_at', NOW_ISO, STEP .. '.worker', ARGV[i + 9],
    STEP .. '.attempts', ARGV[i + 10])
  if ARGV[i + 4] ~= '' then redis.call('HSET', state_key, STEP, ARGV[i + 4]) end
  pending_delta = pending_delta - 1
  local missing = {}
  if status == 'queued' or status == 'running' then
    if status == 'queued' then redis.call('HSET', run_key, 'status', 'running') end
    local graph = cjson.decode(graph_json)
    local jobs = read_jobs(i + 11)
    local walker = make_walker(graph, jobs, missing)
    if INDEX ~= '' then
      -- One instance of a mapped node: the node resolves when its last instance is done.
      if redis.call('HINCRBY', join_key, 'mapleft:' .. NODE, -1) == 0 then
        redis.call('HSET', steps_key, NODE .. '.status', 'finished', NODE .. '.ended_at', NOW_ISO)
        for _, successor in ipairs(graph.succ[NODE]) do walker.arrive(successor, true) end
      end
    else
      local chosen = nil
      if ARGV[i + 5] ~= '' then
        chosen = {}
        for _, name in ipairs(cjson.decode(ARGV[i + 5])) do chosen[name] = true end
      end
      local mapped, count = ARGV[i + 6], tonumber(ARGV[i + 7])
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
  local ended = 0
  if pending_delta < 0 then
    ended = end_run_if_idle()
  elseif pending_delta > 0 then
    -- This step was pending until now and as many steps began as ended: the run goes on.
    apply_pending()
  end
  local reply = {'ok', ended}
  for _, step in ipairs(missing) do table.insert(reply, step) end
  return reply
end
