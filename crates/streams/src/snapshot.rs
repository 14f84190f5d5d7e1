//! Copying one generation of a read model out of Redis and back in, in bounded chunks.
//!
//! A copy is made of the generation's keys as data (type and value, with names relative to
//! the generation), not of `DUMP` payloads: it loads into any generation and any Redis
//! version. Big keys (the applied-versions hash holds one field per aggregate) are split into
//! pieces, so neither side ever holds more than a chunk in memory. The marker and the build
//! record are not part of a copy: a loaded copy is a generation under construction.
//!
//! The copy is consistent only if nothing writes the generation meanwhile: the caller holds
//! the projection still (see `outbox::control::ControlStore::hold`).

use deadpool_redis::redis;
use serde_json::{Value as Json, json};

use crate::{ReadModelKeys, StreamError};

/// Elements (fields, members, strings) per chunk, and per piece of a big key.
pub const CHUNK_ELEMENTS: usize = 5000;

/// Keys read per batch of pipelined round trips.
const KEYS_PER_BATCH: usize = 500;

/// What a key holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// A string.
    String(String),
    /// Fields of a hash.
    Hash(Vec<(String, String)>),
    /// Members of a sorted set with their scores.
    ZSet(Vec<(String, f64)>),
    /// Members of a set.
    Set(Vec<String>),
    /// Items of a list, in order.
    List(Vec<String>),
}

impl Data {
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn len(&self) -> usize {
        match self {
            Self::String(_) => 1,
            Self::Hash(v) => v.len(),
            Self::ZSet(v) => v.len(),
            Self::Set(v) | Self::List(v) => v.len(),
        }
    }
}

/// One key, or one piece of a big key.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The key's name relative to its generation (`view:<id>`, `versions`).
    pub key: String,
    /// Whether this is the key's first piece (loading it replaces whatever the key held).
    pub first: bool,
    /// The data.
    pub data: Data,
}

/// A chunk of a copy: pieces of about [`CHUNK_ELEMENTS`] elements in all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    /// The pieces.
    pub pieces: Vec<Piece>,
}

impl Chunk {
    /// Elements in the chunk.
    #[must_use]
    pub fn elements(&self) -> usize {
        self.pieces.iter().map(|p| p.data.len()).sum()
    }

    /// The chunk as bytes (JSON), for storage.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let pieces: Vec<Json> = self
            .pieces
            .iter()
            .map(|p| {
                let (t, v) = match &p.data {
                    Data::String(s) => ("string", json!(s)),
                    Data::Hash(f) => ("hash", json!(f)),
                    Data::ZSet(m) => ("zset", json!(m)),
                    Data::Set(m) => ("set", json!(m)),
                    Data::List(m) => ("list", json!(m)),
                };
                json!({"k": p.key, "f": p.first, "t": t, "v": v})
            })
            .collect();
        serde_json::to_vec(&pieces).unwrap_or_default()
    }

    /// A chunk from [`Chunk::encode`]'s bytes.
    ///
    /// # Errors
    /// [`StreamError::Malformed`] for bytes that are not a chunk.
    pub fn decode(bytes: &[u8]) -> Result<Self, StreamError> {
        let bad = |what: &str| StreamError::Malformed(format!("snapshot chunk: {what}"));
        let pieces: Vec<Json> = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        let strings = |v: &Json| -> Result<Vec<String>, StreamError> {
            serde_json::from_value(v.clone()).map_err(|e| bad(&e.to_string()))
        };
        let mut out = Vec::with_capacity(pieces.len());
        for p in &pieces {
            let key = p["k"]
                .as_str()
                .ok_or_else(|| bad("a piece without a key"))?;
            let v = &p["v"];
            let data = match p["t"].as_str() {
                Some("string") => Data::String(v.as_str().ok_or_else(|| bad("string"))?.into()),
                Some("hash") => {
                    Data::Hash(serde_json::from_value(v.clone()).map_err(|e| bad(&e.to_string()))?)
                }
                Some("zset") => {
                    Data::ZSet(serde_json::from_value(v.clone()).map_err(|e| bad(&e.to_string()))?)
                }
                Some("set") => Data::Set(strings(v)?),
                Some("list") => Data::List(strings(v)?),
                other => return Err(bad(&format!("unknown type {other:?}"))),
            };
            out.push(Piece {
                key: key.to_owned(),
                first: p["f"].as_bool().unwrap_or(true),
                data,
            });
        }
        Ok(Self { pieces: out })
    }
}

/// Walks a generation's keys and yields its copy chunk by chunk.
#[derive(Debug)]
pub struct Copier {
    base: String,
    pattern: String,
    skip: [String; 2],
    cursor: u64,
    started: bool,
    queue: std::collections::VecDeque<String>,
}

