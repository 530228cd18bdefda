//! The Functions library against the module, operation by operation: random command lines
//! (every command, random parameters, bad lines, foreign values, keys written by the other
//! backend, a clock moving forward or standing still) run on several mirrors of the same
//! keys, each by another backend (the module, `FCALL`, `EVALSHA`), at the same frozen
//! instant. Every reply must be identical, and so must every stored value, its type and its
//! expiry, byte for byte.
//!
//! `RL_DIFF_OPS` sets the number of operations (100,000 by default), `RL_DIFF_SEED` the seed
//! (a failure prints the seed and the operation to replay).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use testkit::functions::{self, Dialect};
use testkit::redis::{self, Value};
use testkit::RedisServer;

/// SplitMix64 (testkit's), with the draws this test needs.
struct Rng(testkit::fuzz::SplitMix);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
}

const I64_MAX: u64 = i64::MAX as u64;
const MAX_REPLY_INTEGER: u64 = 1 << 53;

const RATE_KEYS: &[&str] = &["r0", "r1", "r2", "r3", "r4"];
const LEASE_KEYS: &[&str] = &["l0", "l1", "l2"];
const LEASE_IDS: &[&[u8]] = &[b"i0", b"i1", b"i2", b"i3", b"\x00binary", b"\x00rl-leases", b""];

/// A limiter's numbers, kept per key most of the time (a key is usually checked with one
/// quota) and sometimes drawn afresh (the state read under another limit).
#[derive(Clone, Copy)]
struct Profile {
    limit: u64,
    window: u64,
    burst: Option<u64>,
}

fn random_limit(rng: &mut Rng) -> u64 {
    *rng.pick(&[1, 2, 3, 5, 7, 10, 31, 60, 100, 1000, 999_983, 1_000_000, (1 << 31) - 1, 1_000_000_000_000])
}

fn random_window(rng: &mut Rng) -> u64 {
    *rng.pick(&[1, 1, 2, 60, 60, 693, 3600, 86_400, 1_000_000, 3_153_600_000, 3_153_600_001])
}

fn random_profile(rng: &mut Rng) -> Profile {
    let limit = random_limit(rng);
    let window = random_window(rng);
    let burst = match rng.below(4) {
        0 => None,
        1 => Some(rng.between(1, 10)),
        2 => Some(rng.between(1, 1000)),
        _ => Some(*rng.pick(&[1, 2, limit, limit.saturating_mul(2), 1_000_000, MAX_REPLY_INTEGER])),
    };
    Profile { limit, window, burst }
}

/// A cost-like amount, relative to the burst it is for.
fn random_amount(rng: &mut Rng, burst: u64) -> u64 {
    match rng.below(10) {
        0 => 0,
        1..=3 => 1,
        4 => rng.between(1, 5),
        5 => burst,
        6 => burst.saturating_add(1),
        7 => rng.between(0, burst.min(1 << 40)),
        8 => *rng.pick(&[I64_MAX, 1 << 40, 1 << 53]),
        _ => rng.between(1, 3),
    }
}

/// Words in random case, e.g. `Cost`.
fn random_case(rng: &mut Rng, word: &str) -> String {
    word.chars().map(|c| if rng.chance(50) { c.to_ascii_lowercase() } else { c }).collect()
}

struct Generator {
    rng: Rng,
    profiles: Vec<Profile>,
}

impl Generator {
    fn profile(&mut self, key: usize) -> Profile {
        if self.rng.chance(15) {
            let fresh = random_profile(&mut self.rng);
            if self.rng.chance(30) {
                self.profiles[key] = fresh;
            }
            fresh
        } else {
            self.profiles[key]
        }
    }

    fn rate_key(&mut self) -> (usize, String) {
        let i = self.rng.below(RATE_KEYS.len() as u64) as usize;
        (i, RATE_KEYS[i].to_string())
    }

