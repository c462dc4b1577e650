-- requeue.lua: hand a leased task back to its queue for another attempt, atomically.
--
-- KEYS[1]   the task's queue stream      tm:q:{shape}
-- ARGV[1]   consumer group name
-- ARGV[2]   the leased entry id
-- ARGV[3..] field/value pairs of the new entry (the spec with its attempt bumped)
--
-- The new entry is added before the old one is acknowledged and deleted, all in one
-- script: a crash can neither lose the task nor leave two live copies of it.
local fields = {}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local new_id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return new_id
