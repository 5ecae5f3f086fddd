//! One worker: an io_uring runtime (`crate::rt`) on its own thread, its listeners, and its
//! per-worker state (upstream pool, manifest cache, counters). The state is `!Send` and
//! lock-free; a reload builds a new generation of it, which new requests use while requests
//! in flight finish on the one they started with.

use std::cell::{Cell, RefCell};
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::conf::{Config, Http};
use crate::log::{self, AccessLog};
use crate::metrics::{Registry, Stats};
use crate::object::composite::Composite;
use crate::object::manifest::{Cache, Manifest};
use crate::object::tail_cache::TailCache;
use crate::relay::splice::Pipes;
use crate::relay::{Buffers, LargeBuffers};
use crate::rt::{self, net::TcpListener};
use crate::timer::{Tick, Timers};
use crate::upstream::addresses::Addresses;
use crate::upstream::Upstream;

use super::conn::{self, Fetched};
use super::flight::Flights;
use super::recycle::Recycler;
use super::trim::{Load, Trim};

/// A response head's buffer; a longer head (a long file name) grows its own.
const HEAD_BUFFER: usize = 1024;

/// Each `s3` block's endpoint addresses, indexed like `conf.http.s3`: one set per conf
/// generation, shared by the workers and refreshed by the resolver thread.
pub(super) type Endpoints = Arc<[Arc<Addresses>]>;

/// What all workers share: the current conf generation with its endpoints, the stats
/// registry, the access log writer, and the drain flag.
pub(super) struct Shared {
    conf: Mutex<(Arc<Config>, Endpoints)>,
    pub generation: AtomicU64,
    pub registry: Registry,
    pub access: AccessLog,
    pub draining: AtomicBool,
    /// When to give the allocator's free memory back.
    pub trim: Trim,
}

impl Shared {
    pub(super) fn new(conf: Config, access: AccessLog) -> Shared {
        Shared {
            conf: Mutex::new(with_endpoints(conf)),
            generation: AtomicU64::new(0),
            registry: Registry::default(),
            access,
            draining: AtomicBool::new(false),
            trim: Trim::new(),
        }
    }

    pub(super) fn current(&self) -> (u64, Arc<Config>) {
        let (generation, conf, _) = self.current_with_endpoints();
        (generation, conf)
    }

    pub(super) fn current_with_endpoints(&self) -> (u64, Arc<Config>, Endpoints) {
        let (conf, endpoints) = &*self.conf.lock().unwrap_or_else(|p| p.into_inner());
        (
            self.generation.load(Ordering::Acquire),
            Arc::clone(conf),
            Arc::clone(endpoints),
        )
    }

