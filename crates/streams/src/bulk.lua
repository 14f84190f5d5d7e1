-- (Sent after ops.lua, which defines `arity` and `write_op`.)
-- Writes runs of a generation being built, each run one aggregate's events folded together,
-- guarded by the aggregate's applied version only: no per-key type checks, no marker, no
-- lease, no acknowledgement (see bulk.rs for why that is safe there and only there).
-- KEYS[1] the generation pointer, KEYS[2] the versions hash, then one key per op, in order.
-- ARGV[1] the generation that must still be the one being built, ARGV[2] run count, then per
-- run: aggregate id, the applied version it was planned from, the version it ends at, op
-- count, then per op: name, args.
-- Returns -1 when the generation is no longer the one being built (nothing written), else
-- one flag per run: 1 written, 0 its applied version was not the one planned from (nothing of
-- it written).
if redis.call('HGET', KEYS[1], 'building') ~= ARGV[1] then return -1 end
local runs = tonumber(ARGV[2])
-- Every run's applied version in one read, every new one in one write: two calls per call
-- instead of two per run (each call from Lua costs about a microsecond).
local aggregates, at = {}, 3
for r = 1, runs do
  aggregates[r] = ARGV[at]
  local n = tonumber(ARGV[at + 3])
  at = at + 4
  for _ = 1, n do
    local a = arity[ARGV[at]]
    if a == nil then return redis.error_reply('unknown op ' .. tostring(ARGV[at])) end
    at = at + 1 + a
  end
end
local current = redis.call('HMGET', KEYS[2], unpack(aggregates))
local out, moved = {}, {}
local i, k = 3, 3
for r = 1, runs do
  local aggregate, expected, version, n = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  i = i + 4
  local take = tonumber(current[r] or '0') == expected
  out[r] = take and 1 or 0
  for _ = 1, n do
    local op, key = ARGV[i], KEYS[k]
    if take then write_op(op, key, i + 1) end
    i, k = i + 1 + arity[op], k + 1
  end
  if take then
    moved[#moved + 1] = aggregate
    moved[#moved + 1] = version
  end
end
if #moved > 0 then redis.call('HSET', KEYS[2], unpack(moved)) end
return out