    /// One operation: a module command line, or a direct write of a foreign value (`None` for
    /// the backend: run as it is on every mirror).
    fn next(&mut self) -> (Vec<String>, Vec<Vec<u8>>, bool) {
        let roll = self.rng.below(100);
        let (keys, line, is_command): (Vec<String>, Vec<Vec<u8>>, bool) = match roll {
            0..=32 => self.check(),
            33..=44 => self.checkall(),
            45..=51 => {
                let (i, key) = self.rate_key();
                let p = self.profile(i);
                let mut words = vec!["RL.PEEK".into(), key.clone(), p.limit.to_string(), p.window.to_string()];
                if let Some(b) = p.burst {
                    words.extend([random_case(&mut self.rng, "BURST"), b.to_string()]);
                }
                (vec![key], bytes(words), true)
            }
            52..=62 => {
                let (i, key) = self.rate_key();
                let p = self.profile(i);
                let burst = p.burst.unwrap_or(p.limit);
                let amount = random_amount(&mut self.rng, burst);
                let mut words = vec![
                    "RL.REFUND".into(),
                    key.clone(),
                    p.limit.to_string(),
                    p.window.to_string(),
                    amount.to_string(),
                ];
                if let Some(b) = p.burst {
                    words.extend([random_case(&mut self.rng, "BURST"), b.to_string()]);
                }
                (vec![key], bytes(words), true)
            }
            63..=65 => {
                let key = if self.rng.chance(80) { self.rate_key().1 } else { self.rng.pick(LEASE_KEYS).to_string() };
                (vec![key.clone()], bytes(vec!["RL.RESET".into(), key]), true)
            }
            66..=72 => {
                let (_, key) = self.rate_key();
                let max_burst = *self.rng.pick(&[0, 1, 4, 9, 99, 1000]);
                let count = *self.rng.pick(&[1, 2, 3, 7, 30, 1000]);
                let period = *self.rng.pick(&[1, 2, 60, 3600]);
                let mut words = vec![
                    "CL.THROTTLE".into(),
                    key.clone(),
                    max_burst.to_string(),
                    count.to_string(),
                    period.to_string(),
                ];
                if self.rng.chance(50) {
                    words.push(random_amount(&mut self.rng, max_burst + 1).to_string());
                }
                (vec![key], bytes(words), true)
            }
            73..=92 => self.lease(),
            93..=95 => self.foreign(),
            _ => self.bad_line(),
        };
        (keys, line, is_command)
    }

    fn check(&mut self) -> (Vec<String>, Vec<Vec<u8>>, bool) {
        let (i, key) = self.rate_key();
        let p = self.profile(i);
        let burst = p.burst.unwrap_or(p.limit);
        let mut options: Vec<Vec<String>> = Vec::new();
        if self.rng.chance(60) {
            options.push(vec![random_case(&mut self.rng, "COST"), random_amount(&mut self.rng, burst).to_string()]);
        }
        if let Some(b) = p.burst {
            options.push(vec![random_case(&mut self.rng, "BURST"), b.to_string()]);
        }
        let force = self.rng.chance(20);
        if force {
            options.push(vec![random_case(&mut self.rng, "FORCE")]);
        }
        if self.rng.chance(15) && (!force || self.rng.chance(20)) {
            options.push(vec![random_case(&mut self.rng, "KEEP"), random_amount(&mut self.rng, burst).to_string()]);
        }
        // Any order.
        for i in (1..options.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            options.swap(i, j);
        }
        let mut words = vec!["RL.CHECK".into(), key.clone(), p.limit.to_string(), p.window.to_string()];
        words.extend(options.into_iter().flatten());
        (vec![key], bytes(words), true)
    }

    fn checkall(&mut self) -> (Vec<String>, Vec<Vec<u8>>, bool) {
        let n = self.rng.between(1, 3) as usize;
        let mut chosen: Vec<usize> = Vec::new();
        while chosen.len() < n {
            let i = self.rng.below(RATE_KEYS.len() as u64) as usize;
            if !chosen.contains(&i) || self.rng.chance(3) {
                chosen.push(i);
            }
        }
        let width = if self.rng.chance(30) { 5 } else { 4 };
        let mut words = vec!["RL.CHECKALL".to_string(), n.to_string()];
        words.extend(chosen.iter().map(|&i| RATE_KEYS[i].to_string()));
        for &i in &chosen {
            let p = self.profile(i);
            let burst = p.burst.unwrap_or(p.limit.min(MAX_REPLY_INTEGER));
            let cost = random_amount(&mut self.rng, burst);
            words.extend([p.limit.to_string(), p.window.to_string(), cost.to_string(), burst.to_string()]);
            if width == 5 {
                let keep = if self.rng.chance(50) { 0 } else { random_amount(&mut self.rng, burst) };
                words.push(keep.to_string());
            }
        }
        let keys = chosen.iter().map(|&i| RATE_KEYS[i].to_string()).collect();
        (keys, bytes(words), true)
    }

