-- A run's bookkeeping: the one place a step's end is recorded (run.complete, run.fail_step),
-- the graph walk that creates the ready successors, and the end of a run; and the wake-ups of
-- idle ezgraph workers when a job is queued.

-- Wake-ups of idle ezgraph workers. A worker whose claim found its queues empty marks them idle
-- (for a few seconds) and blocks on their wake lists; a job pushed to a marked queue wakes one.
-- A script that claims after creating jobs (finish_and_claim) holds its wake-ups until it has
-- claimed: a job the caller took itself wakes nobody.
local wake = {held = nil}
function wake.now(queue, only_if_jobs_left)
  if redis.call('EXISTS', key.idle(queue)) == 0 then return end
  if only_if_jobs_left and redis.call('LLEN', rq.queue_key(queue)) == 0 then return end
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

local run = {id = nil}
local TERMINAL = {finished = true, failed = true, skipped = true, canceled = true}

-- Point the run's keys at run `id` (finish_and_claim records several runs in one call).
function run.bind(id)
  run.id = id
  run.key, run.steps, run.state = key.run(id), key.steps(id), key.state(id)
  run.join, run.jobs, run.events = key.join(id), key.jobs(id), key.events(id)
  run.signals = key.signals(id)
  run.pending_delta = 0  -- changes to the count of steps created and not yet ended
  run.budget = nil  -- the run's max_steps (false: none), read when a step is first created
  run.over_budget = false  -- a step was not created: the run would pass its max_steps
end

-- True when `count` more steps fit the run's max_steps (counted in its header's `steps`), and
-- counts them; false (and run.over_budget) when they do not. Runs without a budget count nothing.
function run.take_steps(count)
  if run.budget == nil then
    run.budget = tonumber(redis.call('HGET', run.key, 'max_steps')) or false
  end
  if not run.budget then return true end
  local taken = tonumber(redis.call('HGET', run.key, 'steps') or 0)
  if taken + count > run.budget then
    run.over_budget = true
    return false
  end
  redis.call('HINCRBY', run.key, 'steps', count)
  return true
end

-- The error of a run that would pass its max_steps.
function run.budget_error(at)
  return 'StepBudgetExceeded: ' .. at .. ' would start more than the run\'s max_steps of '
    .. run.budget .. ' steps'
end

-- Write the summed pending changes; returns the run's pending count.
function run.apply_pending()
  local delta = run.pending_delta
  run.pending_delta = 0
  if delta == 0 then return tonumber(redis.call('HGET', run.key, 'pending')) end
  return redis.call('HINCRBY', run.key, 'pending', delta)
end

function run.step_status(step) return redis.call('HGET', run.steps, step .. '.status') end

-- Create the RQ job of `step` (a planned job: its id, queue and hash fields, in `fields` or
-- ARGV[first..last]), unless it exists or the run's max_steps would be passed (`counted`: its
-- step was taken already).
function run.create_job(step, job, counted)
  if run.over_budget or not (counted or run.take_steps(1)) then return false end
  local fields = job.fields or {unpack(ARGV, job.first, job.last)}
  if not rq.create_job(job.job_id, job.queue, fields) then
    if run.budget and not counted then redis.call('HINCRBY', run.key, 'steps', -1) end
    return false  -- it existed: not a step more
  end
  wake.queue(job.queue)
  redis.call('HSET', run.jobs, job.job_id, job.queue)
  redis.call('HSET', run.steps, step .. '.status', 'queued', step .. '.job', job.job_id)
  run.pending_delta = run.pending_delta + 1
  return true
end

-- The planned jobs of a request, read from ARGV at i: a count, then per job its record
-- (FIELDS.job) and that many hash fields. Returns them by step, and the next position.
function run.read_jobs(i)
  local jobs = {}
  local count = tonumber(ARGV[i]); i = i + 1
  for _ = 1, count do
    local job
    job, i = read_record(FIELDS.job, i)
    job.first, job.last = i, i + tonumber(job.field_count) - 1
    jobs[job.step] = job
    i = job.last + 1
  end
  return jobs, i
end

