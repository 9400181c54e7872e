-- Move retries whose delay has passed from RQ's scheduled registries back to their queues
-- (what RQ's scheduler does), waking idle workers. ARGV: the head, the queues (a list).
-- Returns how many jobs were moved.
local queues = read_list(FIRST)
local moved = 0
for _, queue in ipairs(queues) do
  local ids = rq.enqueue_due(queue)
  if #ids > 0 then wake.queue(queue) end
  moved = moved + #ids
end
return moved
