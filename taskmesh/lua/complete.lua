-- complete.lua: store finished tasks' return objects and notify their owner, once each.
--
-- KEYS[1]      the owner's done stream                          tm:{owner}:done
-- KEYS[2..]    the object hashes of every task, in task order   tm:{owner}:obj:{object_id}
-- ARGV         per task: notice (msgpack, opaque here), n (its number of return
--              objects), then n pairs: kind ("value", "error" or "shm"), data (the
--              serialized value; for "shm", "<size> <node_id>" of the shared-memory copy)
--
-- Each object starts held by its owner (field `held`, see release.lua).
-- All keys share the owner's hash tag, so this is one slot under Redis Cluster. A task
-- whose first object already exists was completed by an earlier attempt (a retried task
-- whose first attempt finished after all): the first result wins and the owner is
-- notified once. Returns how many tasks were stored.
local k, i, stored = 2, 1, 0
while i <= #ARGV do
  local notice, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  if n == 0 or redis.call('EXISTS', KEYS[k]) == 0 then
    for j = 0, n - 1 do
      local kind, data = ARGV[i + 2 * j], ARGV[i + 2 * j + 1]
      local size = #data
      if kind == 'shm' then size = tonumber(string.match(data, '^%d+')) or size end
      redis.call('HSET', KEYS[k + j], 'kind', kind, 'data', data, 'size', size, 'held', 1)
    end
    if n > 0 then
      redis.call('XADD', KEYS[1], '*', 'n', notice)
      stored = stored + 1
    end
  end
  k = k + n
  i = i + 2 * n
end
return stored
