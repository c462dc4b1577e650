-- renew_lease.lua: extend a lease, or give it up, only while we still hold it.
--
-- KEYS[1]   the lease key                     tm:monitor
-- ARGV[1]   the holder's id (the value its SET NX PX stored)
-- ARGV[2]   new time to live in ms; 0 releases the lease (deletes the key)
--
-- Returns 1 when the caller held the lease, 0 when it had expired or another holder
-- has it. Checking the value and extending it in one step means a holder whose lease
-- lapsed can neither extend nor delete its successor's lease.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[2]) == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
