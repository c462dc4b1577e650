-- submit.lua: append a batch of task entries to one queue stream.
--
-- KEYS[1]   the queue stream          tm:q:{shape}
-- ARGV      per entry: m (its number of field/value pairs), then the m pairs
--
-- One script call for many entries costs the client one command instead of one XADD
-- each. Returns the number of entries added.
local i, added = 1, 0
while i <= #ARGV do
  local m = tonumber(ARGV[i])
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + 2 * m))
  i = i + 1 + 2 * m
  added = added + 1
end
return added
