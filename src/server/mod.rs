//! Process level: load the conf, bind, run one OS thread per worker (each with its own
//! io_uring runtime and SO_REUSEPORT listener), and handle signals as nginx does:
//! `SIGHUP` reloads the conf, `SIGUSR1` reopens the log files, `SIGQUIT` drains and exits,
//! `SIGTERM`/`SIGINT` exit at once.

mod conn;
mod flight;
mod recycle;
mod trim;
mod worker;

use std::fmt;
use std::net::{Shutdown, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::conf::{ConfError, Config, ProcessEnv};
use crate::log::{self, AccessLog};
use crate::timer::Tick;
use crate::upstream::addresses::Refresh;
use worker::Shared;

#[derive(Debug)]
pub enum ServeError {
    Conf(ConfError),
    Io(String),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Conf(e) => write!(f, "{e}"),
            ServeError::Io(m) => write!(f, "{m}"),
        }
    }
}

pub fn run(path: &Path) -> Result<(), ServeError> {
    let conf = Config::load(path, &ProcessEnv).map_err(ServeError::Conf)?;
    log::init(&conf.error_log.0, conf.error_log.1)
        .map_err(|e| ServeError::Io(format!("error_log: {e}")))?;
    fd_limit(conf.worker_threads, conf.http.worker_connections);
    // Handlers first: a signal during start-up must not take the default action.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1])
        .map_err(|e| ServeError::Io(format!("signals: {e}")))?;
    // Resolve port 0 once, so that every worker's listener shares the same port.
    let mut addrs = Vec::with_capacity(conf.http.listen.len());
    let mut first_listeners = Vec::new();
    for addr in &conf.http.listen {
        let l = bind(*addr).map_err(|e| ServeError::Io(format!("bind {addr}: {e}")))?;
        let local = l
            .local_addr()
            .map_err(|e| ServeError::Io(format!("bind {addr}: {e}")))?;
        addrs.push(local);
        first_listeners.push(l);
    }
    if let Some(pid) = &conf.pid {
        write_pid(pid).map_err(|e| ServeError::Io(format!("pid {}: {e}", pid.display())))?;
    }
    // Only now: whoever waits for these lines finds the pid file in place.
    for local in &addrs {
        log::info!("listening on {local}");
    }
    let threads = conf.worker_threads;
    let access = AccessLog::start(conf.http.access_log.as_deref());
    let shared = Arc::new(Shared::new(conf, access));
    // Every listener, kept here too so that a drain can stop the workers' accepts.
    let mut all_listeners = Vec::new();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut first = Some(first_listeners);
    for id in 0..threads {
        let listeners = match first.take() {
            Some(l) => l,
            None => addrs
                .iter()
                .map(|a| bind(*a).map_err(|e| ServeError::Io(format!("bind {a}: {e}"))))
                .collect::<Result<Vec<_>, _>>()?,
        };
        for l in &listeners {
            if let Ok(c) = l.try_clone() {
                all_listeners.push(c);
            }
        }
        let shared = Arc::clone(&shared);
        let tx = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("tailgate-worker-{id}"))
            .spawn(move || {
                let _ = tx.send(worker::run(id, shared, listeners));
            })
            .map_err(|e| ServeError::Io(format!("spawn worker: {e}")))?;
    }
    log::info!("started {threads} workers");
    let resolver = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("tailgate-resolver".into())
        .spawn(move || resolve_forever(&resolver))
        .map_err(|e| ServeError::Io(format!("spawn resolver: {e}")))?;
    let watcher = Arc::clone(&shared);
    let conf_path = path.to_path_buf();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            match sig {
                SIGHUP => reload(&watcher, &conf_path),
                SIGUSR1 => reopen_logs(&watcher),
                SIGQUIT => {
                    let _ = done_tx.send(drain(&watcher, &all_listeners));
                    return;
                }
                _ => {
                    log::info!("signal {sig}: exiting");
                    let _ = done_tx.send(Ok(()));
                    return;
                }
            }
        }
    });
    let outcome = done_rx.recv().unwrap_or(Ok(()));
    let (_, conf) = shared.current();
    if let Some(pid) = &conf.pid {
        // Only our own: during an upgrade in place the new process has rewritten it.
        let ours = std::fs::read_to_string(pid)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(pid);
        }
    }
    outcome.map_err(ServeError::Io)
}

/// Writes our pid to `path` by a rename, so that a reader never sees the file empty or
/// half written.
fn write_pid(path: &Path) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Descriptors one client connection may hold at once: its own socket and one to S3.
const FDS_PER_CONNECTION: u64 = 2;

/// Raises the soft open-file limit to the hard one (what a server of many connections
/// needs, and what Go's runtime does for every program; nginx has `worker_rlimit_nofile`),
/// then warns when the limit is below what `worker_connections` lets the workers hold:
/// past it, accepts and upstream connects fail with "too many open files".
fn fd_limit(threads: usize, worker_connections: usize) {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let mut soft = current;
    if let Some((from, target)) = raised(current, maximum) {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum,
            },
        ) {
            Ok(()) => {
                log::info!("open file limit raised from {from} to {target}");
                soft = Some(target);
            }
            Err(e) => log::warning!("open file limit: raising it to {target}: {e}"),
        }
    }
    let needed = fds_needed(threads, worker_connections);
    if let Some(soft) = soft.filter(|&s| s < needed) {
        log::warning!(
            "open file limit {soft} is below {needed} ({threads} workers x worker_connections \
             {worker_connections} x {FDS_PER_CONNECTION}): connections past it fail; raise the \
             hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower worker_connections"
        );
    }
}

