-- requeue.lua: hand a leased task back to a queue for another attempt, atomically.
--
-- KEYS[1]   the queue stream it was leased from   tm:q:{shape}
-- KEYS[2]   the queue to add it to (KEYS[1] when absent; a node queue's entry that may
--           run elsewhere goes back to its shape queue)
-- ARGV[1]   consumer group name
-- ARGV[2]   the leased entry id
-- ARGV[3..] field/value pairs of the new entry (the spec with its attempt bumped)
--
-- The entry is acknowledged first and the new one added only if that acknowledgement
-- took effect, all in one script: a crash can neither lose the task nor leave two live
-- copies of it, and requeueing the same entry twice adds it once. Returns the new
-- entry's id, or false when the entry was no longer pending.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return false
end
redis.call('XDEL', KEYS[1], ARGV[2])
return redis.call('XADD', KEYS[2] or KEYS[1], '*', unpack(ARGV, 3))