-- The part of the graph a completion's walk may visit, read from ARGV at i: a count, then per
-- node its name, in-degree, number of successors and their names.
function run.read_walk(i)
  local walk = {indegree = {}, successors = {}}
  local count = tonumber(ARGV[i]); i = i + 1
  for _ = 1, count do
    local node, indegree, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    walk.indegree[node] = indegree
    walk.successors[node] = {unpack(ARGV, i + 3, i + 2 + n)}
    i = i + 3 + n
  end
  return walk, i
end

-- How long a job of run `id` may be kept, at most `ttl` seconds (RQ's result_ttl: 0 deletes,
-- -1 keeps): as long as the run's keys once it is in SQL (they expire), 0 once it left Redis.
function run.job_ttl(id, ttl)
  local left = redis.call('TTL', key.run(id))
  if left == -2 then return 0 end
  if left > 0 and (ttl < 0 or left < ttl) then return left end
  return ttl
end

-- A stopped run's jobs are swept TUNING.sweep_chunk per call, so that stopping a wide map's
-- run never holds Redis for long: the first chunk at once, by the call that stops it, the rest
-- by run.sweep_chunk (the canceling client, or the watchdog, which goes on at once: a sweep
-- does nothing a concurrent one would undo). The join hash holds `sweep:cursor` (HSCAN of the
-- jobs hash) and `sweep:mode`; the run counts one pending step meanwhile, so that it cannot end
-- before the sweep does; `runs:sweeping` lists the runs being swept. Per job, by mode:
-- SWEEP_ABORT cancels a waiting step and a queued one whose job is still queued; SWEEP_STOP
-- also marks a step still in flight (its job started) stopped_while_running, so that a retry
-- runs it again; SWEEP_CANCEL also cancels a job waiting for a retry, and ends a step whose job
-- RQ's stop command ended (it will never report). SWEEP_RETRY (`ezgraph retry` of a wide run)
-- requeues the steps a retry runs again (run.reruns); a stop replaces it.
local SWEEP_ABORT, SWEEP_STOP, SWEEP_CANCEL, SWEEP_RETRY = 1, 2, 3, 4
local REQUEUEABLE = {failed = true, canceled = true, stopped = true, finished = true}

-- Whether a retry runs step `step` again: failed and canceled steps, and steps that finished
-- after the run had stopped (marked stopped_while_running: their successors were never
-- created; a sink, having none, stays finished). `succ`: the run's graph's successors.
function run.reruns(step, succ)
  local step_status = run.step_status(step)
  if step_status == 'failed' or step_status == 'canceled' then return true end
  if step_status == 'finished'
      and redis.call('HEXISTS', run.steps, step .. '.stopped_while_running') == 1 then
    local successors = succ[step]  -- nil for a mapped instance, which must resolve its node
    return successors == nil or #successors > 0
  end
  return false
end

-- Requeue the job of a step a retry runs again. retries_left stays as it is, as with RQ; a
-- retry counts its worker deaths anew.
function run.requeue_step(step, id, queue)
  rq.requeue(id, queue, false)
  rq.keep_job(id)  -- set to expire with its run: it must wait in its queue
  redis.call('HDEL', rq.job_key(id), JOB_FIELD.deaths)
  wake.queue(queue)
  redis.call('HSET', run.steps, step .. '.status', 'queued')
  redis.call('HDEL', run.steps, step .. '.error', step .. '.ended_at',
    step .. '.stopped_while_running', step .. '.recovered')
  redis.call('HINCRBY', run.key, 'pending', 1)
end

local function retry_job(step, id, queue)
  run.succ = run.succ or cjson.decode(redis.call('HGET', run.key, 'graph')).succ
  if not run.reruns(step, run.succ) then return end
  local job_status = rq.job_status(id)
  if not REQUEUEABLE[job_status] then
    run.refused = step .. ': cannot be retried: its job is ' .. (job_status or 'expired')
    return
  end
  run.requeue_step(step, id, queue)
  redis.call('HINCRBY', run.join, 'sweep:requeued', 1)
end

local function cancel_step(step)
  redis.call('HSET', run.steps, step .. '.status', 'canceled', step .. '.ended_at', NOW_ISO)
  redis.call('HINCRBY', run.key, 'pending', -1)
end

