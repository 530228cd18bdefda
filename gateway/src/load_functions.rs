//! `gateway load-functions`: loads the ratelimit Functions library (the copy this gateway
//! carries, `functions/ratelimit.lua`) into Redis with `FUNCTION LOAD REPLACE`, for an
//! administrator when the gateway's own Redis user may not load it (ACL). Run it once per
//! primary of a Cluster (the library reaches replicas by replication). `--print` writes the
//! library to stdout instead, e.g. for `redis-cli -x FUNCTION LOAD REPLACE`.

use crate::limiter::redis::dialect::{library_version, LIBRARY};

#[derive(clap::Args, Debug)]
pub struct LoadFunctionsArgs {
    /// A server to load it into, with a user allowed to (`redis://admin:pw@host:6379`,
    /// `rediss://...`); repeat for each primary of a Cluster.
    #[arg(long = "redis-url", required_unless_present = "print")]
    pub redis_urls: Vec<String>,
    /// Print the library instead of loading it.
    #[arg(long)]
    pub print: bool,
}

/// What `gateway load-functions` does: the lines it prints, or the first failure.
pub async fn run(args: &LoadFunctionsArgs) -> Result<Vec<String>, String> {
    if args.print {
        return Ok(vec![LIBRARY.trim_end().to_string()]);
    }
    let mut done = Vec::new();
    for url in &args.redis_urls {
        let shown = crate::config::RedisUrl::new(url.as_str()).to_string();
        let loaded: redis::RedisResult<String> = async {
            let mut con = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
            redis::cmd("FUNCTION").arg("LOAD").arg("REPLACE").arg(LIBRARY).query_async(&mut con).await
        }
        .await;
        match loaded {
            Ok(name) => done.push(format!("{shown}: loaded library {name} version {}", library_version())),
            Err(e) => return Err(format!("{shown}: FUNCTION LOAD REPLACE failed: {e}")),
        }
    }
    Ok(done)
}
