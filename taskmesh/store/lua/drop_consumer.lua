-- drop_consumer.lua: delete a dead node's consumer from a queue's group once it owns nothing.
--
-- KEYS[1]   a queue stream                    tm:q:{shape}
-- ARGV[1]   consumer group name
-- ARGV[2]   consumer name (a node id)
--
-- Returns 1 when the consumer was deleted, 0 when entries are still pending for it.
-- XGROUP DELCONSUMER discards the consumer's pending entries with it, so the check and
-- the delete are one step: an entry read in between could otherwise be lost.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
