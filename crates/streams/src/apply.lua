-- Applies a batch of items in order; each one is all or nothing.
-- KEYS: every key the batch names, once each.
-- ARGV[1] item count, then per item: versions-key index, aggregate id, version,
-- stream-key index (0 = no ack), group, entry id, lease-key index (0 = no fence), owner,
-- op count, then per op: name, key index, args.
-- Returns one reply per item, {code, value}; the codes are named alike in apply.rs:
local APPLIED, DUPLICATE, GAP, FENCED, REFUSED = 1, 0, 2, 3, 4
-- {APPLIED, version}; {DUPLICATE, current} (acked); {GAP, current}; {FENCED, 0};
-- {REFUSED, message} (nothing written, not acked).
local arity = {SET = 1, DEL = 0, ZADD = 2, ZREM = 1, HINCRBY = 2, HSET = 2, HDEL = 1}
-- SET and DEL succeed on a key of any type, so only the others are checked (every call from
-- Lua costs the script about a microsecond).
local want = {ZADD = 'zset', ZREM = 'zset', HINCRBY = 'hash', HSET = 'hash', HDEL = 'hash'}
local leases = {}
local out = {}
-- Pass 1 of an item: check every key's type and every HINCRBY field, so that pass 2 cannot
-- fail half-way. A key is asked once per item (a stats hash gets several HINCRBYs per event);
-- ops that want one key as two types are refused, as the second would fail after the first
-- had written.
local function integer(v)
  return not v or (#v <= 18 and string.find(v, '^%-?%d+$') ~= nil)
end
local function check(first, n)
  -- types[key]: what the item's earlier ops leave the key as ('none' after a DEL; 'fresh'
  -- for a hash the item creates after a SET or DEL, whose stored fields are gone). fields
  -- (made only when needed): values earlier HSET/HDELs of the item wrote, by key and field.
  -- One table per item in the common case: every allocation here costs every event.
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
    local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
    if op == 'SET' then redis.call('SET', key, ARGV[i + 2])
    elseif op == 'DEL' then redis.call('DEL', key)
    elseif op == 'ZADD' then redis.call('ZADD', key, ARGV[i + 2], ARGV[i + 3])
    elseif op == 'ZREM' then redis.call('ZREM', key, ARGV[i + 2])
    elseif op == 'HINCRBY' then redis.call('HINCRBY', key, ARGV[i + 2], ARGV[i + 3])
    elseif op == 'HSET' then redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3])
    elseif op == 'HDEL' then redis.call('HDEL', key, ARGV[i + 2])
    end
    i = i + 2 + arity[op]
  end
end
local i = 2
for item = 1, tonumber(ARGV[1]) do
  local versions, aggregate, version = KEYS[tonumber(ARGV[i])], ARGV[i + 1], tonumber(ARGV[i + 2])
  local stream, group, entry = tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5]
  local lease, owner, n = tonumber(ARGV[i + 6]), ARGV[i + 7], tonumber(ARGV[i + 8])
  local first = i + 9
  i = first
  for _ = 1, n do
    local a = arity[ARGV[i]]
    if a == nil then return redis.error_reply('unknown op ' .. tostring(ARGV[i])) end
    i = i + 2 + a
  end
  local function ack()
    if stream > 0 then redis.call('XACK', KEYS[stream], group, entry) end
  end
  -- Nothing in a batch writes a lease key, so one GET per lease serves the whole call.
  local holder, refused = true, nil
  if lease > 0 then
    if leases[lease] == nil then
      local got = redis.pcall('GET', KEYS[lease])
      if type(got) == 'table' and got.err then got = {err = got.err} end
      leases[lease] = got or false
    end
    if type(leases[lease]) == 'table' then
      refused = 'lease ' .. KEYS[lease] .. ': ' .. leases[lease].err
    end
    holder = leases[lease] == owner
  end
  local current = nil
  if refused == nil and holder then
    current = redis.pcall('HGET', versions, aggregate)
    if type(current) == 'table' and current.err then
      refused = current.err
    else
      current = tonumber(current or '0')
      if current == nil then
        refused = 'the applied version of ' .. aggregate .. ' in ' .. versions .. ' is not a number'
      end
    end
  end
  if refused then
    out[item] = {REFUSED, refused}
  elseif not holder then
    out[item] = {FENCED, 0}
  elseif version <= current then
    ack()
    out[item] = {DUPLICATE, current}
  elseif version ~= current + 1 then
    out[item] = {GAP, current}
  else
    local unfit = check(first, n)
    if unfit then
      out[item] = {REFUSED, unfit}
    else
      write(first, n)
      redis.call('HSET', versions, aggregate, version)
      ack()
      out[item] = {APPLIED, version}
    end
  end
end
return out
