-- complete.lua: store one task's return objects and notify their owner, exactly once.
--
-- KEYS[1]      the owner's done stream            tm:{owner}:done
-- KEYS[2..n]   one object hash per return object   tm:{owner}:obj:{object_id}
-- ARGV[1]      completion notice (msgpack, opaque here) appended to the done stream
-- ARGV[2k]     kind of return object k (k = 1..n-1): "value" or "error"
-- ARGV[2k+1]   serialized data of return object k
--
-- All keys share the owner's hash tag, so this is one slot under Redis Cluster.
-- Returns 1 when the results were stored, 0 when an earlier attempt of the same task
-- already stored them (a retried task whose first attempt finished after all): the
-- first result wins and the owner is notified once.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
for i = 2, #KEYS do
  local kind = ARGV[2 * (i - 1)]
  local data = ARGV[2 * (i - 1) + 1]
  redis.call('HSET', KEYS[i], 'kind', kind, 'data', data, 'size', #data)
end
redis.call('XADD', KEYS[1], '*', 'n', ARGV[1])
return 1
