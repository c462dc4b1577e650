-- actor_alive.lua: record an actor ALIVE on a node, unless it was killed meanwhile.
--
-- KEYS[1]   the actor's hash                tm:actor:{actor_id}
-- ARGV[1]   node id
-- ARGV[2]   the actor process's pid
-- ARGV[3]   now (ms), recorded as start_ms
--
-- Returns 1 when the actor is now ALIVE; 0 when it is DEAD (or unknown) or was killed
-- with no_restart (taskmesh.kill, or its job ended) while this incarnation was being
-- created: the caller must then end it. A kill order sent to the node is fire-and-forget
-- and may miss a process that is still being created; this check makes the kill stick.
local h = redis.call('HMGET', KEYS[1], 'state', 'no_restart')
if not h[1] or h[1] == 'DEAD' or h[2] == '1' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'ALIVE', 'node_id', ARGV[1], 'pid', ARGV[2], 'start_ms', ARGV[3])
return 1
