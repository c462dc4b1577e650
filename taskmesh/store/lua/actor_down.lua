-- actor_down.lua: an actor's process is gone; restart it or declare it dead.
--
-- KEYS[1]   the actor's hash                tm:actor:{actor_id}
-- KEYS[2]   the actor's call stream         tm:actor:{actor_id}:calls
-- KEYS[3]   the queue it is created from    tm:q:{shape} (or its node / bundle queue)
-- KEYS[4]   the namespace's name table      tm:named:{namespace} (any key when unnamed)
-- ARGV[1]   actor id
-- ARGV[2]   "restart" (restart when max_restarts allows), "exit" (never restart) or
--           "drain" (its node is being drained: restart whenever max_restarts is not 0,
--           and, as Ray does for preempted nodes, without using up a restart: the
--           restart is counted in `restarts` and in `restarts_drained`, and only
--           restarts - restarts_drained is held against max_restarts)
-- ARGV[3]   death cause, recorded when the actor is declared dead (unless the hash has a
--           `kill_cause`, left by taskmesh.kill: then the actor dies of that kill)
-- ARGV[4]   now (ms)
-- ARGV[5]   node id the caller saw the actor on, or "" for no such condition: an actor
--           already restarted on another node is then left alone
-- ARGV[6..] extra field/value pairs of the re-queued creation entry (shape and soft, for
--           a node or bundle queue)
--
-- Returns {"restarting"}; {"dead", cause, e1, f1, e2, f2, ...} with the death cause recorded
-- and the call entries that were still pending (entry id, then its flat field/value list); or
-- {"already"} when an earlier call handled this actor. Restarting re-queues the creation
-- entry (attempt = restart count); dying drains the call stream in the same step, so the
-- caller fails every drained call and no later call can be appended (actor_call.lua).
local h = redis.call('HMGET', KEYS[1], 'state', 'restarts', 'max_restarts', 'no_restart',
                     'spec', 'init_name', 'name', 'node_id', 'restarts_drained', 'kill_cause')
local state, restarts, max_restarts = h[1], tonumber(h[2] or '0'), tonumber(h[3] or '0')
local drained = tonumber(h[9] or '0')
if state == 'DEAD' or not state or (ARGV[5] ~= '' and h[8] ~= ARGV[5]) then
  return {'already'}
end
local allowed = max_restarts == -1 or restarts - drained < max_restarts
if ARGV[2] == 'drain' then
  allowed = max_restarts ~= 0
end
if ARGV[2] ~= 'exit' and h[4] ~= '1' and allowed then
  if ARGV[2] == 'drain' then
    redis.call('HSET', KEYS[1], 'restarts_drained', drained + 1)
  end
  redis.call('HSET', KEYS[1], 'state', 'RESTARTING', 'restarts', restarts + 1, 'node_id', '', 'pid', '')
  redis.call('HDEL', KEYS[1], 'kill_cause')  -- a later death is not that kill's
  redis.call('XADD', KEYS[3], '*', 'task', ARGV[1], 'name', h[6], 'attempt', restarts + 1,
             'kind', 'actor', 'spec', h[5], unpack(ARGV, 6))
  return {'restarting'}
end
local cause = ARGV[3]
if h[10] and h[10] ~= '' then
  cause = h[10]
end
redis.call('HSET', KEYS[1], 'state', 'DEAD', 'death_cause', cause, 'end_ms', ARGV[4])
local out = {'dead', cause}
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
