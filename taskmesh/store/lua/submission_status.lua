-- submission_status.lua: move a submitted job on, only from the statuses given, so that
-- the supervisor, `job stop` and a reader that finds the supervisor dead never undo each
-- other (a terminal status is never left).
--
-- KEYS[1]   the job's hash          tm:submission:{submission_id}
-- ARGV[1]   the statuses it may move from, space-separated
-- ARGV[2]   the new status ("" keeps it: only the fields are set)
-- ARGV[3..] field, value, ... set with it
--
-- Returns {1 or 0 (changed or not), the status found ("" when there is no such job)}.
local current = redis.call('HGET', KEYS[1], 'status')
if not current then
  return {0, ''}
end
local allowed = false
for status in string.gmatch(ARGV[1], '%S+') do
  if status == current then
    allowed = true
  end
end
if not allowed then
  return {0, current}
end
local fields = {}
if ARGV[2] ~= '' then
  fields[1] = 'status'
  fields[2] = ARGV[2]
end
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
if #fields > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
end
return {1, current}
