//! The primary Redis Sentinel names, as a [`Managed`] connection: Sentinel is asked on the
//! first command, and again after any command whose failure may mean that this is no longer
//! the primary (the connection broke or timed out, or the server answered `READONLY` because
//! it was demoted): that command fails (it is not retried), the next one goes to whichever
//! server Sentinel names then. It is also asked again as soon as a sentinel announces a new
//! primary ([`watch_switches`]): an old primary that still runs keeps accepting commands
//! until Sentinel demotes it, seconds later, and what it takes then is lost when it resyncs
//! as a replica.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::FutureExt;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushKind, RedisConnectionInfo};

use super::connection::{io, Managed};
use super::ClientError;
use crate::config::{Redacted, RedisUrl, SentinelTarget};

/// The primary of `target`, reached with `connection_config` (nothing is connected yet), and
/// a watch of the sentinels' announcements on the Redis I/O thread.
pub fn primary(
    target: &SentinelTarget,
    connection_config: AsyncConnectionConfig,
    connect_timeout: Duration,
) -> Result<Arc<Managed>, ClientError> {
    let described = |source| ClientError { setting: format!("redis.sentinels {:?}", target.sentinels), source };
    let primary_auth = match &target.master_password {
        Some(Redacted(password)) => RedisConnectionInfo::default().set_password(password.as_str()),
        None => RedisConnectionInfo::default(),
    };
    let primary_info = SentinelNodeConnectionInfo::default().set_redis_connection_info(primary_auth.clone());
    let sentinels: Vec<&str> = target.sentinels.iter().map(|url| url.expose()).collect();
    let client =
        SentinelClient::build(sentinels, target.master.as_str(), Some(primary_info), SentinelServerType::Master)
            .map_err(described)?;
    // Held while asking, so that the commands failing at once during a failover ask one
    // after the other (the first that connects serves the rest) instead of all together.
    let sentinel = Arc::new(tokio::sync::Mutex::new(client));
    let asking = sentinel.clone();
    let managed = Managed::new(
        "the primary Sentinel names",
        Box::new(move || {
            let sentinel = asking.clone();
            // The client checks that the server Sentinel names calls itself a primary (ROLE).
            async move { sentinel.lock().await.async_get_client().await }.boxed()
        }),
        connection_config,
    );
    let switch = Switch { managed: Arc::downgrade(&managed), sentinel, primary_auth };
    io().spawn(watch_switches(switch, target.sentinels.clone(), target.master.clone(), connect_timeout));
    Ok(managed)
}

/// What a `+switch-master` announcement acts on.
struct Switch {
    managed: Weak<Managed>,
    /// Held while moving, so that no command asking Sentinel meanwhile (which might still
    /// name the old primary) installs its answer after the move.
    sentinel: Arc<tokio::sync::Mutex<SentinelClient>>,
    /// The primary's AUTH (and database), for a connection to an announced primary.
    primary_auth: RedisConnectionInfo,
}

impl Switch {
    /// A sentinel announced `host:port` as the new primary: connect there directly (asking
    /// the sentinels now might reach one that has not heard yet and still names the old
    /// one), or, failing that, leave the next command to ask Sentinel.
    async fn switch_to(&self, managed: &Managed, host: &str, port: u16) {
        let _asking = self.sentinel.lock().await;
        let info = (host, port).into_connection_info().map(|info| info.set_redis_settings(self.primary_auth.clone()));
        let dialed = match info.and_then(redis::Client::open) {
            Ok(client) => managed.dial_to(client).await,
            Err(e) => Err(e),
        };
        match dialed {
            Ok(dialed) => managed.replace(dialed),
            Err(e) => managed.forget(None, &format!("cannot connect to the announced primary {host}:{port}: {e}")),
        }
    }
}

/// The channel on which every sentinel announces a failover:
/// `<master name> <old ip> <old port> <new ip> <new port>`.
const SWITCH_CHANNEL: &str = "+switch-master";

/// The pause before subscribing to the next sentinel after one went away.
const SWITCH_WATCH_PAUSE: Duration = Duration::from_millis(200);

/// Listens to the sentinels in turn (one at a time, the next when one goes away) for
/// [`SWITCH_CHANNEL`] about `master`, and moves to the announced primary on each, until the
/// connection it serves is dropped.
async fn watch_switches(switch: Switch, sentinels: Vec<RedisUrl>, master: String, timeout: Duration) {
    for sentinel in sentinels.iter().cycle() {
        if switch.managed.strong_count() == 0 {
            return;
        }
        if let Err(e) = listen_for_switches(&switch, sentinel, &master, timeout).await {
            tracing::debug!(%sentinel, error = %e, "cannot listen to this sentinel for failovers");
        }
        tokio::time::sleep(SWITCH_WATCH_PAUSE).await;
    }
}

/// Subscribes to [`SWITCH_CHANNEL`] on one sentinel (RESP3, so the replies come as pushes on
/// an ordinary connection) until it goes away.
async fn listen_for_switches(
    switch: &Switch,
    sentinel: &RedisUrl,
    master: &str,
    timeout: Duration,
) -> redis::RedisResult<()> {
    let info = sentinel.expose().into_connection_info()?;
    let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(resp3))?;
    let (sender, mut pushes) = tokio::sync::mpsc::unbounded_channel();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_push_sender(sender);
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    conn.subscribe(SWITCH_CHANNEL).await?;
    while let Some(push) = pushes.recv().await {
        let Some(managed) = switch.managed.upgrade() else { return Ok(()) };
        match push.kind {
            PushKind::Disconnection => break,
            PushKind::Message => {
                if let Some((host, port)) = announced_primary(&push.data, master) {
                    switch.switch_to(&managed, &host, port).await;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The new primary's host and port, when a `message` push (`[channel, payload]`) announces
/// one for `master`.
fn announced_primary(data: &[redis::Value], master: &str) -> Option<(String, u16)> {
    let Some(redis::Value::BulkString(payload)) = data.last() else { return None };
    let payload = std::str::from_utf8(payload).ok()?;
    match payload.split(' ').collect::<Vec<_>>()[..] {
        [name, _old_host, _old_port, host, port] if name == master => Some((host.to_string(), port.parse().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_announcement_names_the_new_primary_of_its_master_only() {
        let push = |payload: &str| {
            vec![redis::Value::BulkString(SWITCH_CHANNEL.into()), redis::Value::BulkString(payload.into())]
        };
        let switch = push("rl 127.0.0.1 6379 10.0.0.2 6380");
        assert_eq!(announced_primary(&switch, "rl"), Some(("10.0.0.2".to_string(), 6380)));
        assert_eq!(announced_primary(&switch, "other"), None);
        assert_eq!(announced_primary(&push("rl 127.0.0.1 6379 10.0.0.2"), "rl"), None);
        assert_eq!(announced_primary(&push("rl 127.0.0.1 6379 10.0.0.2 port"), "rl"), None);
        assert_eq!(announced_primary(&[], "rl"), None);
    }
}