local function sweep_job(id, queue, mode)
  local step = string.sub(id, #run.id + 2)
  if mode == SWEEP_RETRY then return retry_job(step, id, queue) end
  local step_status = run.step_status(step)
  if step_status == 'waiting' or (step_status == 'queued' and rq.job_status(id) == 'queued'
      and rq.cancel_waiting(id, queue, 'queued')) then
    return cancel_step(step)  -- a waiting step holds no job: it is simply canceled
  end
  if step_status ~= 'queued' or mode < SWEEP_STOP then return end
  redis.call('HSET', run.steps, step .. '.stopped_while_running', 1)
  if mode < SWEEP_CANCEL then return end
  local job_status = rq.job_status(id)
  if rq.cancel_waiting(id, queue, job_status == 'scheduled' and 'scheduled' or '')
      or job_status == 'stopped' or job_status == 'failed' then
    cancel_step(step)
  end
end

-- Sweep the next chunk (at most `size`) of the run's jobs; returns whether jobs are left.
function run.sweep_chunk(size)
  local cursor, mode = unpack(redis.call('HMGET', run.join, 'sweep:cursor', 'sweep:mode'))
  if not cursor then return false end
  local scan = redis.call('HSCAN', run.jobs, cursor, 'COUNT', size)
  local jobs = scan[2]
  for n = 1, #jobs, 2 do
    sweep_job(jobs[n], jobs[n + 1], tonumber(mode))
    if run.refused then  -- a job a retry cannot requeue: the run fails again (a new sweep)
      local refused = run.refused
      run.refused = nil
      run.stop('failed', refused)
      return true
    end
  end
  if scan[1] ~= '0' then
    redis.call('HSET', run.join, 'sweep:cursor', scan[1])
    redis.call('ZADD', key.runs_sweeping, NOW, run.id)
    return true
  end
  local requeued, error_text = unpack(redis.call('HMGET', run.join, 'sweep:requeued',
    'sweep:error'))
  redis.call('HDEL', run.join, 'sweep:cursor', 'sweep:mode', 'sweep:requeued', 'sweep:error')
  redis.call('ZREM', key.runs_sweeping, run.id)
  redis.call('HINCRBY', run.key, 'pending', -1)  -- the sweep's own pending count
  if tonumber(mode) == SWEEP_RETRY and not requeued then  -- nothing to run again after all
    redis.call('HSET', run.key, 'status', 'failed', 'error', error_text or '')
  end
  return false
end

-- Begin sweeping the run's jobs in `mode` (a sweep under way in a lesser mode, or a retry's,
-- begins again in this one; sweeping a job twice changes nothing), and sweep the first chunk.
function run.sweep(mode)
  local current = tonumber(redis.call('HGET', run.join, 'sweep:mode'))
  if not current then
    redis.call('HINCRBY', run.key, 'pending', 1)
  elseif current >= mode and current ~= SWEEP_RETRY then
    return run.sweep_chunk(TUNING.sweep_chunk)
  end
  redis.call('HSET', run.join, 'sweep:cursor', '0', 'sweep:mode', mode)
  return run.sweep_chunk(TUNING.sweep_chunk)
end

-- Stop the run: set its terminal status, and sweep its jobs (run.sweep; SWEEP_ABORT unless
-- `mode` says more): every step still waiting in RQ is canceled.
function run.abort(status, error_text, mode)
  local current = redis.call('HGET', run.key, 'status')
  if current ~= 'queued' and current ~= 'running' then return end
  redis.call('HSET', run.key, 'status', status, 'error', error_text)
  redis.call('PUBLISH', key.stopped(run.id), status)
  run.sweep(mode or SWEEP_ABORT)
end

