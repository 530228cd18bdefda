//! A TCP relay in front of a server that can drop a client's connection at the worst moment:
//! after the server ran a command, before the client hears the reply. For proving that a
//! client does not send a command twice when its connection breaks. And trouble at the stream
//! level ([`Chaos`]): latency on every chunk, some connections stalled (silent, open) or
//! closed, since this kernel has no `netem` qdisc.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Trouble on the relayed streams, from [`Proxy::set_chaos`] on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chaos {
    /// Waited before relaying each chunk, each way (a round trip gets twice this).
    pub latency: Duration,
    /// One command chunk in this many (0: none) stalls its connection: that chunk and all
    /// after it, either way, are swallowed, and the connection stays open (as a silent
    /// partition of that connection looks). A client with one connection sees its connection
    /// die about every `n` commands, a pool about one connection in `n` per command round.
    pub stall_one_in: u32,
    /// One command chunk in this many (0: none) closes its connection, both ways, unsent.
    pub close_one_in: u32,
}

/// What [`Chaos`] made of one connection.
const FATE_NONE: u8 = 0;
const FATE_STALL: u8 = 1;
const FATE_CLOSE: u8 = 2;

/// One relayed connection's fate: struck by a command chunk under [`Chaos`], then for good
/// (a stalled connection stays stalled when the chaos ends: its client must give it up).
#[derive(Default)]
struct Fate {
    fate: AtomicU8,
}

/// Relays every connection made to `127.0.0.1:port` to `127.0.0.1:target`, byte for byte, until
/// armed with [`Proxy::cut_after_reply_to`]. Dropping it closes every connection and stops its
/// threads.
///
/// A server behind a proxy usually has to announce the proxy's port instead of its own (for a
/// cluster node, `cluster-announce-port`), so that clients that discover it come back through
/// the proxy.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    target: u16,
    stopping: AtomicBool,
    /// The command the next cut is for, as RESP sends its name (`$8\r\nRL.CHECK\r\n`), and when.
    armed: Mutex<Option<(Vec<u8>, Cut)>>,
    cuts: AtomicUsize,
    connections: AtomicUsize,
    /// Every socket the proxy holds, closed when it drops.
    sockets: Mutex<Vec<TcpStream>>,
    /// The chaos in force.
    chaos: Mutex<Chaos>,
    /// Command chunks drawn so far (each strikes with the chaos's odds, from a fixed
    /// pseudo-random sequence: the same strikes every run).
    draws: AtomicU64,
    stalls: AtomicUsize,
    closes: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn keep(&self, socket: &TcpStream) {
        if let Ok(clone) = socket.try_clone() {
            self.sockets.lock().unwrap_or_else(PoisonError::into_inner).push(clone);
        }
    }

    /// The armed cut (disarmed now) when `chunk` sends the armed command.
    fn take_cut(&self, chunk: &[u8]) -> Option<Cut> {
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        let hit = armed
            .as_ref()
            .is_some_and(|(needle, _)| chunk.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle)));
        if hit {
            armed.take().map(|(_, cut)| cut)
        } else {
            None
        }
    }

    /// The latency in force, and this connection's fate; a command chunk (`drawing`) may
    /// strike it now.
    fn fate(&self, fate: &Fate, drawing: bool) -> (Duration, u8) {
        let chaos = *self.chaos.lock().unwrap_or_else(PoisonError::into_inner);
        if drawing && fate.fate.load(Ordering::SeqCst) == FATE_NONE {
            // A fixed pseudo-random sequence (SplitMix64 of the draw's number): the same
            // strikes every run, and no lock-step with a client's pattern of chunks (a plain
            // `n % 2` would always strike a connection's first command after its handshake).
            let n = self.draws.fetch_add(1, Ordering::SeqCst) + 1;
            let roll = crate::fuzz::SplitMix(n).next_u64();
            let struck = if chaos.stall_one_in > 0 && roll.is_multiple_of(u64::from(chaos.stall_one_in)) {
                self.stalls.fetch_add(1, Ordering::SeqCst);
                FATE_STALL
            } else if chaos.close_one_in > 0 && (roll >> 32).is_multiple_of(u64::from(chaos.close_one_in)) {
                self.closes.fetch_add(1, Ordering::SeqCst);
                FATE_CLOSE
            } else {
                FATE_NONE
            };
            fate.fate.store(struck, Ordering::SeqCst);
        }
        (chaos.latency, fate.fate.load(Ordering::SeqCst))
    }

    fn arm(&self, command: &str, cut: Cut) {
        let needle = format!("${}\r\n{command}\r\n", command.len()).into_bytes();
        *self.armed.lock().unwrap_or_else(PoisonError::into_inner) = Some((needle, cut));
    }
}

/// A connection's cut, once its armed command passed: none yet, or which [`Cut`].
const NO_CUT: u8 = 0;
const CUT_AFTER_REPLY: u8 = 1;
const CUT_AFTER_SENDING: u8 = 2;