    /// Makes `conf` the next generation; returns its number.
    pub(super) fn replace(&self, conf: Config) -> u64 {
        *self.conf.lock().unwrap_or_else(|p| p.into_inner()) = with_endpoints(conf);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// A conf and fresh address sets for its endpoints, starting from what its load resolved.
fn with_endpoints(conf: Config) -> (Arc<Config>, Endpoints) {
    let now = Tick::now();
    let endpoints = conf
        .http
        .s3
        .iter()
        .map(|b| {
            Arc::new(Addresses::new(
                &b.host(),
                b.endpoint.port,
                &b.endpoint.addrs,
                now,
            ))
        })
        .collect();
    (Arc::new(conf), endpoints)
}

/// One generation of a worker's state.
pub(super) struct State {
    pub generation: u64,
    pub conf: Arc<Config>,
    pub upstream: Upstream,
    /// One cache per `s3` block, indexed like `conf.http.s3`, so a look-up borrows the key
    /// instead of building one.
    pub manifests: Vec<RefCell<Cache<Rc<Manifest>>>>,
    pub objects: Vec<RefCell<Cache<Rc<Composite>>>>,
    /// Manifest and object-metadata fetches under way, one per block and key, so that
    /// the requests missing a key at the same moment share one fetch.
    pub manifest_fetches: Vec<Flights<Fetched<Manifest>>>,
    pub object_fetches: Vec<Flights<Fetched<Composite>>>,
    /// This worker's share of `tail_cache_size`.
    pub tails: RefCell<TailCache>,
    /// Idle pipes for spliced relays, `relay_buffer_size` each.
    pub pipes: RefCell<Pipes>,
    /// This worker's `relay_large_buffers`.
    pub large: LargeBuffers,
    /// This worker's counters (shared with its other generations).
    pub stats: Arc<Stats>,
    /// Idle relay buffers, `relay_buffer_size` each.
    pub buffers: Buffers,
    /// Idle response-head buffers.
    pub heads: Buffers,
}

impl State {
    fn new(
        generation: u64,
        conf: Arc<Config>,
        endpoints: &Endpoints,
        stats: &Arc<Stats>,
    ) -> Result<State, String> {
        let http = &conf.http;
        Ok(State {
            generation,
            stats: Arc::clone(stats),
            upstream: Upstream::new(&http.s3, endpoints, Arc::clone(stats))?,
            manifests: caches(http),
            objects: caches(http),
            manifest_fetches: http.s3.iter().map(|_| Flights::new()).collect(),
            object_fetches: http.s3.iter().map(|_| Flights::new()).collect(),
            tails: RefCell::new(TailCache::new(
                http.tail_cache_size / conf.worker_threads.max(1) as u64,
            )),
            pipes: RefCell::new(Pipes::new(http.relay_buffer_size)),
            large: LargeBuffers::new(http.relay_large_buffers.0, http.relay_large_buffers.1),
            buffers: Buffers::new(http.relay_buffer_size),
            heads: Buffers::new(HEAD_BUFFER),
            conf,
        })
    }
}

/// One metadata cache per `s3` block.
fn caches<T: Clone>(http: &Http) -> Vec<RefCell<Cache<T>>> {
    http.s3
        .iter()
        .map(|_| {
            RefCell::new(Cache::new(
                http.manifest_cache_ttl,
                http.manifest_cache_size,
            ))
        })
        .collect()
}

pub(super) struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub stats: Arc<Stats>,
    state: RefCell<Rc<State>>,
    /// Client connections open on this worker.
    pub active: Cell<usize>,
    /// The timeouts of this worker's connections.
    pub timers: Timers,
    /// The heap blocks of the futures boxed per request.
    pub recycler: Recycler,
}

impl Worker {
    /// The current generation, rebuilt first if a reload happened.
    pub(super) fn state(&self) -> Rc<State> {
        let seen = self.shared.generation.load(Ordering::Acquire);
        let current = Rc::clone(&self.state.borrow());
        if current.generation == seen {
            return current;
        }
        let (generation, conf, endpoints) = self.shared.current_with_endpoints();
        match State::new(generation, conf, &endpoints, &self.stats) {
            Ok(s) => {
                current.upstream.close_idle();
                let s = Rc::new(s);
                *self.state.borrow_mut() = Rc::clone(&s);
                s
            }
            Err(e) => {
                log::error!(
                    "worker {}: reload: {e}; keeping the previous configuration",
                    self.id
                );
                current
            }
        }
    }
}

pub(super) fn run(
    id: usize,
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
) -> Result<(), String> {
    let stats = shared.registry.register();
    let (generation, conf, endpoints) = shared.current_with_endpoints();
    let state = State::new(generation, conf, &endpoints, &stats)?;
    let worker = Rc::new(Worker {
        id,
        shared,
        stats,
        state: RefCell::new(Rc::new(state)),
        active: Cell::new(0),
        timers: Timers::new(),
        recycler: Recycler::default(),
    });
    rt::start(async move {
        let timers = Rc::clone(&worker);
        rt::spawn(async move { timers.timers.sweep().await });
        let sweeper = Rc::clone(&worker);
        rt::spawn(async move {
            let mut next = Instant::now();
            loop {
                rt::time::sleep_until(next).await;
                next += Duration::from_secs(1);
                let state = sweeper.state();
                state.upstream.sweep();
                let registry = &sweeper.shared.registry;
                let load = Load {
                    requests: registry.requests(),
                    busy: registry.busy(),
                    released: state.buffers.take_released() as u64,
                };
                if sweeper.shared.trim.tick(&load, Instant::now()) {
                    sweeper.stats.memory_trims.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        for l in listeners {
            let listener = TcpListener::from_std(l);
            rt::spawn(accept_loop(listener, Rc::clone(&worker)));
        }
        // The accept loops end when draining; the runtime stays up for the connections still
        // being served, and the process exits when they are done or shutdown_timeout passes.
        std::future::pending::<()>().await;
    })
    .map_err(|e| format!("worker {id}: io_uring: {e}"))
}

async fn accept_loop(listener: TcpListener, worker: Rc<Worker>) {
    // At the fd limit every accept fails: log the first failure, then at most one summary
    // line a second, so a sustained EMFILE does not flood the error log.
    let mut throttle = log::Throttle::default();
    loop {
        let accepted = listener.accept().await;
        // Draining shuts the listener down, which fails the pending accept; a connection
        // accepted just before is still answered (with `Connection: close`), as its client
        // may have sent its request already and cannot know to retry elsewhere.
        let draining = worker.shared.draining.load(Ordering::Acquire);
        let (stream, peer) = match accepted {
            Ok(v) => v,
            Err(_) if draining => return,
            Err(e) => {
                if let Some(n) = throttle.note(Instant::now()) {
                    log::error!(
                        "worker {}: accept: {e} ({n} failed accepts since the last line)",
                        worker.id
                    );
                }
                // EMFILE and friends: back off briefly rather than spin.
                crate::rt::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        worker.stats.accepts.fetch_add(1, Ordering::Relaxed);
        let limit = worker.state().conf.http.worker_connections;
        if worker.active.get() >= limit {
            log::warning!(
                "worker {}: worker_connections ({limit}) reached, refusing {peer}",
                worker.id
            );
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        worker.stats.handled.fetch_add(1, Ordering::Relaxed);
        worker.active.set(worker.active.get() + 1);
        rt::spawn(conn::serve(stream, peer, Rc::clone(&worker)));
        if draining {
            return;
        }
    }
}
