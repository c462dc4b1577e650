-- mark_node_dead.lua: declare a node dead if its heartbeat is still too old, once.
--
-- KEYS[1]   the live node set                 tm:nodes:alive
-- KEYS[2]   the node's hash                   tm:node:{node_id}
-- KEYS[3]   nodes whose actors await recovery tm:nodes:lost
-- ARGV[1]   node id
-- ARGV[2]   cutoff (ms): dead only if its last heartbeat is at or before this
-- ARGV[3]   now (ms), recorded as end_ms
-- ARGV[4]   death cause, recorded as death_cause
--
-- Returns 1 when this call moved the node from alive to DEAD, 0 when it was already
-- gone or heartbeated since the caller looked: of two monitors racing on one node,
-- exactly one gets 1. (Under Redis Cluster the two keys need a common hash tag.)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'state', 'DEAD', 'end_ms', ARGV[3], 'death_cause', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
