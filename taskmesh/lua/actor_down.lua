-- actor_down.lua: an actor's process is gone; restart it or declare it dead.
--
-- KEYS[1]   the actor's hash                tm:actor:{actor_id}
-- KEYS[2]   the actor's call stream         tm:actor:{actor_id}:calls
-- KEYS[3]   the queue of its creation shape tm:q:{shape}
-- KEYS[4]   the namespace's name table      tm:named:{namespace} (any key when unnamed)
-- ARGV[1]   actor id
-- ARGV[2]   "restart" (restart when max_restarts allows) or "exit" (never restart)
-- ARGV[3]   death cause, recorded when the actor is declared dead
-- ARGV[4]   now (ms)
-- ARGV[5]   node id the caller saw the actor on, or "" for no such condition: an actor
--           already restarted on another node is then left alone
--
-- Returns {"restarting"}; {"dead", e1, f1, e2, f2, ...} with the call entries that were
-- still pending (entry id, then its flat field/value list); or
-- {"already"} when an earlier call handled this actor. Restarting re-queues the creation
-- entry (attempt = restart count); dying drains the call stream in the same step, so the
-- caller fails every drained call and no later call can be appended (actor_call.lua).
local h = redis.call('HMGET', KEYS[1], 'state', 'restarts', 'max_restarts', 'no_restart',
                     'spec', 'init_name', 'name', 'node_id')
local state, restarts, max_restarts = h[1], tonumber(h[2] or '0'), tonumber(h[3] or '0')
if state == 'DEAD' or not state or (ARGV[5] ~= '' and h[8] ~= ARGV[5]) then
  return {'already'}
end
if ARGV[2] == 'restart' and h[4] ~= '1' and (max_restarts == -1 or restarts < max_restarts) then
  redis.call('HSET', KEYS[1], 'state', 'RESTARTING', 'restarts', restarts + 1, 'node_id', '', 'pid', '')
  redis.call('XADD', KEYS[3], '*', 'task', ARGV[1], 'name', h[6], 'attempt', restarts + 1,
             'kind', 'actor', 'spec', h[5])
  return {'restarting'}
end
redis.call('HSET', KEYS[1], 'state', 'DEAD', 'death_cause', ARGV[3], 'end_ms', ARGV[4])
local out = {'dead'}
local entries = redis.call('XRANGE', KEYS[2], '-', '+')
for _, entry in ipairs(entries) do
  out[#out + 1] = entry[1]
  out[#out + 1] = entry[2]
end
redis.call('DEL', KEYS[2])
if h[7] and h[7] ~= '' and redis.call('HGET', KEYS[4], h[7]) == ARGV[1] then
  redis.call('HDEL', KEYS[4], h[7])
end
return out
