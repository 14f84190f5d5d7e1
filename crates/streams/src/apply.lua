-- (Sent after ops.lua, which defines `arity` and `write_op`.)
-- Applies a batch of items in order; each one is all or nothing.
-- An item is one event written to one or more generations of a read model (the active one,
-- and the one a rebuild is building): its targets.
-- KEYS: every key the batch names, once each.
-- ARGV[1] item count, then per item: aggregate id, version, stream-key index (0 = no ack),
-- group, entry id, lease-key index (0 = no fence), owner, generation-key index (0 = no guard),
-- expected active, expected building ('' = none), target count, then per target:
-- versions-key index, marker-key index (0 = none required), op count, then per op: name,
-- key index, args.
-- Returns one reply per item, {code, value}; the codes are named alike in apply.rs:
local APPLIED, DUPLICATE, GAP, FENCED, REFUSED, MOVED, NOT_READY = 1, 0, 2, 3, 4, 5, 6
-- {APPLIED, version} (at least one target applied, the others had it); {DUPLICATE, current}
-- (every target had it; acked); {GAP, current} (a target misses a predecessor: nothing
-- written); {FENCED, 0} (lease lost); {REFUSED, message} (nothing written, not acked);
-- {MOVED, 0} (the generations are not those planned for); {NOT_READY, 0} (a target's read
-- model has no marker: it is gone, or half gone).
-- SET and DEL succeed on a key of any type, so only the others are checked (every call from
-- Lua costs the script about a microsecond).
local want = {ZADD = 'zset', ZREM = 'zset', HINCRBY = 'hash', HSET = 'hash', HDEL = 'hash',
  ZKEEPHIGHEST = 'zset'}
-- Nothing in a batch writes a lease, a generation pointer or a marker, so one read of each
-- serves the whole call.
local leases, generations, markers = {}, {}, {}
local out = {}
-- Pass 1 of a target: check every key's type and every HINCRBY field, so that pass 2 cannot
-- fail half-way. A key is asked once per target (a stats hash gets several HINCRBYs per
-- event); ops that want one key as two types are refused, as the second would fail after the
-- first had written.
local function integer(v)
  return not v or (#v <= 18 and string.find(v, '^%-?%d+$') ~= nil)
end
local function check(first, n)
  -- types[key]: what the target's earlier ops leave the key as ('none' after a DEL; 'fresh'
  -- for a hash the target creates after a SET or DEL, whose stored fields are gone). fields
  -- (made only when needed): values earlier HSET/HDELs of the target wrote, by key and field.
  -- One table per target in the common case: every allocation here costs every event.
  local types, fields = {}, nil
  local i = first
  for _ = 1, n do
    local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
    local w = want[op]
    if w then
      local have = types[key] or redis.call('TYPE', key)['ok']
      local fresh = have == 'fresh' or (have == 'none' and types[key] == 'none')
      if have == 'fresh' then have = 'hash' end
      if have ~= 'none' and have ~= w then
        return 'WRONGTYPE ' .. key .. ' is a ' .. have .. ', ' .. op .. ' needs a ' .. w
      end
      types[key] = (fresh and w == 'hash') and 'fresh' or w
      if w == 'hash' then
        local field = ARGV[i + 2]
        local written = fields and fields[key]
        if op == 'HINCRBY' then
          local v = written and written[field]
          if v == nil and not fresh then v = redis.call('HGET', key, field) end
          if not integer(v) then return 'HINCRBY on a non-integer field of ' .. key end
          if written then written[field] = '0' end
        else
          fields = fields or {}
          fields[key] = written or {}
          fields[key][field] = op == 'HSET' and ARGV[i + 3] or false
        end
      end
    elseif op == 'SET' or op == 'DEL' then
      types[key] = op == 'SET' and 'string' or 'none'
      if fields then fields[key] = nil end
    end
    i = i + 2 + arity[op]
  end
  return nil
end
-- Pass 2: write.
local function write(first, n)
  local i = first
  for _ = 1, n do
    local op = ARGV[i]
    write_op(op, KEYS[tonumber(ARGV[i + 1])], i + 2)
    i = i + 2 + arity[op]
  end