/// When an armed cut closes the client's side.
#[derive(Clone, Copy)]
enum Cut {
    /// Once the server's reply arrived (thrown away).
    AfterReply,
    /// As soon as the command was passed on to the server (which still runs it; its reply is
    /// thrown away): the client sees its connection end while its command is barely out.
    AfterSending,
}

impl Proxy {
    /// Listens on `127.0.0.1:port` and relays to `127.0.0.1:target`.
    pub fn start(port: u16, target: u16) -> Proxy {
        Self::try_start(port, target).unwrap_or_else(|e| panic!("proxy on {port}: {e}"))
    }

    /// Listens on a free port and relays to `127.0.0.1:target`, trying another port when the
    /// one chosen was taken before it could be bound.
    pub fn start_anywhere(target: u16) -> Proxy {
        let mut last = None;
        for _ in 0..5 {
            match Self::try_start(crate::free_port(), target) {
                Ok(proxy) => return proxy,
                Err(e) => last = Some(e),
            }
        }
        panic!("no port for a proxy: {last:?}")
    }

    fn try_start(port: u16, target: u16) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        let shared = Arc::new(Shared { target, ..Shared::default() });
        let accept = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(&listener, &shared))
        };
        Ok(Proxy { port, shared, accept: Some(accept) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Arms one cut: the next time a client sends `command` (a command name such as
    /// `RL.CHECK`, matched case-insensitively), the proxy forwards it, waits for the server's
    /// reply, throws the reply away and closes both sides of that connection. The server ran
    /// the command; the client only sees its connection drop. Meant for a client that has one
    /// command in flight on the connection at that moment (the next bytes from the server are
    /// then that command's reply).
    pub fn cut_after_reply_to(&self, command: &str) {
        self.shared.arm(command, Cut::AfterReply);
    }

    /// Arms one cut like [`Proxy::cut_after_reply_to`], but the client's side is closed as soon
    /// as `command` was passed on, without waiting for the server's reply (which is thrown away
    /// when it comes; the server runs the command all the same). Counted in [`Proxy::cuts`] then.
    pub fn cut_after_sending(&self, command: &str) {
        self.shared.arm(command, Cut::AfterSending);
    }

    /// Trouble on every connection from now on; `Chaos::default()` ends it (a stalled
    /// connection stays stalled: its client must give it up, as after a real partition).
    pub fn set_chaos(&self, chaos: Chaos) {
        *self.shared.chaos.lock().unwrap_or_else(PoisonError::into_inner) = chaos;
    }

    /// Connections stalled and closed by [`Chaos`] so far.
    pub fn chaos_counts(&self) -> (usize, usize) {
        (self.shared.stalls.load(Ordering::SeqCst), self.shared.closes.load(Ordering::SeqCst))
    }

    /// How many connections were cut so far.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// How many client connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stopping`.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for socket in self.shared.sockets.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = self.shared.threads.lock().unwrap_or_else(PoisonError::into_inner).drain(..).collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, shared.target)) else { continue };
        let (Ok(client_reader), Ok(server_reader)) = (client.try_clone(), server.try_clone()) else { continue };
        shared.keep(&client);
        shared.keep(&server);
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let cut = Arc::new(AtomicU8::new(NO_CUT));
        let fate = Arc::new(Fate::default());
        let Ok(client_closer) = client.try_clone() else { continue };
        let upstream = {
            let (shared, cut, fate) = (shared.clone(), cut.clone(), fate.clone());
            std::thread::spawn(move || relay_commands(client_reader, server, &client_closer, &shared, &cut, &fate))
        };
        let downstream = {
            let shared = shared.clone();
            std::thread::spawn(move || relay_replies(server_reader, client, &shared, &cut, &fate))
        };
        shared.threads.lock().unwrap_or_else(PoisonError::into_inner).extend([upstream, downstream]);
    }
}

/// Client to server; marks the connection for the cut when the armed command passes (and
/// closes the client's side at once for [`Cut::AfterSending`]).
fn relay_commands(
    mut client: TcpStream,
    mut server: TcpStream,
    client_side: &TcpStream,
    shared: &Shared,
    cut: &AtomicU8,
    fate: &Fate,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match shared.fate(fate, true) {
            (_, FATE_STALL) => continue, // swallowed: the server never hears it
            (_, FATE_CLOSE) => {
                let _ = client_side.shutdown(Shutdown::Both);
                break;
            }
            (latency, _) if !latency.is_zero() => std::thread::sleep(latency),
            _ => {}
        }
        let armed = shared.take_cut(&buf[..n]);
        match armed {
            Some(Cut::AfterReply) => cut.store(CUT_AFTER_REPLY, Ordering::SeqCst),
            Some(Cut::AfterSending) => {
                // The client's side is closed first: once the command reaches the server its
                // reply may come back at once, and must not be passed on.
                cut.store(CUT_AFTER_SENDING, Ordering::SeqCst);
                shared.cuts.fetch_add(1, Ordering::SeqCst);
                let _ = client_side.shutdown(Shutdown::Both);
            }
            None => {}
        }
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(Cut::AfterSending) = armed {
            // The server reads the command, then the end of the connection.
            let _ = server.shutdown(Shutdown::Write);
            return;
        }
    }
    let _ = server.shutdown(Shutdown::Both);
}

