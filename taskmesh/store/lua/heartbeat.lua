-- heartbeat.lua: refresh a live node's heartbeat, with the server's clock.
--
-- KEYS[1]   the live node set     tm:nodes:alive
-- KEYS[2]   the node's hash       tm:node:{node_id}
-- ARGV[1]   node id
-- ARGV[2]   free resources as JSON, or "" when unchanged
--
-- Returns the number of live nodes, or -1 when the node was declared DEAD: its work has
-- been handed to others, so it must not come back (the agent exits). The score is the
-- Redis server's time, so agents' clocks never matter to the failure monitor.
if redis.call('HGET', KEYS[2], 'state') == 'DEAD' then
  return -1
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[2], 'resources_available', ARGV[2])
end
return redis.call('ZCARD', KEYS[1])
