//! One worker: a tokio-uring runtime on its own thread, its listeners, and its per-worker
//! state (upstream pool, manifest cache, counters). All of it is `!Send` and lock-free.

use std::cell::{Cell, RefCell};
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::conf::Config;
use crate::log;
use crate::object::composite::Composite;
use crate::object::manifest::{Cache, Manifest};
use crate::upstream::Upstream;

use super::conn;

pub(super) struct Worker {
    pub conf: Arc<Config>,
    pub upstream: Upstream,
    pub manifests: RefCell<Cache<Rc<Manifest>>>,
    pub objects: RefCell<Cache<Rc<Composite>>>,
    /// Client connections open on this worker.
    pub active: Cell<usize>,
}

pub(super) fn run(
    id: usize,
    conf: Arc<Config>,
    listeners: Vec<std::net::TcpListener>,
) -> Result<(), String> {
    let upstream = Upstream::new(&conf.http.s3)?;
    let http = &conf.http;
    let worker = Rc::new(Worker {
        manifests: RefCell::new(Cache::new(
            http.manifest_cache_ttl,
            http.manifest_cache_size,
        )),
        objects: RefCell::new(Cache::new(
            http.manifest_cache_ttl,
            http.manifest_cache_size,
        )),
        conf: Arc::clone(&conf),
        upstream,
        active: Cell::new(0),
    });
    tokio_uring::start(async move {
        let sweeper = Rc::clone(&worker);
        tokio_uring::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                sweeper.upstream.sweep();
            }
        });
        let mut accepts = Vec::new();
        for l in listeners {
            let listener = tokio_uring::net::TcpListener::from_std(l);
            accepts.push(tokio_uring::spawn(accept_loop(
                id,
                listener,
                Rc::clone(&worker),
            )));
        }
        for a in accepts {
            let _ = a.await;
        }
    });
    Ok(())
}

async fn accept_loop(id: usize, listener: tokio_uring::net::TcpListener, worker: Rc<Worker>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                log::error!("worker {id}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if worker.active.get() >= worker.conf.http.worker_connections {
            log::warning!(
                "worker {id}: worker_connections ({}) reached, refusing {peer}",
                worker.conf.http.worker_connections
            );
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        worker.active.set(worker.active.get() + 1);
        let w = Rc::clone(&worker);
        tokio_uring::spawn(async move {
            conn::serve(stream, peer, Rc::clone(&w)).await;
            w.active.set(w.active.get().saturating_sub(1));
        });
    }
}
