//! A child process that cannot outlive its test: [`ChildGuard`].
//!
//! Dropping the guard kills the child, also when the test panics. A test binary that is itself
//! killed (`SIGKILL`, a CI timeout) drops nothing, so every child also asks the kernel to kill
//! it when its parent goes (`PR_SET_PDEATHSIG`). The kernel means the parent *thread*: a server
//! forked from a thread that then ends (a test's, or one of the threads starting a cluster's
//! nodes) would die with it. So all children are forked by one thread that lives as long as the
//! test binary (`spawn_for_life`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::wait_until;

/// A running child process, killed (and reaped) when the guard drops, also when the test
/// panics. Its stdout and stderr go to files, read back by [`ChildGuard::logs`] for failure
/// messages.
///
/// ```no_run
/// let mut cmd = std::process::Command::new("sleep");
/// cmd.arg("60");
/// let child = testkit::ChildGuard::spawn("sleeper", cmd);
/// assert!(child.logs().contains("sleeper stdout"));
/// ```
pub struct ChildGuard {
    name: String,
    child: Child,
    log_dir: PathBuf,
    /// The directory of the log files, when the guard made it (removed on drop).
    _own_dir: Option<tempfile::TempDir>,
}

impl ChildGuard {
    /// Starts `command` (stdin closed, stdout and stderr to files in a new temporary
    /// directory); panics, naming the program, when it cannot be started.
    pub fn spawn(name: &str, command: Command) -> ChildGuard {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rl-test-{name}-"))
            .tempdir()
            .expect("create a temporary directory for a child's logs");
        let mut guard = Self::spawn_logging_to(name, command, dir.path());
        guard._own_dir = Some(dir);
        guard
    }

    /// Like [`ChildGuard::spawn`], with the log files `<name>.stdout` and `<name>.stderr` in
    /// `dir` (which the caller keeps).
    pub fn spawn_logging_to(name: &str, command: Command, dir: &Path) -> ChildGuard {
        let program = command.get_program().to_owned();
        Self::try_spawn_logging_to(name, command, dir)
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", Path::new(&program).display()))
    }

    /// Like [`ChildGuard::spawn_logging_to`], but an error when the program cannot be started.
    pub fn try_spawn_logging_to(name: &str, mut command: Command, dir: &Path) -> io::Result<ChildGuard> {
        let log = |stream: &str| fs::File::create(dir.join(format!("{name}.{stream}")));
        command.stdin(Stdio::null()).stdout(log("stdout")?).stderr(log("stderr")?);
        let child = spawn_for_life(command)?;
        Ok(ChildGuard { name: name.to_string(), child, log_dir: dir.to_path_buf(), _own_dir: None })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited, `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM (via `kill`, as a service manager would).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("run kill: {e}"));
        assert!(status.success(), "kill -TERM {} ({}) failed", self.id(), self.name);
    }

    /// Waits up to `limit` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(Instant::now() + limit, || {
            status = self.exited();
            status.is_some()
        });
        status
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its stdout and stderr so far.
    pub fn logs(&self) -> String {
        let read = |stream: &str| fs::read_to_string(self.log_dir.join(format!("{}.{stream}", self.name)));
        let name = &self.name;
        format!(
            "--- {name} stdout ---\n{}\n--- {name} stderr ---\n{}",
            read("stdout").unwrap_or_default(),
            read("stderr").unwrap_or_default()
        )
    }
}

/// Starts `command` from the spawner thread, with `SIGKILL` as its parent-death signal.
fn spawn_for_life(mut command: Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};
    type Order = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Order>>> = OnceLock::new();
    // SAFETY: between fork and exec the child only calls prctl, which is async-signal-safe, and
    // allocates nothing.
    unsafe {
        command.pre_exec(|| match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
            -1 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
    let orders = SPAWNER.get_or_init(|| {
        let (orders, inbox) = mpsc::channel::<Order>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut command, reply) in inbox {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the testkit spawner thread");
        Mutex::new(orders)
    });
    let (reply, answer) = mpsc::channel();
    let sent = orders.lock().map_err(|_| io::Error::other("spawner lock poisoned"))?.send((command, reply));
    sent.map_err(|_| io::Error::other("the testkit spawner thread is gone"))?;
    answer.recv().map_err(|_| io::Error::other("the testkit spawner thread is gone"))?
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_logs_to_files_exits_and_is_killed_on_drop() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let mut done = ChildGuard::spawn("echo", cmd);
        let status = done.wait_exit(Duration::from_secs(10)).expect("sh exits");
        assert_eq!(status.code(), Some(3));
        let logs = done.logs();
        assert!(logs.contains("--- echo stdout ---\nout\n") && logs.contains("--- echo stderr ---\nerr\n"), "{logs}");

        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        let mut sleeper = ChildGuard::spawn("sleeper", cmd);
        assert_eq!(sleeper.wait_exit(Duration::from_millis(50)), None, "still running");
        let pid = sleeper.id();
        drop(sleeper);
        let alive = Command::new("kill").args(["-0", &pid.to_string()]).stderr(Stdio::null()).status().unwrap();
        assert!(!alive.success(), "process {pid} outlived its guard");
    }

    /// When the test binary itself is killed, its children die with it: run as the parent in
    /// a second copy of this test binary (which starts a `sleep` and waits), killed here.
    #[test]
    fn children_die_with_a_killed_test_binary() {
        if std::env::var_os("TESTKIT_PARENT_ROLE").is_some() {
            // Started from a thread that ends at once: the child must outlive that thread.
            let sleeper = std::thread::spawn(|| {
                let mut cmd = Command::new("sleep");
                cmd.arg("60");
                ChildGuard::spawn("orphan", cmd)
            })
            .join()
            .unwrap();
            println!("child {}", sleeper.id());
            std::thread::sleep(Duration::from_secs(60));
            return;
        }
        let mut parent = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "process::tests::children_die_with_a_killed_test_binary", "--nocapture"])
            .env("TESTKIT_PARENT_ROLE", "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = io::BufReader::new(parent.stdout.take().unwrap());
        let pid = loop {
            let mut line = String::new();
            assert!(io::BufRead::read_line(&mut out, &mut line).unwrap() > 0, "the parent ended early");
            if let Some(pid) = line.trim().strip_prefix("child ") {
                break pid.to_string();
            }
        };
        let alive = || Command::new("kill").args(["-0", &pid]).stderr(Stdio::null()).status().unwrap().success();
        std::thread::sleep(Duration::from_millis(200));
        assert!(alive(), "the child outlives the thread that asked for it");
        parent.kill().unwrap();
        parent.wait().unwrap();
        assert!(
            wait_until(Instant::now() + Duration::from_secs(5), || !alive()),
            "process {pid} outlived the killed test binary"
        );
    }
}
