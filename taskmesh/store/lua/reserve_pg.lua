-- reserve_pg.lua: reserve a placement group's bundles on their nodes, all or none.
--
-- KEYS[1]   the group's hash            tm:pg:{pg_id}
-- KEYS[2]   the live node set           tm:nodes:alive
-- KEYS[3]   groups waiting to be placed tm:pgs:pending
-- KEYS[4..] per node of the plan, two keys: its hash tm:node:{node_id}, then its
--           reservations tm:node_reserved:{node_id} ("<pg>:<bundle>" -> resources JSON)
-- ARGV[1]   group id
-- ARGV[2]   the plan, JSON: [[key index of the node's hash (4, 6, ...), node id, bundle index,
--           {resource: amount}], ...]
-- ARGV[3]   the node-channel prefix (orders go to prefix .. node_id)
--
-- The plan was computed from a snapshot; here every node is checked again against its
-- total minus what is already reserved on it, so two groups placed at once never
-- overcommit a node. Returns 1 when placed, 0 when a node no longer has room, -1 when a
-- node of the plan is dead, -2 when the group is no longer waiting (removed or placed).
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'PENDING' and state ~= 'RESCHEDULING' then
  return -2
end
local plan = cjson.decode(ARGV[2])
local used, total, node_of = {}, {}, {}
for _, b in ipairs(plan) do
  local k = b[1]
  if used[k] == nil then
    if not redis.call('ZSCORE', KEYS[2], b[2]) or redis.call('HGET', KEYS[k], 'state') ~= 'ALIVE' then
      return -1
    end
    total[k] = cjson.decode(redis.call('HGET', KEYS[k], 'resources_total') or '{}')
    used[k] = {}
    for _, raw in ipairs(redis.call('HVALS', KEYS[k + 1])) do
      for name, v in pairs(cjson.decode(raw)) do used[k][name] = (used[k][name] or 0) + v end
    end
    node_of[k] = b[2]
  end
  for name, v in pairs(b[4]) do used[k][name] = (used[k][name] or 0) + v end
end
for k, sums in pairs(used) do
  for name, v in pairs(sums) do
    if v > (total[k][name] or 0) + 1e-9 then
      return 0
    end
  end
end
local raw_nodes = redis.call('HGET', KEYS[1], 'bundle_nodes')
local nodes = (raw_nodes and raw_nodes ~= '') and cjson.decode(raw_nodes) or {}
for _, b in ipairs(plan) do
  redis.call('HSET', KEYS[b[1] + 1], ARGV[1] .. ':' .. b[3], cjson.encode(b[4]))
  nodes[tostring(b[3])] = b[2]
end
local placed = 0
for _ in pairs(nodes) do placed = placed + 1 end
redis.call('HSET', KEYS[1], 'bundle_nodes', cjson.encode(nodes))
if placed >= tonumber(redis.call('HGET', KEYS[1], 'bundle_count')) then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'state', 'CREATED', 'created_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('SREM', KEYS[3], ARGV[1])
end
for _, node in pairs(node_of) do
  redis.call('PUBLISH', ARGV[3] .. node, 'pg')
end
return 1