end
-- A value read with pcall: data problems (a key of the wrong type) are answered per item,
-- never raised, so they stay with the item that met them.
local function read(cmd, key, ...)
  local got = redis.pcall(cmd, key, ...)
  if type(got) == 'table' and got.err then return nil, key .. ': ' .. got.err end
  return got, nil
end
-- Per target of the item at hand, reused from item to item (no table per item: every
-- allocation here costs every event): versions key, marker index, first op, op count, and
-- whether the target takes the item.
local tv, tm, tf, tn, tt = {}, {}, {}, {}, {}
local i = 2
for item = 1, tonumber(ARGV[1]) do
  local aggregate, version = ARGV[i], tonumber(ARGV[i + 1])
  local stream, group, entry = tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4]
  local lease, owner = tonumber(ARGV[i + 5]), ARGV[i + 6]
  local guard, active, building = tonumber(ARGV[i + 7]), ARGV[i + 8], ARGV[i + 9]
  local count = tonumber(ARGV[i + 10])
  i = i + 11
  for t = 1, count do
    local n = tonumber(ARGV[i + 2])
    tv[t], tm[t], tf[t], tn[t] = KEYS[tonumber(ARGV[i])], tonumber(ARGV[i + 1]), i + 3, n
    i = i + 3
    for _ = 1, n do
      local a = arity[ARGV[i]]
      if a == nil then return redis.error_reply('unknown op ' .. tostring(ARGV[i])) end
      i = i + 2 + a
    end
  end
  local refused, reply = nil, nil
  if lease > 0 then
    if leases[lease] == nil then
      local got, err = read('GET', KEYS[lease])
      leases[lease] = err and {err = err} or got or false
    end
    if type(leases[lease]) == 'table' then
      refused = 'lease ' .. leases[lease].err
    elseif leases[lease] ~= owner then
      reply = {FENCED, 0}
    end
  end
  if not refused and not reply and guard > 0 then
    if generations[guard] == nil then
      local got, err = read('HMGET', KEYS[guard], 'active', 'building')
      generations[guard] = err and {err = err} or {got[1] or '', got[2] or ''}
    end
    local g = generations[guard]
    if g.err then
      refused = 'generations ' .. g.err
    elseif g[1] ~= active or g[2] ~= building then
      reply = {MOVED, 0}
    end
  end
  if not refused and not reply then
    for t = 1, count do
      local m = tm[t]
      if m > 0 then
        if markers[m] == nil then markers[m] = redis.call('EXISTS', KEYS[m]) == 1 end
        if not markers[m] then reply = {NOT_READY, 0} end
      end
    end
  end
  -- Each target's applied version decides what the item does there; a gap anywhere holds the
  -- whole item back, so no generation ever gets ahead of another.
  local takers, current_first = 0, nil
  if not refused and not reply then
    for t = 1, count do
      local got, err = read('HGET', tv[t], aggregate)
      local current = not err and tonumber(got or '0') or nil
      tt[t] = false
      if err then
        refused = err
        break
      elseif current == nil then
        refused = 'the applied version of ' .. aggregate .. ' in ' .. tv[t] .. ' is not a number'
        break
      elseif version > current + 1 then
        reply = reply or {GAP, current}
      elseif version == current + 1 then
        tt[t], takers = true, takers + 1
      end
      current_first = current_first or current
    end
  end
  if refused then
    out[item] = {REFUSED, refused}
  elseif reply then
    out[item] = reply
  else
    local unfit = nil
    for t = 1, count do
      if tt[t] and not unfit then unfit = check(tf[t], tn[t]) end
    end
    if unfit then
      out[item] = {REFUSED, unfit}
    else
      for t = 1, count do
        if tt[t] then
          write(tf[t], tn[t])
          redis.call('HSET', tv[t], aggregate, version)
        end
      end
      if stream > 0 then redis.call('XACK', KEYS[stream], group, entry) end
      if takers > 0 then
        out[item] = {APPLIED, version}
      else
        out[item] = {DUPLICATE, current_first or 0}
      end
    end
  end
end
return out
