//! Round trips through the `redis` crate against a real redis-server with the module loaded,
//! started by this benchmark (testkit): RL.CHECK vs INCR (the cheapest write) vs a Lua GCRA
//! (scripts/gcra.lua, EVALSHA, same parameters), one command per round trip and 100 per
//! pipeline. Client and server share the machine, so these are latencies of the whole path;
//! the server-side throughput comparison is scripts/bench.sh.
//!
//! `cargo bench --bench roundtrip` (needs the module built: `cargo build --release --lib`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use testkit::redis::{self, Connection};
use testkit::RedisServer;

/// Random-ish keys out of this many, like `redis-benchmark -r 100000`.
const KEYS: u64 = 100_000;
const PIPELINE: u64 = 100;
/// RL.CHECK's and the script's parameters: 100 per 60 s, burst 100, cost 1. With 100k keys
/// every call is admitted and writes, the expensive path.
const LIMIT: u64 = 100;
const WINDOW: u64 = 60;
const COST: u64 = 1;
const BURST: u64 = 100;

const LUA: &str = include_str!("../scripts/gcra.lua");

#[derive(Clone, Copy)]
enum Case {
    Incr,
    Check,
    Lua,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Incr => "INCR",
            Case::Check => "RL.CHECK",
            Case::Lua => "Lua EVALSHA",
        }
    }

    fn command(self, sha: &str, n: u64) -> redis::Cmd {
        // A multiplicative step spreads consecutive calls over the key space.
        let key = format!("key:{}", n.wrapping_mul(7_919) % KEYS);
        match self {
            Case::Incr => {
                let mut cmd = redis::cmd("INCR");
                cmd.arg(key);
                cmd
            }
            Case::Check => {
                let mut cmd = redis::cmd("RL.CHECK");
                cmd.arg(key).arg(LIMIT).arg(WINDOW).arg("COST").arg(COST).arg("BURST").arg(BURST);
                cmd
            }
            Case::Lua => {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(sha).arg(1).arg(key).arg(LIMIT).arg(WINDOW).arg(COST).arg(BURST);
                cmd
            }
        }
    }
}

/// Runs one command and checks its reply, so a failing case cannot pass as a fast one.
fn single(con: &mut Connection, case: Case, sha: &str, n: u64) {
    let value: redis::Value = case.command(sha, n).query(con).unwrap_or_else(|e| panic!("{}: {e}", case.name()));
    check_reply(case, &value);
}

fn pipelined(con: &mut Connection, case: Case, sha: &str, first: u64) {
    let mut pipe = redis::pipe();
    for n in first..first + PIPELINE {
        pipe.add_command(case.command(sha, n));
    }
    let values: Vec<redis::Value> = pipe.query(con).unwrap_or_else(|e| panic!("{} pipeline: {e}", case.name()));
    assert_eq!(values.len() as u64, PIPELINE);
    for value in &values {
        check_reply(case, value);
    }
}

fn check_reply(case: Case, value: &redis::Value) {
    match (case, value) {
        (Case::Incr, redis::Value::Int(_)) => {}
        (Case::Check | Case::Lua, redis::Value::Array(items)) if items.len() == 5 => {}
        _ => panic!("{}: unexpected reply {value:?}", case.name()),
    }
}

fn roundtrips(c: &mut Criterion) {
    let server = RedisServer::start();
    let mut con = server.client();
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(LUA).query(&mut con).expect("SCRIPT LOAD");
    let cases = [Case::Incr, Case::Check, Case::Lua];

    let mut group = c.benchmark_group("single");
    group.throughput(Throughput::Elements(1));
    for case in cases {
        let _: () = redis::cmd("FLUSHALL").query(&mut con).expect("FLUSHALL");
        let mut n = 0u64;
        group.bench_function(BenchmarkId::from_parameter(case.name()), |b| {
            b.iter(|| {
                n += 1;
                single(&mut con, case, &sha, n)
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group(format!("pipeline{PIPELINE}"));
    group.throughput(Throughput::Elements(PIPELINE));
    for case in cases {
        let _: () = redis::cmd("FLUSHALL").query(&mut con).expect("FLUSHALL");
        let mut n = 0u64;
        group.bench_function(BenchmarkId::from_parameter(case.name()), |b| {
            b.iter(|| {
                n += PIPELINE;
                pipelined(&mut con, case, &sha, n)
            })
        });
    }
    group.finish();
    drop(server);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = roundtrips
}
criterion_main!(benches);
