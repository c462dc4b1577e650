-- release.lua: change who holds objects, and free every object nobody holds any more.
--
-- KEYS   four per object, all of one owner (one slot under Redis Cluster):
--        tm:{owner}:obj:{id}          the object's hash (field `held` while its owner holds it)
--        tm:{owner}:obj:{id}:loc      nodes holding extra shared-memory copies
--        tm:{owner}:obj:{id}:refs     holders besides the owner: "p:<process tag>" (a process
--                                     that borrowed a ref), "o:<object id>" (an object that
--                                     contains the ref) -> count
--        tm:{owner}:obj:{id}:nested   refs this object contains (released when it is freed)
-- ARGV   two per object: holder, delta. Holder "owner" with any delta drops the owner's hold;
--        delta 0 drops the holder whatever its count (a dead process); else HINCRBY.
--
-- An object is freed when it exists, its owner no longer holds it and no other holder is
-- left. Returns one entry per object: 0 while it lives, else {nodes, nested} for a freed
-- object: the nodes that may hold shared-memory copies (from a "shm" object's data
-- "<size> <node_id>" and its location set) and the refs it contained; a freed actor token
-- (kind "actor", see create_actor.lua) adds its actor id: {nodes, nested, actor_id}.
local out = {}
for i = 1, #ARGV, 2 do
  local k = (i - 1) * 2 + 1
  local obj, loc, refs, nested = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local holder, delta = ARGV[i], tonumber(ARGV[i + 1])
  -- 1 when this call took the owner's hold away: the object exists and is not held by
  -- its owner any more, so the common drop needs no EXISTS / HEXISTS to know it.
  local unheld = 0
  if holder == 'owner' then
    unheld = redis.call('HDEL', obj, 'held')
  elseif delta == 0 then
    redis.call('HDEL', refs, holder)
  elseif redis.call('HINCRBY', refs, holder, delta) <= 0 then
    redis.call('HDEL', refs, holder)
  end
  local result = 0
  if delta <= 0
      and (unheld == 1 or (redis.call('EXISTS', obj) == 1 and redis.call('HEXISTS', obj, 'held') == 0))
      and redis.call('EXISTS', refs) == 0 then
    local kind, data = unpack(redis.call('HMGET', obj, 'kind', 'data'))
    local nodes = {}
    if kind == 'shm' and data then
      local node = string.match(data, '^%d+ (%S+)$')
      if node then nodes[1] = node end
      for _, member in ipairs(redis.call('SMEMBERS', loc)) do
        if member ~= node then nodes[#nodes + 1] = member end
      end
    end
    result = {nodes, redis.call('SMEMBERS', nested)}
    if kind == 'actor' then result[3] = data end
    redis.call('UNLINK', obj, loc, nested)
  end
  out[#out + 1] = result
end
return out