    fn lease(&mut self) -> (Vec<String>, Vec<Vec<u8>>, bool) {
        let key = self.rng.pick(LEASE_KEYS).to_string();
        let id: Vec<u8> = if self.rng.chance(97) {
            self.rng.pick(&LEASE_IDS[..5]).to_vec()
        } else {
            self.rng.pick(LEASE_IDS).to_vec()
        };
        let lease_ms = *self.rng.pick(&[1, 2, 5, 100, 1000, 60_000, 3_600_000, 86_400_000]);
        let mut line: Vec<Vec<u8>> = match self.rng.below(10) {
            0..=4 => {
                let max = *self.rng.pick(&[1, 1, 2, 3, 4, 10_000]);
                vec![
                    b"RL.ACQUIRE".to_vec(),
                    key.clone().into_bytes(),
                    max.to_string().into_bytes(),
                    lease_ms.to_string().into_bytes(),
                    random_case(&mut self.rng, "ID").into_bytes(),
                    id,
                ]
            }
            5..=7 => vec![b"RL.RELEASE".to_vec(), key.clone().into_bytes(), id],
            _ => vec![b"RL.RENEW".to_vec(), key.clone().into_bytes(), id, lease_ms.to_string().into_bytes()],
        };
        if self.rng.chance(2) {
            // Out of bounds.
            let last = line.len() - 1;
            if line[0] == b"RL.RENEW" {
                line[last] = b"86400001".to_vec();
            } else if line[0] == b"RL.ACQUIRE" {
                line[2] = self.rng.pick(&[&b"0"[..], b"10001", b"-1", b"01"]).to_vec();
            }
        }
        (vec![key], line, true)
    }

    /// A value an application might have left at one of the keys, written on every mirror.
    fn foreign(&mut self) -> (Vec<String>, Vec<Vec<u8>>, bool) {
        let rate = self.rng.chance(60);
        let key = if rate { self.rate_key().1 } else { self.rng.pick(LEASE_KEYS).to_string() };
        let line: Vec<String> = match self.rng.below(9) {
            0 => vec!["SET".into(), key.clone(), "hello".into()],
            1 => vec!["SET".into(), key.clone(), "42".into()],
            2 => vec!["SET".into(), key.clone(), "1000000000000000000+1/3".into()],
            3 => vec!["SET".into(), key.clone(), "1000000000000000000+3/3".into()],
            4 => vec!["DEL".into(), key.clone()],
            5 => vec!["RPUSH".into(), key.clone(), "x".into()],
            6 => vec!["ZADD".into(), key.clone(), "1".into(), "a".into()],
            7 => vec![
                "ZADD".into(),
                key.clone(),
                "0".into(),
                "\x00rl-leases".into(),
                self.rng.pick(&["1.5", "5", "2000000000000.5", "9007199254740993"]).to_string(),
                "x".into(),
            ],
            _ => vec!["ZADD".into(), key.clone(), "0".into(), "\x00rl-leases".into(), "-1".into(), "y".into()],
        };
        (vec![key], bytes(line), false)
    }

