-- Create runs and their first steps: one call for a chunk of runs of one graph and start.
-- ARGV: the head, a submission (FIELDS.submission), a count, then per run its new_run
-- (FIELDS.new_run) and its start step's planned job (FIELDS.job and its hash fields).
-- `joins` is JSON {join: arrivals expected} for joins some of whose predecessors cannot run
-- from this start. `deadline` (seconds, or '') puts the run in the deadlines set;
-- `max_steps` (0: none) is the run's step budget (run.take_steps).
-- A run with an idempotency key is created once per key: `idem:<key>` holds its run id from
-- its creation until it expires with the run's other keys (mark_saved), and after that SQL
-- knows the key. So a caller first claims the key (action `claim`: `idem:<key>` holds
-- 'claim <run id>' for claim_ms), looks it up in SQL, then creates the run (`create`) or lets
-- the claim go (`release`, the key is in SQL); a claim that expired meanwhile creates nothing.
-- Returns per run {status, run id}, as protocol.Submitted reads it (sent again after a
-- timeout, the first call's reply).
local kept = recall()
if kept then return kept end
local s, i = read_record(FIELDS.submission, FIRST)
local joins = cjson.decode(s.joins)
local count = tonumber(ARGV[i]); i = i + 1

local function create(r, job)
  run.bind(r.run_id)
  if redis.call('EXISTS', run.key) == 1 then return 'taken' end
  redis.call('HSET', run.key, 'status', 'queued', 'start', s.start, 'package', s.package,
    'graph', s.graph, 'version', s.version, 'input', r.input, 'created_at', NOW_ISO, 'pending', 0)
  if r.key ~= '' then
    redis.call('HSET', run.key, 'idempotency_key', r.key)
    redis.call('SET', key.idempotency(r.key), r.run_id)  -- no TTL until the run is in SQL
  end
  if s.deadline ~= '' then  -- the watchdog fails the run once its deadline passes
    local at = NOW + tonumber(s.deadline)
    redis.call('HSET', run.key, 'deadline', s.deadline, 'deadline_at', string.format('%.3f', at))
    redis.call('ZADD', key.deadlines, at, run.id)
  end
  run.budget = tonumber(s.max_steps) > 0 and tonumber(s.max_steps) or false
  if run.budget then redis.call('HSET', run.key, 'max_steps', s.max_steps, 'steps', 0) end
  for join, left in pairs(joins) do
    redis.call('HSET', run.join, 'left:' .. join, left)
  end
  redis.call('ZADD', key.live_runs, NOW, run.id)
  run.create_job(s.start, job)
  run.apply_pending()
  return 'created'
end

local replies = {}
for n = 1, count do
  local r, job
  r, i = read_record(FIELDS.new_run, i)
  job, i = read_record(FIELDS.job, i)
  job.first, job.last = i, i + tonumber(job.field_count) - 1
  i = job.last + 1
  local status, id = nil, r.run_id
  if r.key == '' then
    status = create(r, job)
  else
    local idem = key.idempotency(r.key)
    local held, mine = redis.call('GET', idem), 'claim ' .. r.run_id
    if held and string.sub(held, 1, 6) ~= 'claim ' then
      status, id = 'existing', held
    elseif r.action == 'claim' then
      if not held then redis.call('SET', idem, mine, 'PX', s.claim_ms) end
      status = (not held or held == mine) and 'claimed' or 'busy'
    elseif held ~= mine then
      status = 'busy'  -- the claim expired: start again
    elseif r.action == 'release' then
      redis.call('DEL', idem)
      status = 'released'
    else
      status = create(r, job)
      if status == 'taken' then redis.call('DEL', idem) end
    end
  end
  replies[n] = {status, id}
end
return remember(replies)
