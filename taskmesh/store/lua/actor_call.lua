-- actor_call.lua: append method calls to a live actor's call stream.
--
-- KEYS[1]   the actor's hash          tm:actor:{actor_id}
-- KEYS[2]   the actor's call stream   tm:actor:{actor_id}:calls
-- ARGV      per call: m (its number of field/value pairs), then the m pairs
--
-- Returns {1}, or {0, death_cause} when the actor is dead (then nothing is appended):
-- the state check and the appends are one step, so no call can land in the stream of a
-- dead actor after its pending calls were failed (see actor_down.lua).
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'DEAD' or not state then
  return {0, redis.call('HGET', KEYS[1], 'death_cause') or 'the actor does not exist'}
end
local i = 1
while i <= #ARGV do
  local m = tonumber(ARGV[i])
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 1, i + 2 * m))
  i = i + 1 + 2 * m
end
return {1}
