-- create_actor.lua: register a new actor (and its name), or find the existing one.
--
-- KEYS[1]   the actor's hash                 tm:actor:{actor_id}
-- KEYS[2]   the actor's call stream          tm:actor:{actor_id}:calls
-- KEYS[3]   the job's actor set              tm:job:{job_id}:actors
-- KEYS[4]   the namespace's name table       tm:named:{namespace}   (only for named actors)
-- KEYS[5]   the set of every actor           tm:actors
-- KEYS[6]   the actor's token object         tm:{owner}:obj:{token_id}  (see below)
-- ARGV[1]   actor id
-- ARGV[2]   name ("" for none)
-- ARGV[3]   "1" to return an existing actor of that name instead of failing
-- ARGV[4]   "1" to write the actor's token: an object (kind "actor", data the actor id)
--           held by its creator, whose holders keep the actor alive (release.lua returns
--           the actor id when it frees it); "0" for a detached actor
-- ARGV[5..] field/value pairs of the actor's hash
--
-- Returns {"created", id}, {"existing", id} or {"taken", id}. The name check and the
-- registration are one step, so two drivers cannot both create "counter".
-- (KEYS[4] and KEYS[5] are outside the actor's hash slot: under Redis Cluster, named
-- actors need the name table in the actor's slot or a two-step registration, and the
-- set of actors a step of its own. KEYS[6] shares the actor's slot: both carry the
-- creator's tag.)
local name = ARGV[2]
if name ~= '' then
  local existing = redis.call('HGET', KEYS[4], name)
  if existing then
    if ARGV[3] == '1' then
      return {'existing', existing}
    end
    return {'taken', existing}
  end
end
local fields = {}
for i = 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('XGROUP', 'CREATE', KEYS[2], 'actor', '0', 'MKSTREAM')
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
if name ~= '' then
  redis.call('HSET', KEYS[4], name, ARGV[1])
end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[6], 'kind', 'actor', 'data', ARGV[1], 'size', 0, 'held', 1)
end
return {'created', ARGV[1]}
