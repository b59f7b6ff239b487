#!lua name=handoff
--[[
The cache coordinator's functions (Redis 7 FUNCTION LOAD; scripts/coordinator
loads them). A chunk's whole state is one hash, ho:c:<hex digest>:
  i:<edge>:<image>  1   an image or running VM that edge registered contains it
  e:<edge>   unix s     an edge holds it (when it last said so)
  l:<lease>  unix ms    a handoff in flight needs it, until then
  u          unix s     when it last lost its last image
Every call touches that one key, so it is atomic by itself, idempotent
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

-- FCALL ho_may_delete 1 KEY EDGE GRACE_S: 1 when EDGE may drop its copy:
-- no image contains the chunk, no live lease needs it, and it has been
-- unreferenced for GRACE_S. Expired leases are removed on the way. The edge
-- stays a holder until it says it dropped the copy (ho_forget): an edge
-- asks about more candidates than it ends up deleting.
redis.register_function('ho_may_delete', function(keys, args)
  local k, grace_ms = keys[1], tonumber(args[2]) * 1000
  local f = redis.call('HGETALL', k)
  local now, ok = now_ms(), 1
  for i = 1, #f, 2 do
    local name, v = f[i], f[i + 1]
    local p = string.sub(name, 1, 2)
    if p == 'i:' then
      ok = 0
    elseif p == 'l:' then
      if tonumber(v) > now then ok = 0 else redis.call('HDEL', k, name) end
    elseif name == 'u' and tonumber(v) * 1000 + grace_ms > now then
      ok = 0
    end
  end
  return ok
end)

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
