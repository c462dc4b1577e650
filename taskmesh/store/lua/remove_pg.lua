-- remove_pg.lua: remove a placement group and give its reserved resources back.
--
-- KEYS[1]   the group's hash            tm:pg:{pg_id}
-- KEYS[2]   groups waiting to be placed tm:pgs:pending
-- KEYS[3..] the reservations of the nodes hosting its bundles   tm:node_reserved:{node_id}
-- ARGV[1]   group id
-- ARGV[2]   the node-channel prefix (orders go to prefix .. node_id)
-- ARGV[3..] the node ids of KEYS[3..], in order
--
-- Returns 1 when this call removed the group, 0 when it was removed already.
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'state') == 'REMOVED' then
  return 0
end
local prefix = ARGV[1] .. ':'
for i = 3, #KEYS do
  for _, field in ipairs(redis.call('HKEYS', KEYS[i])) do
    if string.sub(field, 1, #prefix) == prefix then
      redis.call('HDEL', KEYS[i], field)
    end
  end
  redis.call('PUBLISH', ARGV[2] .. ARGV[i], 'pg')
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'state', 'REMOVED', 'removed_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('SREM', KEYS[2], ARGV[1])
return 1