    fn bad_line(&mut self) -> (Vec<String>, Vec<Vec<u8>>, bool) {
        let (_, key) = self.rate_key();
        let junk = ["", "-0", "+5", "05", "1.5", "x", "9223372036854775808", "99999999999999999999", "-1", "0"];
        let line: Vec<String> = match self.rng.below(9) {
            0 => vec!["RL.CHECK".into(), key.clone(), self.rng.pick(&junk).to_string(), "60".into()],
            1 => vec!["RL.CHECK".into(), key.clone(), "5".into(), "60".into(), "SPEED".into(), "2".into()],
            2 => vec!["RL.CHECK".into(), key.clone(), "5".into()],
            3 => vec!["RL.CHECK".into(), key.clone(), "5".into(), "60".into(), "COST".into()],
            4 => vec!["RL.REFUND".into(), key.clone(), "5".into(), "60".into(), self.rng.pick(&junk).to_string()],
            5 => vec!["RL.CHECKALL".into(), "2".into(), key.clone(), "5".into(), "60".into(), "1".into()],
            6 => vec!["CL.THROTTLE".into(), key.clone(), self.rng.pick(&junk).to_string(), "1".into(), "1".into()],
            7 => vec!["RL.RESET".into(), key.clone(), "extra".into()],
            _ => {
                // An unknown option of any bytes (echoed as at most 128 bytes of text, each
                // invalid UTF-8 sequence as U+FFFD).
                let len = *self.rng.pick(&[1, 2, 3, 5, 127, 128, 129, 300]);
                let palette: &[u8] = &[b'x', 0x80, 0xBF, 0xC2, 0xE0, 0xED, 0xF0, 0xF4, 0xFF, 0xA0, 0x9F, 0x8F, 0x90];
                let mut word: Vec<u8> = (0..len).map(|_| *self.rng.pick(palette)).collect();
                if self.rng.chance(30) {
                    // A valid multi-byte character across the 128-byte cut.
                    word = [vec![b'y'; 126], "€".as_bytes().to_vec(), vec![b'z'; 5]].concat();
                }
                let mut line = bytes(vec!["RL.CHECK".into(), key.clone(), "5".into(), "60".into()]);
                line.push(word);
                line.push(b"1".to_vec());
                return (vec![key], line, true);
            }
        };
        (vec![key], bytes(line), true)
    }
}

fn bytes(words: Vec<String>) -> Vec<Vec<u8>> {
    words.into_iter().map(String::into_bytes).collect()
}

/// Returns, for each key, its type, its expiry (absolute, in ms) and its value (a string's bytes, a sorted set's members and scores).
const INSPECT: &str = "local out = {} \
    for i, k in ipairs(KEYS) do \
      local t = redis.call('TYPE', k).ok \
      out[#out + 1] = t \
      out[#out + 1] = redis.call('PEXPIRETIME', k) \
      if t == 'string' then out[#out + 1] = redis.call('GET', k) \
      elseif t == 'zset' then out[#out + 1] = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES') \
      elseif t == 'list' then out[#out + 1] = redis.call('LRANGE', k, 0, -1) \
      else out[#out + 1] = false end \
    end \
    return out";

/// [`INSPECT`] for servers without `PEXPIRETIME` (Redis 6.2): the expiry as the bounds
/// `[clock before + PTTL, clock after + PTTL]`, the server's clock read just before and just
/// after `PTTL` (a busy host may pause the script between them).
const INSPECT_BY_PTTL: &str = "local out = {} \
    local function ms() local t = redis.call('TIME') return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end \
    for i, k in ipairs(KEYS) do \
      local t = redis.call('TYPE', k).ok \
      out[#out + 1] = t \
      local before = ms() \
      local ttl = redis.call('PTTL', k) \
      local after = ms() \
      if ttl >= 0 then out[#out + 1] = {before + ttl, after + ttl} else out[#out + 1] = ttl end \
      if t == 'string' then out[#out + 1] = redis.call('GET', k) \
      elseif t == 'zset' then out[#out + 1] = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES') \
      elseif t == 'list' then out[#out + 1] = redis.call('LRANGE', k, 0, -1) \
      else out[#out + 1] = false end \
    end \
    return out";

/// One mirror of the keys: where, under which prefix, whether the module is loaded there, and
/// whether the server has `PEXPIRETIME` (Redis 7+, Valkey: expiries compared exactly).
struct Mirror<'a> {
    con: &'a mut redis::Connection,
    prefix: String,
    has_module: bool,
    exact_expiry: bool,
}