-- Walk the graph from a resolved node: each successor gets an arrival, done or skipped. A node
-- runs when all its predecessors have arrived and one of them was done; it is skipped (and
-- passes skips on) when all arrivals were skips. A node the walk or the plan does not know (the
-- run's graph is not the worker's) stops the walk: `walker.unknown` names it.
local function make_walker(walk, jobs)
  local walker = {}
  function walker.ready(node)
    local job = jobs[node]
    if job then run.create_job(node, job) else walker.unknown = walker.unknown or node end
  end
  function walker.skip(node)
    redis.call('HSET', run.steps, node .. '.status', 'skipped', node .. '.ended_at', NOW_ISO)
    for _, successor in ipairs(walk.successors[node] or {}) do walker.arrive(successor, false) end
  end
  function walker.arrive(node, done)
    local indegree = walk.indegree[node]
    if not indegree then
      walker.unknown = walker.unknown or node
      return
    end
    if indegree <= 1 then
      if done then walker.ready(node) else walker.skip(node) end
      return
    end
    redis.call('HSETNX', run.join, 'left:' .. node, indegree)
    if done then redis.call('HSET', run.join, 'any:' .. node, 1) end
    if redis.call('HINCRBY', run.join, 'left:' .. node, -1) == 0 then
      if redis.call('HEXISTS', run.join, 'any:' .. node) == 1 then walker.ready(node)
      else walker.skip(node) end
    end
  end
  function walker.resolve(node)  -- every successor of `node` arrives done
    for _, successor in ipairs(walk.successors[node] or {}) do walker.arrive(successor, true) end
  end
  return walker
end

-- End the run when nothing of it is pending; returns 1 when this call ended it.
function run.end_if_idle()
  if run.apply_pending() > 0 then return 0 end
  local status, ended_at = unpack(redis.call('HMGET', run.key, 'status', 'ended_at'))
  if ended_at then return 0 end
  if status == 'queued' or status == 'running' then
    redis.call('HSET', run.key, 'status', 'finished', 'ended_at', NOW_ISO)
  else
    redis.call('HSET', run.key, 'ended_at', NOW_ISO)
  end
  redis.call('ZREM', key.live_runs, run.id)
  redis.call('ZREM', key.deadlines, run.id)
  redis.call('ZADD', key.unsaved_runs, NOW, run.id)
  redis.call('PUBLISH', key.stopped(run.id), 'ended')
  return 1
end

-- A map's instances are created TUNING.map_chunk at a time, so that no call blocks Redis for
-- long: the step that returned the Map staged their jobs' data in the run's `map:<token>` hash
-- (`<index>` -> data; `fields` and `f:<n>`: the hash fields every instance shares;
-- `description`: its tail), the call recording it creates the first chunk, and
-- run.create_map_chunk the next ones (the worker that recorded it, at once, or the watchdog,
-- when that worker died). The join hash holds `mapnext:<node>` (the next index to create,
-- while some are left) and `maptoken:<node>`; the run counts one pending step meanwhile, so
-- that it cannot end before every instance exists; `maps:creating` lists the maps under way,
-- scored by their last progress.
local function map_member(node) return run.id .. '/' .. node end

-- Create the next chunk (at most `size`) of mapped node `node`'s instances; the last chunk
-- ends the creation, as does a run stopped meanwhile (the rest are never created). Each call
-- goes on from where the last one ended, so a call sent twice, or by two processes, creates
-- each instance once. Returns whether instances are left to create.
function run.create_map_chunk(node, size)
  local next_index, count, token = unpack(redis.call('HMGET', run.join, 'mapnext:' .. node,
    'mapn:' .. node, 'maptoken:' .. node))
  if not next_index then return false end
  next_index, count = tonumber(next_index), tonumber(count)
  local items = key.map_items(run.id, token)
  local status = redis.call('HGET', run.key, 'status')
  if status == 'queued' or status == 'running' then
    local shared = tonumber(redis.call('HGET', items, 'fields'))
    if not shared then
      run.abort('failed', node .. ': the staged items of its map are gone (expired?): '
        .. (count - next_index) .. ' of ' .. count .. ' were never created')
      next_index = count
    else
      local names = {'description'}
      for n = 1, shared do names[n + 1] = 'f:' .. n end
      local fields = redis.call('HMGET', items, unpack(names))
      local tail = table.remove(fields, 1)
      local last = math.min(count, next_index + size) - 1
      local indexes = {}
      for index = next_index, last do table.insert(indexes, index) end
      local data = redis.call('HMGET', items, unpack(indexes))
      for n, index in ipairs(indexes) do
        local step = node .. '-' .. index
        local job = {'created_at', NOW_ISO, 'enqueued_at', NOW_ISO, 'data', data[n],
          'description', step .. tail}
        for _, value in ipairs(fields) do table.insert(job, value) end
        run.create_job(step, {job_id = run.id .. '-' .. step, queue = node, fields = job}, true)
      end
      redis.call('HDEL', items, unpack(indexes))
      next_index = last + 1
    end
  else
    next_index = count
  end
  if next_index < count then
    redis.call('HSET', run.join, 'mapnext:' .. node, next_index)
    redis.call('ZADD', key.maps_creating, NOW, map_member(node))
    return true
  end
  redis.call('HDEL', run.join, 'mapnext:' .. node)
  redis.call('UNLINK', items)
  redis.call('ZREM', key.maps_creating, map_member(node))
  run.pending_delta = run.pending_delta - 1  -- the creation's own pending count
  return false
