#!lua name=handoff
--[[
The cache coordinator's functions (Redis 7 FUNCTION LOAD; scripts/coordinator
loads them). A chunk's whole state is one hash, ho:c:<hex digest>:
  i:<edge>:<image>  1   an image or running VM that edge registered contains it
  e:<edge>   unix s     an edge holds it (when it last said so)
  l:<lease>  unix ms    a handoff in flight needs it, until then
  u          unix s     when it last lost its last image
An edge that serves its cache says where in ho:edge:<edge> (field addr,
tcp:HOST:PORT; plain HSET). Every call touches that one key, so it is atomic by itself, idempotent
(setting a field twice is setting it once), and runs on whichever Redis
Cluster node owns the key. Plain HSET registers, reports and leases; the
functions below are the decisions that must read and write in one step.
]]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A hash with nothing but its 'u' stamp describes a chunk nobody holds,
-- needs or references: it goes, so the state stays proportional to caches.
local function drop_if_empty(k)
  local n = redis.call('HLEN', k)
  if n == 0 or (n == 1 and redis.call('HEXISTS', k, 'u') == 1) then
    redis.call('DEL', k)
  end
end

-- FCALL ho_version 0
redis.register_function{function_name = 'ho_version', callback = function() return 1 end,
  flags = {'no-writes'}}

-- FCALL ho_unref 1 KEY EDGE:IMAGE: that registration no longer contains the chunk.
-- Returns 1 when no image is left (the grace period starts).
redis.register_function('ho_unref', function(keys, args)
  local k = keys[1]
  redis.call('HDEL', k, 'i:' .. args[1])
  for _, f in ipairs(redis.call('HKEYS', k)) do
    if string.sub(f, 1, 2) == 'i:' then return 0 end
  end
  redis.call('HSET', k, 'u', math.floor(now_ms() / 1000))
  drop_if_empty(k)
  return 1
end)

-- FCALL ho_may_delete 1 KEY EDGE GRACE_S [COPIES]: 1 when EDGE may drop
-- its copy. No live lease may need it (expired leases are removed on the
-- way). Then either no image contains the chunk and it has been unreferenced
-- for GRACE_S, or (COPIES > 0) images contain it but none of EDGE's, at least
-- COPIES other edges hold it and one of them registered it: the chunk lives
-- on where it is referenced, and this copy was an extra. The edge stays a
-- holder until it says it dropped the copy (ho_forget): an edge asks about
-- more candidates than it ends up deleting.
redis.register_function('ho_may_delete', function(keys, args)
  local k, edge, grace_ms = keys[1], args[1], tonumber(args[2]) * 1000
  local copies = tonumber(args[3] or '0')
  local f = redis.call('HGETALL', k)
  local now, leased, young, regs, mine = now_ms(), false, false, 0, false
  local registrants, holders, others = {}, {}, 0
  for i = 1, #f, 2 do
    local name, v = f[i], f[i + 1]
    local p = string.sub(name, 1, 2)
    if p == 'i:' then
      local owner = string.match(name, '^i:([^:]+):')
      regs = regs + 1
      if owner == edge then mine = true elseif owner then registrants[owner] = true end
    elseif p == 'e:' then
      local holder = string.sub(name, 3)
      holders[holder] = true
      if holder ~= edge then others = others + 1 end
    elseif p == 'l:' then
      if tonumber(v) > now then leased = true else redis.call('HDEL', k, name) end
    elseif name == 'u' and tonumber(v) * 1000 + grace_ms > now then
      young = true
    end
  end
  if leased then return 0 end
  if regs == 0 then return young and 0 or 1 end
  if mine or copies <= 0 or others < copies then return 0 end
  for owner in pairs(registrants) do
    if holders[owner] then return 1 end
  end
  return 0
end)

-- FCALL ho_keep 1 KEY EDGE AGE_S HALF_LIFE_S: what EDGE's copy is worth
-- keeping, in millionths: popular (every image or running VM that contains
-- it, on any edge, counts), recent (halved every HALF_LIFE_S since EDGE last
-- used it) and scarce (divided by one plus the other edges that hold it).
-- Edges collect the lowest first.
redis.register_function{function_name = 'ho_keep', flags = {'no-writes'}, callback = function(keys, args)
  local edge, age, half = args[1], tonumber(args[2]), tonumber(args[3])
  local f = redis.call('HGETALL', keys[1])
  local regs, others = 0, 0
  for i = 1, #f, 2 do
    local p = string.sub(f[i], 1, 2)
    if p == 'i:' then regs = regs + 1
    elseif p == 'e:' and string.sub(f[i], 3) ~= edge then others = others + 1 end
  end
  local worth = (1 + regs) * 0.5 ^ (age / half) / (1 + others)
  return math.floor(worth * 1e6)
end}

-- FCALL ho_forget 1 KEY EDGE: EDGE dropped its copy.
redis.register_function('ho_forget', function(keys, args)
  redis.call('HDEL', keys[1], 'e:' .. args[1])
  drop_if_empty(keys[1])
  return 1
end)

-- FCALL ho_release 1 KEY LEASE: the handoff is done with the chunk.
redis.register_function('ho_release', function(keys, args)
  redis.call('HDEL', keys[1], 'l:' .. args[1])
  drop_if_empty(keys[1])
  return 1
end)

-- FCALL ho_holders 1 KEY: the edges that hold the chunk, and how many
-- images contain it (for a destination choosing where to fetch from).
redis.register_function{function_name = 'ho_holders', flags = {'no-writes'}, callback = function(keys)
  local f = redis.call('HGETALL', keys[1])
  local edges, refs = {}, 0
  for i = 1, #f, 2 do
    local p = string.sub(f[i], 1, 2)
    if p == 'e:' then edges[#edges + 1] = string.sub(f[i], 3)
    elseif p == 'i:' then refs = refs + 1 end
  end
  return {refs, edges}
end}
