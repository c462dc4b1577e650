-- reconstruct.lua: every copy of a shared-memory object is gone; make it again (run its
-- task once more) or record why it cannot be, exactly once however many readers noticed.
--
-- KEYS[1]   the object's hash                tm:{owner}:obj:{object_id}
-- KEYS[2]   its location set                 tm:{owner}:obj:{object_id}:loc
-- KEYS[3]   the queue the task goes back to  tm:q:{shape}   (any key when failing)
-- KEYS[4..] the hash and location set of each other return object of the task
-- ARGV[1]   the object's data as the reader saw it ("<size> <node_id>")
-- ARGV[2]   "resubmit" or "fail"
-- ARGV[3..] resubmit: the field/value pairs of the new queue entry; fail: the
--           serialized error that becomes the object's value
--
-- The object's data is compared first (compare-and-set): a reader that saw an older
-- copy, or comes after another reader already acted, changes nothing. Resubmitting
-- removes the object's value (readers wait for the new one, see complete.lua) and marks
-- it "rebuilding", with every sibling whose only copy was on the same node; the node it
-- was made on joins its location set (should that node come back, its copy is freed
-- with the object). Failing stores the error as its value (copies left on nodes that
-- come back are swept as orphans once the object is freed).
-- Returns 1 when this call acted, 0 when the object changed since the reader saw it,
-- -1 when it no longer exists (it was freed).
-- (KEYS[3] is outside the owner's hash slot: under Redis Cluster the queue append
-- needs a second step.)
local h = redis.call('HMGET', KEYS[1], 'kind', 'data')
if not h[1] then
  if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
  return 0
end
if h[1] ~= 'shm' or h[2] ~= ARGV[1] then
  return 0
end
local node = string.match(ARGV[1], '^%d+ (%S+)$')
if ARGV[2] == 'fail' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'kind', 'error', 'data', ARGV[3], 'size', #ARGV[3])
  return 1
end
if node then redis.call('SADD', KEYS[2], node) end
redis.call('HDEL', KEYS[1], 'kind', 'data')
redis.call('HSET', KEYS[1], 'state', 'rebuilding')
for j = 4, #KEYS, 2 do
  local s = redis.call('HMGET', KEYS[j], 'kind', 'data')
  if s[1] == 'shm' and string.match(s[2], '^%d+ (%S+)$') == node
      and redis.call('EXISTS', KEYS[j + 1]) == 0 then
    redis.call('HDEL', KEYS[j], 'kind', 'data')
    redis.call('HSET', KEYS[j], 'state', 'rebuilding')
    redis.call('SADD', KEYS[j + 1], node)
  end
end
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 3))
return 1
