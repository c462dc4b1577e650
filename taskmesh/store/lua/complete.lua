-- complete.lua: store finished tasks' return objects and notify their owner, once each.
--
-- KEYS[1]      the owner's done stream                          tm:{owner}:done
-- KEYS[2..]    the object hashes of every task, in task order   tm:{owner}:obj:{object_id}
--              (for a "rebuild" task: hash and location set of each)
-- KEYS[#KEYS]  the owner's fence hash                           tm:{owner}:fence
-- ARGV         per task: notice (msgpack, opaque here), n (its number of return
--              objects), then n pairs: kind ("value", "error" or "shm"), data (the
--              serialized value; for "shm", "<size> <node_id>" of the shared-memory copy)
--
-- A pair of kind "lineage" or "rebuild" is no object and takes no key: its data is the
-- task's queue entry (msgpack), stored as field `lineage` of its shared-memory objects
-- so that they can be made again when every copy is lost (reconstruct.lua). "rebuild"
-- marks a run that re-makes lost objects: its objects come with two keys each (hash,
-- location set); only those marked `state` = "rebuilding" are written (an object freed
-- meanwhile stays freed), a copy of any other one becomes an extra location, and the
-- owner is not notified again.
-- Tasks whose results travel in their notices alone, kept by their owner (it stores
-- one itself if the ref leaves its process), store nothing: their owner is only
-- notified, unless fenced out. They come together as n = -2, the "notice" then being a
-- msgpack list of [notice, fence data ("" for none)] pairs (one argument for a whole
-- batch: the client encodes each argument apart, and a batch of small results is mostly
-- arguments).
-- A pair of kind "fence" is no object either: its data "<task_id> <attempt>" names the
-- attempt that produced the results. When the fence hash holds a later attempt for the
-- task (the monitor retried or failed it: its node was declared dead, but was only cut
-- off and finished after all), the task's results are ignored whole: the old attempt
-- must not write an object the new one wrote and its owner may already have freed. (A
-- "rebuild" run only fills objects marked rebuilding, so it is not fenced.)
-- A fence hash with field `*` marks its owner gone (its process ended, or its job did:
-- Store.owners_gone): nothing is stored or notified for it any more, so a task that
-- finishes after its owner left no object and no done stream behind.
-- Each object starts held by its owner (field `held`, see release.lua).
-- All keys share the owner's hash tag, so this is one slot under Redis Cluster. A task
-- whose first object already exists was completed by an earlier attempt (a retried task
-- whose first attempt finished after all): the first result wins and the owner is
-- notified once. Returns how many tasks were stored.
local function size_of(kind, data)
  if kind == 'shm' then return tonumber(string.match(data, '^%d+')) or #data end
  return #data
end

local function rebuilt(obj, loc, kind, data, lineage)
  local h = redis.call('HMGET', obj, 'state', 'kind', 'data')
  if h[1] == 'rebuilding' then
    redis.call('HSET', obj, 'kind', kind, 'data', data, 'size', size_of(kind, data))
    redis.call('HDEL', obj, 'state')
    if kind == 'shm' and lineage then redis.call('HSET', obj, 'lineage', lineage) end
  elseif h[2] == 'shm' and kind == 'shm' then
    local node = string.match(data, '^%d+ (%S+)$')
    if node and node ~= string.match(h[3], '^%d+ (%S+)$') then redis.call('SADD', loc, node) end
  end
end

-- The fence hash exists only while some task of this owner was retried or failed by
-- the monitor, or once the owner is gone: one EXISTS per call spares the common case
-- an HGET per task.
local fences = redis.call('EXISTS', KEYS[#KEYS]) == 1
if fences and redis.call('HEXISTS', KEYS[#KEYS], '*') == 1 then return 0 end
local function fenced_out(fence)
  if not fences then return false end
  local task, attempt = string.match(fence, '^(%S+) (%d+)$')
  local least = task and redis.call('HGET', KEYS[#KEYS], task)
  return least and tonumber(attempt) < tonumber(least)
end

-- Notices go out together: one done-stream entry carries up to 64 of them, as fields
-- "1", "2", ... (wire.notices_of).
local notices = {}
local function send_notices()
  if #notices > 0 then
    redis.call('XADD', KEYS[1], '*', unpack(notices))
    notices = {}
  end
end
local function add_notice(notice)
  notices[#notices + 1] = tostring(#notices / 2 + 1)
  notices[#notices + 1] = notice
  if #notices >= 128 then send_notices() end
end

local k, i, stored = 2, 1, 0
while i <= #ARGV do
  local notice, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local lineage, rebuild, objs, fence = nil, false, {}, nil
  if n == -2 then  -- kept ones, packed: nothing else to read (no objects: below does nothing)
    for _, kept in ipairs(cmsgpack.unpack(notice)) do
      if kept[2] == '' or not fenced_out(kept[2]) then
        add_notice(kept[1])
        stored = stored + 1
      end
    end
    n = 0
  end
  for j = 0, n - 1 do
    local kind, data = ARGV[i + 2 * j], ARGV[i + 2 * j + 1]
    if kind == 'lineage' or kind == 'rebuild' then
      lineage, rebuild = data, kind == 'rebuild'
    elseif kind == 'fence' then
      fence = data
    else
      objs[#objs + 1] = {kind, data}
    end
  end
  i = i + 2 * n
  if fence and not rebuild and fenced_out(fence) then
    k = k + #objs
  elseif rebuild then
    for _, o in ipairs(objs) do
      rebuilt(KEYS[k], KEYS[k + 1], o[1], o[2], lineage)
      k = k + 2
    end
  else
    if #objs == 0 or redis.call('EXISTS', KEYS[k]) == 0 then
      for j, o in ipairs(objs) do
        local kind, data = o[1], o[2]
        redis.call('HSET', KEYS[k + j - 1], 'kind', kind, 'data', data, 'size', size_of(kind, data), 'held', 1)
        if kind == 'shm' and lineage then redis.call('HSET', KEYS[k + j - 1], 'lineage', lineage) end
      end
      if #objs > 0 then
        add_notice(notice)
        stored = stored + 1
      end
    else  -- a late or failed attempt: it still fills what is being made again
      for j, o in ipairs(objs) do
        if redis.call('HGET', KEYS[k + j - 1], 'state') == 'rebuilding' then
          redis.call('HSET', KEYS[k + j - 1], 'kind', o[1], 'data', o[2], 'size', size_of(o[1], o[2]))
          redis.call('HDEL', KEYS[k + j - 1], 'state')
        end
      end
    end
    k = k + #objs
  end
end
send_notices()
return stored
