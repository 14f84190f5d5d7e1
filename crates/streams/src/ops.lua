-- The read-model operations, shared by the apply script and the bulk script (each is sent as
-- this chunk followed by its own): how many arguments follow an operation's key, and how to
-- write one whose first argument is ARGV[a].
local arity = {SET = 1, DEL = 0, ZADD = 2, ZREM = 1, HINCRBY = 2, HSET = 2, HDEL = 1, ZKEEPHIGHEST = 1}
local function write_op(op, key, a)
  if op == 'SET' then redis.call('SET', key, ARGV[a])
  elseif op == 'DEL' then redis.call('DEL', key)
  elseif op == 'ZADD' then redis.call('ZADD', key, ARGV[a], ARGV[a + 1])
  elseif op == 'ZREM' then redis.call('ZREM', key, ARGV[a])
  elseif op == 'HINCRBY' then redis.call('HINCRBY', key, ARGV[a], ARGV[a + 1])
  elseif op == 'HSET' then redis.call('HSET', key, ARGV[a], ARGV[a + 1])
  elseif op == 'HDEL' then redis.call('HDEL', key, ARGV[a])
  -- Keep the N members of highest score: drop ranks 0 .. -(N + 1).
  elseif op == 'ZKEEPHIGHEST' then
    redis.call('ZREMRANGEBYRANK', key, 0, -(tonumber(ARGV[a]) + 1))
  end
end