/// Whether two [`INSPECT`] results agree: types and values exactly, and expiries exactly, or
/// (where one side gave bounds, [`INSPECT_BY_PTTL`]) the exact one within the bounds.
fn same_state(a: &Value, b: &Value) -> bool {
    let (Value::Array(a), Value::Array(b)) = (a, b) else { return a == b };
    if a.len() != b.len() {
        return false;
    }
    let within = |exact: &Value, bounds: &[Value]| match (exact, bounds) {
        (Value::Int(e), [Value::Int(lo), Value::Int(hi)]) => lo <= e && e <= hi,
        _ => false,
    };
    a.chunks(3).zip(b.chunks(3)).all(|(x, y)| {
        let expiry = match (&x[1], &y[1]) {
            (Value::Array(bounds), exact) | (exact, Value::Array(bounds)) => within(exact, bounds),
            (ex, ey) => ex == ey,
        };
        x[0] == y[0] && x[2] == y[2] && expiry
    })
}

/// The line with its keys prefixed (the keys of `line` are the words listed in `keys`).
fn prefixed(line: &[Vec<u8>], keys: &[String], prefix: &str) -> Vec<Vec<u8>> {
    line.iter()
        .enumerate()
        .map(|(i, word)| {
            let is_key = i > 0 && keys.iter().any(|k| k.as_bytes() == word.as_slice());
            if is_key {
                [prefix.as_bytes(), word].concat()
            } else {
                word.clone()
            }
        })
        .collect()
}

