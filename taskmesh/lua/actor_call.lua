-- actor_call.lua: append a method call to a live actor's call stream.
--
-- KEYS[1]   the actor's hash          tm:actor:{actor_id}
-- KEYS[2]   the actor's call stream   tm:actor:{actor_id}:calls
-- ARGV      field/value pairs of the call entry
--
-- Returns {1, entry_id}, or {0, death_cause} when the actor is dead: the state check
-- and the append are one step, so no call can land in the stream of a dead actor after
-- its pending calls were failed (see actor_down.lua).
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'DEAD' or not state then
  return {0, redis.call('HGET', KEYS[1], 'death_cause') or 'the actor does not exist'}
end
return {1, redis.call('XADD', KEYS[2], '*', unpack(ARGV))}