/// The soft limit now and the one to set in its place, the hard one, when that is finite and
/// higher. An unlimited hard limit is left alone: the kernel refuses unlimited files.
fn raised(soft: Option<u64>, hard: Option<u64>) -> Option<(u64, u64)> {
    match (soft, hard) {
        (Some(s), Some(h)) if h > s => Some((s, h)),
        _ => None,
    }
}

fn fds_needed(threads: usize, worker_connections: usize) -> u64 {
    (threads as u64)
        .saturating_mul(worker_connections as u64)
        .saturating_mul(FDS_PER_CONNECTION)
}

/// SIGHUP: parse and check the conf again; a valid one becomes the next generation, an
/// invalid one is logged and the running one kept.
fn reload(shared: &Shared, path: &Path) {
    let new = match Config::load(path, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            log::error!("reload: {e}; keeping the running configuration");
            return;
        }
    };
    let (_, old) = shared.current();
    if new.http.listen != old.http.listen || new.worker_threads != old.worker_threads {
        log::warning!(
            "reload: listen and worker_threads changes take a restart; keeping the running ones"
        );
    }
    if let Err(e) = log::init(&new.error_log.0, new.error_log.1) {
        log::error!("reload: error_log: {e}");
    }
    if new.http.access_log != old.http.access_log {
        shared.access.reopen(new.http.access_log.as_deref());
    }
    // Workers are not added by a reload: the running count holds.
    fd_limit(old.worker_threads, new.http.worker_connections);
    let generation = shared.replace(new);
    log::info!("reload: configuration generation {generation} in use for new requests");
}

/// Looks the current generation's endpoint names up again as their `resolve_interval`
/// comes due, on this thread (DNS may block; workers never wait for it), and logs what
/// changed or failed: the workers' next connections go to the new addresses, and their
/// idle connections to addresses that are gone close within a second.
fn resolve_forever(shared: &Shared) {
    loop {
        #[allow(clippy::disallowed_methods)] // the resolver's own thread, not a worker runtime
        std::thread::sleep(Duration::from_secs(1));
        let (_, conf, endpoints) = shared.current_with_endpoints();
        for (b, addresses) in conf.http.s3.iter().zip(endpoints.iter()) {
            let Some(interval) = b.resolve_interval else {
                continue;
            };
            match addresses.refresh(Tick::now(), interval) {
                Refresh::Changed(old, new) => log::info!(
                    "s3 block \"{}\": \"{}\" now resolves to {} (was {})",
                    b.name,
                    b.host(),
                    list(&new),
                    list(&old)
                ),
                Refresh::Failed(e) => log::warning!(
                    "s3 block \"{}\": {e}; keeping {}",
                    b.name,
                    list(&addresses.current())
                ),
                Refresh::Skipped | Refresh::Unchanged => {}
            }
        }
    }
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// SIGUSR1: reopen the error and access logs by path, as nginx does after logrotate has
/// renamed them; the lines of requests in flight go to the new files.
fn reopen_logs(shared: &Shared) {
    let (_, conf) = shared.current();
    if let Err(e) = log::init(&conf.error_log.0, conf.error_log.1) {
        log::error!("signal SIGUSR1: error_log: {e}");
    }
    shared.access.reopen(conf.http.access_log.as_deref());
    log::info!("signal SIGUSR1: log files reopened");
}

/// SIGQUIT: stop accepting, let the responses in flight finish within shutdown_timeout.
fn drain(shared: &Shared, listeners: &[std::net::TcpListener]) -> Result<(), String> {
    shared.draining.store(true, Ordering::Release);
    for l in listeners {
        // Wakes every pending accept on the listener with an error.
        let _ = SockRef::from(l).shutdown(Shutdown::Read);
    }
    let (_, conf) = shared.current();
    let deadline = Instant::now() + conf.shutdown_timeout;
    log::info!(
        "signal SIGQUIT: draining for up to {:?}",
        conf.shutdown_timeout
    );
    loop {
        let busy = shared.registry.busy();
        if busy == 0 {
            log::info!("drained: exiting");
            return Ok(());
        }
        if Instant::now() >= deadline {
            log::warning!("shutdown_timeout passed with {busy} responses in flight: exiting");
            return Ok(());
        }
        #[allow(clippy::disallowed_methods)] // the main thread, not a worker runtime
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_goes_up_to_a_finite_hard_one_only() {
        assert_eq!(raised(Some(1024), Some(524_288)), Some((1024, 524_288)));
        assert_eq!(raised(Some(1024), Some(1024)), None, "already there");
        assert_eq!(raised(Some(4096), Some(1024)), None, "never down");
        assert_eq!(
            raised(Some(1024), None),
            None,
            "unlimited is refused for files"
        );
        assert_eq!(raised(None, None), None);
    }

    #[test]
    fn each_connection_may_hold_a_client_and_an_upstream_descriptor() {
        assert_eq!(fds_needed(2, 10240), 40_960);
        assert_eq!(fds_needed(1, 1), 2);
        assert_eq!(fds_needed(usize::MAX, usize::MAX), u64::MAX);
    }

    #[test]
    fn the_pid_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("tg-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tailgate.pid");
        std::fs::write(&path, "stale and longer than a pid\n").unwrap();
        write_pid(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
        let missing = dir.join("no-such-dir").join("tailgate.pid");
        assert!(write_pid(&missing).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
