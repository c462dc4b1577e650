-- submission_new.lua: record a submitted job, unless its submission id is taken.
--
-- KEYS[1]   the job's hash          tm:submission:{submission_id}
-- KEYS[2]   the submissions index   tm:submissions
-- ARGV[1]   the submission id
-- ARGV[2]   submission time (ms), its score in the index
-- ARGV[3..] field, value, field, value, ... of the hash
--
-- Returns 1, or 0 when a job with this submission id exists (nothing is changed).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local fields = {}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
return 1
