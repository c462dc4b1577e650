-- driver_alive.lua: refresh a driver's heartbeat, with the server's clock.
--
-- KEYS[1]   the live driver set    tm:drivers
-- ARGV[1]   member "<owner tag> <job id>"
--
-- The failure monitor releases what a driver held, and ends its job's actors, once its
-- heartbeat is older than the driver timeout (the driver crashed without shutdown()).
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
return 1