end

-- The map's successor of a Map result: its first chunk of instances (the rest follow, see
-- run.create_map_chunk), or (no items) straight on.
local function start_map(walker, mapped, count, token)
  if not run.take_steps(count) then return end  -- the whole map, or none of it
  redis.call('HSET', run.join, 'mapn:' .. mapped, count, 'mapleft:' .. mapped, count)
  redis.call('HSET', run.steps, mapped .. '.status', 'mapped', mapped .. '.map', count)
  if count == 0 then
    redis.call('HSET', run.steps, mapped .. '.status', 'finished', mapped .. '.ended_at', NOW_ISO)
    walker.resolve(mapped)
    return
  end
  redis.call('HSET', run.join, 'mapnext:' .. mapped, 0, 'maptoken:' .. mapped, token)
  run.pending_delta = run.pending_delta + 1
  run.create_map_chunk(mapped, TUNING.map_chunk)
end

-- End a call that created or ended steps: write the pending count; returns 1 when the run
-- ended (nothing of it pending).
function run.settle_pending()
  if run.pending_delta < 0 then return run.end_if_idle() end
  if run.pending_delta > 0 then run.apply_pending() end  -- as many steps began as ended
  return 0
end

-- A step succeeded: record it, walk its successors, create the ready ones, end the run if
-- idle. `c` is a completion (FIELDS.completion) with its planned `jobs` and `walk`.
-- Returns {outcome, run ended (0/1)}: ok, duplicate (recorded before) or gone (no run).
function run.complete(c)
  run.bind(c.run_id)
  local status, budget = unpack(redis.call('HMGET', run.key, 'status', 'max_steps'))
  if not status then return {'gone', 0} end
  run.budget = tonumber(budget) or false  -- read with the status: no call of its own
  if TERMINAL[run.step_status(c.step)] then return {'duplicate', 0} end
  redis.call('HSET', run.steps, c.step .. '.status', 'finished', c.step .. '.output', c.output,
    c.step .. '.started_at', c.started_at, c.step .. '.ended_at', NOW_ISO,
    c.step .. '.worker', c.worker, c.step .. '.attempts', c.attempt)
  if c.state ~= '' then redis.call('HSET', run.state, c.step, c.state) end
  run.pending_delta = run.pending_delta - 1
  if status == 'queued' or status == 'running' then
    if status == 'queued' then redis.call('HSET', run.key, 'status', 'running') end
    local walker = make_walker(c.walk, c.jobs)
    if c.item_index ~= '' then
      -- One instance of a mapped node: the node resolves when its last instance is done.
      if redis.call('HINCRBY', run.join, 'mapleft:' .. c.node, -1) == 0 then
        redis.call('HSET', run.steps, c.node .. '.status', 'finished', c.node .. '.ended_at', NOW_ISO)
        walker.resolve(c.node)
      end
    else
      local chosen = nil
      if c.chosen ~= '' then
        chosen = {}
        for _, name in ipairs(cjson.decode(c.chosen)) do chosen[name] = true end
      end
      for _, successor in ipairs(c.walk.successors[c.node] or {}) do
        if successor == c.mapped_node then
          start_map(walker, successor, tonumber(c.mapped_count), c.map_token)
        else
          walker.arrive(successor, chosen == nil or chosen[successor] == true)
        end
      end
    end
    if walker.unknown then
      run.abort('failed', c.step .. ': step ' .. walker.unknown .. ' became ready, but this'
        .. " worker's graph plans no job for it (was the graph changed while the run was live?)")
    end
  end
  local ended
  if run.over_budget then
    run.stop('failed', run.budget_error(c.step))
    ended = run.end_if_idle()  -- the stop may have canceled what this call created
  else
    ended = run.settle_pending()
  end
  return {'ok', ended}
