-- ack.lua: acknowledge finished tasks and delete their queue entries in one command.
--
-- KEYS[1]   a queue stream                tm:q:{shape}
-- ARGV[1]   consumer group name
-- ARGV[2]   entry ids to acknowledge and delete, separated by spaces (one argument for
--           a whole batch: the client encodes each argument apart)
--
-- XACK alone would leave the entry in the stream, XDEL alone would leave it pending.
local ids = {}
for id in string.gmatch(ARGV[2], '%S+') do
  ids[#ids + 1] = id
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
return redis.call('XDEL', KEYS[1], unpack(ids))