impl Copier {
    /// A copier of `model`.
    #[must_use]
    pub fn new(model: &ReadModelKeys) -> Self {
        Self {
            base: model.base().to_owned(),
            pattern: format!("{}*", crate::read_model::escape_glob(model.base())),
            skip: [model.marker(), model.build_record()],
            cursor: 0,
            started: false,
            queue: std::collections::VecDeque::new(),
        }
    }

    /// The next chunk; `None` once every key was copied. Keys are read a batch at a time in
    /// three pipelined round trips (types; strings and sizes; small collections whole), big
    /// collections piece by piece.
    ///
    /// # Errors
    /// [`StreamError`] when Redis fails, or a key holds a type a read model does not use.
    pub async fn next_chunk(
        &mut self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> Result<Option<Chunk>, StreamError> {
        let mut chunk = Chunk::default();
        while chunk.elements() < CHUNK_ELEMENTS {
            let batch = self.next_keys(conn, KEYS_PER_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            chunk.pieces.extend(self.copy_keys(conn, &batch).await?);
        }
        Ok((!chunk.pieces.is_empty()).then_some(chunk))
    }

    async fn next_keys(
        &mut self,
        conn: &mut impl redis::aio::ConnectionLike,
        n: usize,
    ) -> Result<Vec<String>, StreamError> {
        while self.queue.len() < n && (!self.started || self.cursor != 0) {
            self.started = true;
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(self.cursor)
                .arg("MATCH")
                .arg(&self.pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            self.cursor = next;
            self.queue
                .extend(keys.into_iter().filter(|k| !self.skip.contains(k)));
        }
        let n = n.min(self.queue.len());
        Ok(self.queue.drain(..n).collect())
    }

    fn relative(&self, key: &str) -> String {
        key.strip_prefix(&self.base).unwrap_or(key).to_owned()
    }

    /// The pieces of `keys`.
    async fn copy_keys(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        keys: &[String],
    ) -> Result<Vec<Piece>, StreamError> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("TYPE").arg(k);
        }
        let types: Vec<String> = pipe.query_async(conn).await?;
        // Strings whole; collections their size first.
        let mut pipe = redis::pipe();
        for (k, t) in keys.iter().zip(&types) {
            let cmd = match t.as_str() {
                "string" => "GET",
                "hash" => "HLEN",
                "zset" => "ZCARD",
                "set" => "SCARD",
                "list" => "LLEN",
                // Gone since the scan: a read model's keys do not vanish while it is held,
                // but a retired generation's cleanup could race a copy of another prefix.
                "none" => "EXISTS",
                other => {
                    return Err(StreamError::Malformed(format!(
                        "{k} is a {other}: a read model holds strings, hashes, sets, sorted sets and lists"
                    )));
                }
            };
            pipe.cmd(cmd).arg(k);
        }
        let firsts: Vec<redis::Value> = pipe.query_async(conn).await?;
        let mut pieces = Vec::with_capacity(keys.len());
        let mut small = redis::pipe();
        let mut small_keys = Vec::new();
        let mut big_keys = Vec::new();
        for ((k, t), v) in keys.iter().zip(&types).zip(firsts) {
            match t.as_str() {
                "string" => {
                    let v: Option<String> = redis::from_redis_value(v)
                        .map_err(|e| StreamError::Malformed(e.to_string()))?;
                    if let Some(v) = v {
                        pieces.push(Piece {
                            key: self.relative(k),
                            first: true,
                            data: Data::String(v),
                        });
                    }
                }
                "none" => {}
                _ => {
                    let n: usize = redis::from_redis_value(v)
                        .map_err(|e| StreamError::Malformed(e.to_string()))?;
                    if n > CHUNK_ELEMENTS {
                        big_keys.push((k, t));
                        continue;
                    }
                    match t.as_str() {
                        "hash" => small.cmd("HGETALL").arg(k),
                        "zset" => small.cmd("ZRANGE").arg(k).arg(0).arg(-1).arg("WITHSCORES"),
                        "set" => small.cmd("SMEMBERS").arg(k),
                        _ => small.cmd("LRANGE").arg(k).arg(0).arg(-1),
                    };
                    small_keys.push((k, t));
                }
            }
        }
        if !small_keys.is_empty() {
            let all: Vec<Vec<String>> = small.query_async(conn).await?;
            for ((k, t), flat) in small_keys.into_iter().zip(all) {
                let data = if t == "list" {
                    Data::List(flat)
                } else {
                    scanned(t, flat)?
                };
                pieces.push(Piece {
                    key: self.relative(k),
                    first: true,
                    data,
                });
            }
        }
        for (k, t) in big_keys {
            pieces.extend(self.copy_big(conn, k, t).await?);
        }
        Ok(pieces)
    }

    /// A big collection's pieces, read by cursor (lists by range).
    async fn copy_big(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        key: &str,
        kind: &str,
    ) -> Result<Vec<Piece>, StreamError> {
        let relative = self.relative(key);
        let mut pieces: Vec<Piece> = Vec::new();
        let mut push = |data: Data| {
            let first = pieces.is_empty();
            pieces.push(Piece {
                key: relative.clone(),
                first,
                data,
            });
        };
        if kind == "list" {
            let mut start = 0usize;
            loop {
                let items: Vec<String> = redis::cmd("LRANGE")
                    .arg(key)
                    .arg(start)
                    .arg(start + CHUNK_ELEMENTS - 1)
                    .query_async(conn)
                    .await?;
                let n = items.len();
                if n > 0 {
                    push(Data::List(items));
                }
                if n < CHUNK_ELEMENTS {
                    break;
                }
                start += n;
            }
        } else {
            let scan = match kind {
                "hash" => "HSCAN",
                "zset" => "ZSCAN",
                _ => "SSCAN",
            };
            let mut cursor = 0u64;
            loop {
                let (next, flat): (u64, Vec<String>) = redis::cmd(scan)
                    .arg(key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(CHUNK_ELEMENTS)
                    .query_async(conn)
                    .await?;
                let data = scanned(kind, flat)?;
                if !data.is_empty() {
                    push(data);
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(pieces)
    }
}

/// The data of one `HSCAN`/`ZSCAN`/`SSCAN` reply.
fn scanned(kind: &str, strings: Vec<String>) -> Result<Data, StreamError> {
    let pairs = |v: Vec<String>| -> Vec<(String, String)> {
        let mut it = v.into_iter();
        let mut out = Vec::new();
        while let (Some(a), Some(b)) = (it.next(), it.next()) {
            out.push((a, b));
        }
        out
    };
    Ok(match kind {
        "hash" => Data::Hash(pairs(strings)),
        "zset" => Data::ZSet(
            pairs(strings)
                .into_iter()
                .map(|(m, s)| {
                    s.parse::<f64>()
                        .map(|s| (m, s))
                        .map_err(|_| StreamError::Malformed(format!("score {s}")))
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => Data::Set(strings),
    })
}

/// Loads `chunk` into `model` (a generation under construction), in one pipeline.
///
/// # Errors
/// [`StreamError`] when Redis fails.
pub async fn load(
    conn: &mut impl redis::aio::ConnectionLike,
    model: &ReadModelKeys,
    chunk: &Chunk,
) -> Result<(), StreamError> {
    let mut pipe = redis::pipe();
    for p in &chunk.pieces {
        let key = model.key(&p.key);
        if p.first {
            pipe.cmd("DEL").arg(&key).ignore();
        }
        if p.data.is_empty() {
            continue;
        }
        match &p.data {
            Data::String(v) => {
                pipe.cmd("SET").arg(&key).arg(v).ignore();
            }
            Data::Hash(fields) => {
                let cmd = pipe.cmd("HSET").arg(&key);
                for (f, v) in fields {
                    cmd.arg(f).arg(v);
                }
                cmd.ignore();
            }
            Data::ZSet(members) => {
                let cmd = pipe.cmd("ZADD").arg(&key);
                for (m, s) in members {
                    cmd.arg(*s).arg(m);
                }
                cmd.ignore();
            }
            Data::Set(members) => {
                pipe.cmd("SADD").arg(&key).arg(members).ignore();
            }
            Data::List(items) => {
                pipe.cmd("RPUSH").arg(&key).arg(items).ignore();
            }
        }
    }
    let () = pipe.query_async(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_survives_its_encoding() {
        let chunk = Chunk {
            pieces: vec![
                Piece {
                    key: "view:1".into(),
                    first: true,
                    data: Data::String("{\"a\":1}".into()),
                },
                Piece {
                    key: "versions".into(),
                    first: false,
                    data: Data::Hash(vec![("a".into(), "3".into())]),
                },
                Piece {
                    key: "list".into(),
                    first: true,
                    data: Data::ZSet(vec![("m".into(), 1.5)]),
                },
                Piece {
                    key: "s".into(),
                    first: true,
                    data: Data::Set(vec!["x".into()]),
                },
                Piece {
                    key: "l".into(),
                    first: true,
                    data: Data::List(vec!["x".into(), "y".into()]),
                },
            ],
        };
        assert_eq!(Chunk::decode(&chunk.encode()).expect("decodes"), chunk);
        assert_eq!(chunk.elements(), 6);
        assert!(Chunk::decode(b"[{\"k\":\"x\",\"t\":\"stream\",\"v\":1}]").is_err());
    }
}