end

-- A step failed for good (no retry left): record it and stop the run. `f` is a failure
-- (FIELDS.failure). Returns {outcome, run ended (0/1)}: ok, duplicate or gone.
function run.fail_step(f)
  run.bind(f.run_id)
  if redis.call('EXISTS', run.key) == 0 then return {'gone', 0} end
  if TERMINAL[run.step_status(f.step)] then return {'duplicate', 0} end
  redis.call('HSET', run.steps, f.step .. '.status', 'failed', f.step .. '.error', f.step_error,
    f.step .. '.started_at', f.started_at, f.step .. '.ended_at', NOW_ISO,
    f.step .. '.worker', f.worker, f.step .. '.attempts', f.attempt, f.step .. '.input', f.input)
  redis.call('HINCRBY', run.key, 'pending', -1)
  run.stop('failed', f.error)
  return {'ok', run.end_if_idle()}
end

-- Stop a live run (failed or canceled): abort it, and mark the steps still in flight, which
-- create no successors when they finish now, so that a retry runs them again.
function run.stop(status, error_text)
  run.abort(status, error_text, SWEEP_STOP)
end

-- HMGET of `fields` of hash `k`, at most TUNING.read_chunk at a time (Lua unpacks only
-- so many values at once: 10,000 failed with "too many results to unpack").
local function hmget_chunked(k, fields)
  local values = {}
  for first = 1, #fields, TUNING.read_chunk do
    local last = math.min(#fields, first + TUNING.read_chunk - 1)
    for _, value in ipairs(redis.call('HMGET', k, unpack(fields, first, last))) do
      table.insert(values, value)
    end
  end
  return values
end

-- What a join reads of its predecessors, from its job's join-input spec (JSON of {run,
-- predecessors, states}): their statuses and outputs, the kept states, the map counts and the
-- mapped instances' outputs in item order, from the `offset`-th (0-based, counted across the
-- mapped predecessors) and `count` of them at most (0: all). False for a spec it cannot
-- read, or over `limit` outputs in all (0: no limit).
function run.read_join_input(spec_json, limit, offset, count)
  local ok, spec = pcall(cjson.decode, spec_json)
  if not ok or type(spec) ~= 'table' or type(spec.run) ~= 'string'
      or type(spec.predecessors) ~= 'table' or type(spec.states) ~= 'table'
      or #spec.predecessors == 0 or #spec.states == 0 then return false end
  if limit > 0 and (#spec.predecessors > limit or #spec.states > limit) then return false end
  local steps = key.steps(spec.run)
  local statuses, outputs, counts = {}, {}, {}
  for n, predecessor in ipairs(spec.predecessors) do
    statuses[n] = predecessor .. '.status'
    outputs[n] = predecessor .. '.output'
    counts[n] = 'mapn:' .. predecessor
  end
  counts = redis.call('HMGET', key.join(spec.run), unpack(counts))
  local total = 0
  for n = 1, #counts do total = total + (tonumber(counts[n]) or 0) end
  if limit > 0 and total > limit then return false end
  offset = offset or 0
  local stop = total
  if count and count > 0 then stop = math.min(total, offset + count) end
  local mapped, seen = {}, 0  -- seen: the mapped outputs of the predecessors before
  for n, predecessor in ipairs(spec.predecessors) do
    local items = tonumber(counts[n]) or 0
    for item = math.max(offset - seen, 0), math.min(items, stop - seen) - 1 do
      table.insert(mapped, predecessor .. '-' .. item .. '.output')
    end
    seen = seen + items
  end
  return {redis.call('HMGET', steps, unpack(statuses)), redis.call('HMGET', steps, unpack(outputs)),
    redis.call('HMGET', key.state(spec.run), unpack(spec.states)), counts,
    hmget_chunked(steps, mapped)}
end