/// Runs `ops` random operations on the mirrors, each command line in a randomly assigned
/// dialect (all of `dialects`, one per mirror), and compares replies and state after each.
fn run_differential(mirrors: &mut [Mirror<'_>], dialects: &[Dialect], fixed_roles: bool, ops: u64, seed: u64) {
    let mut generator = Generator { rng: Rng(testkit::fuzz::SplitMix(seed)), profiles: Vec::new() };
    generator.profiles = (0..RATE_KEYS.len()).map(|_| random_profile(&mut generator.rng)).collect();
    let mut roles = Rng(testkit::fuzz::SplitMix(seed ^ 0x5EED));
    // A year ahead of the real clock: no key's expiry (set from the frozen clock) comes due
    // in real time while the test runs, so every mirror expires alike.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
    let mut clock_micros = now + 365 * 24 * 3600 * 1_000_000;
    let mut shas = Vec::new();
    for mirror in mirrors.iter_mut() {
        let script = functions::script_source(&functions::source_with_test_clock());
        let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(script).query(mirror.con).unwrap();
        shas.push(sha);
    }
    let all_keys: Vec<String> = RATE_KEYS.iter().chain(LEASE_KEYS).map(|k| k.to_string()).collect();
    for op in 0..ops {
        // Mostly still or small steps, so that buckets stay partly spent (their TAT after
        // now, where every rounding shows); now and then a long wait.
        clock_micros += match roles.below(100) {
            0..=44 => 0,
            45..=69 => roles.between(1, 1000),
            70..=84 => roles.between(1000, 1_000_000),
            85..=94 => roles.between(1_000_000, 60_000_000),
            95..=98 => roles.between(60_000_000, 3_600_000_000),
            _ => roles.between(3_600_000_000, 10 * 86_400_000_000),
        };
        if roles.chance(5) {
            // On a whole millisecond: expiries and waits land exactly on their rounding.
            clock_micros -= clock_micros % 1000;
        }
        let (keys, line, is_command) = generator.next();
        let mut assigned: Vec<Dialect> = dialects.to_vec();
        if !fixed_roles {
            for i in (1..assigned.len()).rev() {
                let j = roles.below(i as u64 + 1) as usize;
                assigned.swap(i, j);
            }
        }
        let mut outcomes = Vec::new();
        for (m, mirror) in mirrors.iter_mut().enumerate() {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            pipe.cmd("MSET")
                .arg(functions::TEST_CLOCK_KEYS[0])
                .arg(clock_micros / 1_000_000)
                .arg(functions::TEST_CLOCK_KEYS[1])
                .arg(clock_micros % 1_000_000)
                .ignore();
            if mirror.has_module {
                pipe.cmd("RL.DEBUG").arg("CLOCK").arg(clock_micros * 1000).ignore();
            }
            let words = prefixed(&line, &keys, &mirror.prefix);
            let cmd = if is_command {
                functions::command(&words, assigned[m], &shas[m])
            } else {
                let mut cmd = redis::cmd(std::str::from_utf8(&words[0]).unwrap());
                for w in &words[1..] {
                    cmd.arg(w.as_slice());
                }
                cmd
            };
            pipe.add_command(cmd);
            let mut inspect = redis::cmd("EVAL");
            inspect.arg(if mirror.exact_expiry { INSPECT } else { INSPECT_BY_PTTL }).arg(all_keys.len());
            for k in &all_keys {
                inspect.arg(format!("{}{k}", mirror.prefix));
            }
            pipe.add_command(inspect);
            let replies: Vec<redis::RedisResult<Value>> = pipe.query(mirror.con).unwrap();
            let reply = match &replies[0] {
                Ok(value) => value.clone(),
                Err(e) => Value::SimpleString(format!("ERROR: {}", functions::error_text(e))),
            };
            let state = replies[1].clone().unwrap_or_else(|e| panic!("inspecting: {e}"));
            outcomes.push((assigned[m], reply, state));
        }
        let (first_dialect, first_reply, first_state) = &outcomes[0];
        for (dialect, reply, state) in &outcomes[1..] {
            let shown = line.iter().map(|w| String::from_utf8_lossy(w).to_string()).collect::<Vec<_>>().join(" ");
            assert_eq!(
                reply, first_reply,
                "seed {seed}, operation {op} at {clock_micros} µs: `{shown}`\n{dialect:?} vs {first_dialect:?}"
            );
            assert!(
                same_state(state, first_state),
                "seed {seed}, operation {op} at {clock_micros} µs: `{shown}`: stored state differs\n\
                 {dialect:?}: {state:?}\n{first_dialect:?}: {first_state:?}"
            );
        }
    }
}

fn ops() -> u64 {
    std::env::var("RL_DIFF_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

fn seed() -> u64 {
    std::env::var("RL_DIFF_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x0123_4567_89AB_CDEF)
}

/// One server with the module and the library: three mirrors, the module, `FCALL` and
/// `EVALSHA` assigned to them anew for every operation, so each backend keeps reading what
/// another wrote.
#[test]
fn the_library_answers_and_stores_exactly_as_the_module_does() {
    let server = RedisServer::builder().module_args("debug-commands").start();
    let mut con = server.client();
    functions::load(&mut con, &functions::source_with_test_clock());
    let (mut a, mut b, mut c) = (server.client(), server.client(), server.client());
    let mut mirrors = [
        Mirror { con: &mut a, prefix: "a:".into(), has_module: true, exact_expiry: true },
        Mirror { con: &mut b, prefix: "b:".into(), has_module: true, exact_expiry: true },
        Mirror { con: &mut c, prefix: "c:".into(), has_module: true, exact_expiry: true },
    ];
    run_differential(&mut mirrors, &[Dialect::Module, Dialect::Functions, Dialect::Script], false, ops(), seed());
}

/// Redis 6.2 (no Functions, and too old for the module): the library as a script there, against
/// the module on a server of the matrix (`RL_SERVER_BIN`), the same operations at the same
/// frozen instant. The 6.2 binary is `RL_REDIS62_BIN`, by default `.cache/redis62/redis-server`
/// (`scripts/fetch-server.sh redis62`, which `make test` runs).
#[test]
fn the_script_on_redis_6_2_answers_and_stores_as_the_module_does() {
    let redis62 = std::env::var("RL_REDIS62_BIN").unwrap_or_else(|_| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/redis62/redis-server").display().to_string()
    });
    assert!(
        std::path::Path::new(&redis62).exists(),
        "no Redis 6.2 at {redis62}: run scripts/fetch-server.sh redis62 (make test does), or set RL_REDIS62_BIN"
    );
    let module_server = RedisServer::builder().module_args("debug-commands").start();
    let old = RedisServer::builder().binary(&redis62).without_module().start();
    let version: String = redis::cmd("INFO").arg("server").query(&mut old.client()).unwrap();
    assert!(version.contains("redis_version:6.2."), "{version}");
    let (mut a, mut b) = (module_server.client(), old.client());
    let mut mirrors = [
        Mirror { con: &mut a, prefix: String::new(), has_module: true, exact_expiry: true },
        Mirror { con: &mut b, prefix: String::new(), has_module: false, exact_expiry: false },
    ];
    run_differential(&mut mirrors, &[Dialect::Module, Dialect::Script], true, ops(), seed());
}
