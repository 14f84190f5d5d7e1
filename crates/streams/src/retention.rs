//! Stream retention: trim only what every consumer group has delivered and acknowledged.
//!
//! A blind `MAXLEN` drops entries a slow consumer has not read yet; this trims with
//! `XTRIM MINID` below the oldest entry any group still needs: its oldest pending entry, or the
//! entry after its last delivered one. The groups are read and the stream trimmed in one Lua
//! script, so nothing can be delivered or claimed in between. A stream without groups is left
//! alone: nobody has consumed it yet.

use std::sync::LazyLock;

use deadpool_redis::redis::{self, Script};

use crate::StreamError;

const SCRIPT: &str = r"
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return {0, ''} end
if #groups == 0 then return {0, ''} end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local floor = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local needed
  if tonumber(info['pending']) > 0 then
    needed = redis.call('XPENDING', KEYS[1], info['name'])[2]
  else
    local ms, seq = parse(info['last-delivered-id'])
    needed = string.format('%d-%d', ms, seq + 1)
  end
  if floor == nil or less(needed, floor) then floor = needed end
end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', floor)
return {removed, floor}
";

static TRIM: LazyLock<Script> = LazyLock::new(|| Script::new(SCRIPT));

/// What a trim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed {
    /// Entries removed.
    pub removed: u64,
    /// The id below which entries were removed (empty when the stream has no groups).
    pub floor: String,
}

/// Trims `stream` below what every group still needs.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn trim_acknowledged(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
) -> Result<Trimmed, StreamError> {
    let (removed, floor): (u64, String) = TRIM.key(stream).invoke_async(conn).await?;
    Ok(Trimmed { removed, floor })
}

/// `XLEN`.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn length(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
) -> Result<u64, StreamError> {
    Ok(redis::cmd("XLEN").arg(stream).query_async(conn).await?)
}