/// Server to client, until the reply that the cut swallows.
fn relay_replies(mut server: TcpStream, mut client: TcpStream, shared: &Shared, cut: &AtomicU8, fate: &Fate) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match shared.fate(fate, false) {
            (_, FATE_STALL) => continue,
            (_, FATE_CLOSE) => break,
            (latency, _) if !latency.is_zero() => std::thread::sleep(latency),
            _ => {}
        }
        match cut.load(Ordering::SeqCst) {
            NO_CUT => {}
            CUT_AFTER_REPLY => {
                shared.cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
            _ => continue, // cut after sending: counted then, and the server ends the connection
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{free_port, RedisServer};

    #[test]
    fn relays_until_armed_then_cuts_once_after_the_server_answered() {
        let server = RedisServer::builder().without_module().start();
        let proxy = Proxy::start(free_port(), server.port());
        let client = redis::Client::open(proxy.url()).unwrap();
        let mut con = client.get_connection().unwrap();
        let _: () = redis::cmd("SET").arg("n").arg(0).query(&mut con).unwrap();
        proxy.cut_after_reply_to("INCR");
        let _: i64 = redis::cmd("GET").arg("n").query(&mut con).unwrap();
        assert!(redis::cmd("incr").arg("n").query::<i64>(&mut con).is_err(), "the reply never arrives");
        assert_eq!(proxy.cuts(), 1);
        // The server ran it once; the cut was one-shot, so a new connection works again.
        let mut again = client.get_connection().unwrap();
        assert_eq!(redis::cmd("INCR").arg("n").query::<i64>(&mut again).unwrap(), 2);
        assert_eq!((proxy.cuts(), proxy.connections()), (1, 2));
    }

    #[test]
    fn chaos_delays_every_chunk_and_stalls_or_closes_its_share_of_connections() {
        let server = RedisServer::builder().without_module().start();
        let proxy = Proxy::start(free_port(), server.port());
        let client = redis::Client::open(proxy.url()).unwrap();
        proxy.set_chaos(Chaos { latency: Duration::from_millis(50), ..Chaos::default() });
        let mut con = client.get_connection().unwrap();
        let started = std::time::Instant::now();
        let _: String = redis::cmd("PING").query(&mut con).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(100), "50 ms each way: {:?}", started.elapsed());
        // Every second command chunk stalls its connection, every third of the others closes
        // it: of a handful of connections, each sending its handshake and then a PING, some
        // answer, some stall and some close, in the same shares every run.
        proxy.set_chaos(Chaos { stall_one_in: 2, close_one_in: 3, ..Chaos::default() });
        let mut outcomes = Vec::new();
        for _ in 0..6 {
            // The client's handshake is the first chunk: the fate may strike there already.
            let answer = client.get_connection_with_timeout(Duration::from_millis(300)).and_then(|mut con| {
                con.set_read_timeout(Some(Duration::from_millis(300)))?;
                redis::cmd("PING").query::<String>(&mut con)
            });
            outcomes.push(match answer {
                Ok(_) => "ok",
                Err(e) if e.is_timeout() || e.to_string().contains("os error 11") => "stalled",
                Err(_) => "closed",
            });
        }
        assert!(outcomes.contains(&"stalled") && outcomes.contains(&"closed"), "{outcomes:?}");
        let (stalls, closes) = proxy.chaos_counts();
        assert_eq!(outcomes.iter().filter(|o| **o == "stalled").count(), stalls, "{outcomes:?}");
        assert_eq!(outcomes.iter().filter(|o| **o == "closed").count(), closes, "{outcomes:?}");
        proxy.set_chaos(Chaos::default());
        let mut healed = client.get_connection().unwrap();
        assert_eq!(redis::cmd("PING").query::<String>(&mut healed).unwrap(), "PONG");
    }

    #[test]
    fn a_cut_after_sending_closes_the_client_at_once_and_the_server_still_runs_the_command() {
        let server = RedisServer::builder().without_module().start();
        let proxy = Proxy::start(free_port(), server.port());
        let client = redis::Client::open(proxy.url()).unwrap();
        let mut con = client.get_connection().unwrap();
        proxy.cut_after_sending("INCR");
        assert!(redis::cmd("INCR").arg("n").query::<i64>(&mut con).is_err(), "the reply never arrives");
        assert_eq!(proxy.cuts(), 1);
        let mut direct = server.client();
        let ran = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            redis::cmd("GET").arg("n").query::<Option<i64>>(&mut direct).unwrap() == Some(1)
        });
        assert!(ran, "the server ran it");
        let mut again = client.get_connection().unwrap();
        assert_eq!(redis::cmd("INCR").arg("n").query::<i64>(&mut again).unwrap(), 2, "one-shot");
    }
}
