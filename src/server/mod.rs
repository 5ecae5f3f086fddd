//! Process level: load the conf, bind, and run one OS thread per worker, each with its own
//! tokio-uring runtime and SO_REUSEPORT listener. Nothing here is shared between workers
//! but the immutable [`Config`].

mod conn;
mod worker;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;
use socket2::{Domain, Protocol, Socket, Type};

use crate::conf::{ConfError, Config, ProcessEnv};
use crate::log;

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
    // Handlers first: a signal during start-up must not take the default action.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP])
        .map_err(|e| ServeError::Io(format!("signals: {e}")))?;
    // Resolve port 0 once, so that every worker's listener shares the same port.
    let mut addrs = Vec::with_capacity(conf.http.listen.len());
    let mut first_listeners = Vec::new();
    for addr in &conf.http.listen {
        let l = bind(*addr).map_err(|e| ServeError::Io(format!("bind {addr}: {e}")))?;
        let local = l
            .local_addr()
            .map_err(|e| ServeError::Io(format!("bind {addr}: {e}")))?;
        log::info!("listening on {local}");
        addrs.push(local);
        first_listeners.push(l);
    }
    if let Some(pid) = &conf.pid {
        std::fs::write(pid, format!("{}\n", std::process::id()))
            .map_err(|e| ServeError::Io(format!("pid {}: {e}", pid.display())))?;
    }
    let conf = Arc::new(conf);
    let mut threads = Vec::with_capacity(conf.worker_threads);
    let mut first = Some(first_listeners);
    for id in 0..conf.worker_threads {
        let listeners = match first.take() {
            Some(l) => l,
            None => addrs
                .iter()
                .map(|a| bind(*a).map_err(|e| ServeError::Io(format!("bind {a}: {e}"))))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let conf = Arc::clone(&conf);
        let t = std::thread::Builder::new()
            .name(format!("tailgate-worker-{id}"))
            .spawn(move || worker::run(id, conf, listeners))
            .map_err(|e| ServeError::Io(format!("spawn worker: {e}")))?;
        threads.push(t);
    }
    log::info!("started {} workers", threads.len());
    // Workers only end on a fatal error; watch them beside the signals.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for t in threads {
        let tx = done_tx.clone();
        std::thread::spawn(move || {
            let outcome = match t.join() {
                Ok(r) => r,
                Err(_) => Err("a worker thread panicked".into()),
            };
            let _ = tx.send(outcome);
        });
    }
    let signals_tx = done_tx;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            match sig {
                // Reload comes with the operations work; until then HUP must not kill.
                SIGHUP => {
                    log::warning!("SIGHUP: configuration reload is not supported yet; ignored")
                }
                _ => {
                    log::info!("signal {sig}: exiting");
                    let _ = signals_tx.send(Ok(()));
                    return;
                }
            }
        }
    });
    match done_rx.recv() {
        Ok(Ok(())) | Err(_) => Ok(()),
        Ok(Err(e)) => Err(ServeError::Io(e)),
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
