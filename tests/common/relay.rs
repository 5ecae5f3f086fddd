//! A std-thread TCP relay between tailgate and S3 that records what crosses it (connection
//! opens and closes, request lines with their Range) and injects faults into responses:
//! close or reset at a byte offset, stall, pace, or answer 503 instead of forwarding.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub enum Event {
    Open {
        at: Instant,
        conn: usize,
    },
    Request {
        at: Instant,
        conn: usize,
        line: String,
        range: Option<String>,
    },
    Close {
        at: Instant,
        conn: usize,
    },
}

/// What to do to the response stream of the next connections that match.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Close (FIN) after relaying this many response bytes.
    CloseAfter(u64),
    /// Reset (RST) after this many response bytes.
    ResetAfter(u64),
    /// Stop relaying after this many bytes, for this long, then close.
    StallAfter(u64, Duration),
    /// Answer `503 SlowDown` instead of forwarding the request.
    SlowDown,
    /// Relay the response in pieces of at most this many bytes, pausing after each.
    Pace(usize, Duration),
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// Applies to requests whose request line contains this text.
    pub path_contains: String,
    pub fault: Fault,
    /// How many more requests it applies to.
    pub times: usize,
}

/// The relay; it stops accepting when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

#[derive(Default)]
pub struct Inner {
    pub events: Mutex<Vec<Event>>,
    pub open_now: AtomicUsize,
    pub max_open: AtomicUsize,
    pub rules: Mutex<Vec<Rule>>,
    /// Faults for the response streams of the next connections, whatever they carry
    /// (for TLS, whose request lines the relay cannot read), counted from the
    /// connection's first byte; first in, first used.
    conn_faults: Mutex<VecDeque<Fault>>,
    stop: AtomicBool,
}

/// The fault for the response in flight on a connection, the response bytes relayed, and
/// the rule it comes from while that rule is not yet spent (a rule is spent by a response
/// that starts, so a request that gets no response at all leaves it for the next one).
type Current = Mutex<(Option<Fault>, u64, Option<usize>)>;

impl std::ops::Deref for Relay {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl Relay {
    pub fn start(upstream: SocketAddr) -> Relay {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream)
    }

    /// Listening on `bind` (port 0: any free port).
    pub fn start_on(bind: SocketAddr, upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind(bind).unwrap();
        listener.set_nonblocking(true).unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            inner: Arc::default(),
        };
        let r = Arc::clone(&relay.inner);
        thread::spawn(move || {
            let mut next = 0;
            while !r.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        next += 1;
                        let r2 = Arc::clone(&r);
                        let id = next;
                        thread::spawn(move || r2.serve(id, client, upstream));
                    }
                    Err(_) => {
                        #[allow(clippy::disallowed_methods)] // accept poll
                        thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        });
        relay
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Inner {
    pub fn add_rule(&self, path_contains: &str, fault: Fault, times: usize) {
        self.rules.lock().unwrap().push(Rule {
            path_contains: path_contains.into(),
            fault,
            times,
        });
    }

    /// Applies `fault` to the whole response stream of the next connection opened.
    pub fn fault_next_connection(&self, fault: Fault) {
        self.conn_faults.lock().unwrap().push_back(fault);
    }

    /// Connection faults not yet taken by a connection.
    pub fn connection_faults_pending(&self) -> usize {
        self.conn_faults.lock().unwrap().len()
    }

    /// Drops every rule, spent or not, and every connection fault not yet taken.
    pub fn clear_rules(&self) {
        self.rules.lock().unwrap().clear();
        self.conn_faults.lock().unwrap().clear();
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<(Instant, usize, String, Option<String>)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Request {
                    at,
                    conn,
                    line,
                    range,
                } => Some((at, conn, line, range)),
                _ => None,
            })
            .collect()
    }

    fn record(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }

    fn serve(self: Arc<Self>, id: usize, client: TcpStream, upstream: SocketAddr) {
        let Ok(server) = TcpStream::connect(upstream) else {
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        let now = self.open_now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_open.fetch_max(now, Ordering::SeqCst);
        self.record(Event::Open {
            at: Instant::now(),
            conn: id,
        });
        // The fault for the current response, set by the request pump, or for the whole
        // connection.
        let whole = self.conn_faults.lock().unwrap().pop_front();
        let current: Arc<Current> = Arc::new(Mutex::new((whole, 0, None)));
        let (c2, s2, cur2, me) = (
            client.try_clone().unwrap(),
            server.try_clone().unwrap(),
            Arc::clone(&current),
            Arc::clone(&self),
        );
        let up = thread::spawn(move || me.pump_requests(id, c2, s2, cur2));
        self.pump_responses(&server, &client, &current);
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        let _ = up.join();
        self.open_now.fetch_sub(1, Ordering::SeqCst);
        self.record(Event::Close {
            at: Instant::now(),
            conn: id,
        });
    }

    /// Client → S3: forwards bytes, noting each request line and its Range.
    fn pump_requests(
        &self,
        id: usize,
        mut from: TcpStream,
        mut to: TcpStream,
        current: Arc<Current>,
    ) {
        let mut buf = [0u8; 16384];
        let mut pending = Vec::new();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            let mut slow_down = false;
            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                pending.drain(..end + 4);
                let line = head.lines().next().unwrap_or_default().to_string();
                let range = head.lines().find_map(|l| {
                    l.strip_prefix("range: ")
                        .or_else(|| l.strip_prefix("Range: "))
                        .map(str::to_string)
                });
                self.record(Event::Request {
                    at: Instant::now(),
                    conn: id,
                    line: line.clone(),
                    range,
                });
                let mut rules = self.rules.lock().unwrap();
                let rule = rules
                    .iter()
                    .position(|r| r.times > 0 && line.contains(&r.path_contains));
                let fault = rule.and_then(|i| rules.get(i)).map(|r| r.fault.clone());
                if let (Some(Fault::SlowDown), Some(i)) = (&fault, rule) {
                    rules[i].times -= 1;
                    slow_down = true;
                }
                *current.lock().unwrap() = (fault, 0, rule);
            }
            // A stream with no request heads in it (TLS) keeps only what a split "\r\n\r\n"
            // needs.
            if pending.len() > 65536 {
                pending.drain(..pending.len() - 3);
            }
            if slow_down {
                let body = "<Error><Code>SlowDown</Code></Error>";
                let resp = format!("HTTP/1.1 503 Slow Down\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = from.write_all(resp.as_bytes());
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }

    /// S3 → client: forwards bytes, applying the current fault at its offset.
    fn pump_responses(&self, mut from: &TcpStream, mut to: &TcpStream, current: &Current) {
        let mut buf = [0u8; 16384];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Counted before the bytes go out: once they are written, tailgate may send its
            // next request, whose fault starts again from zero.
            let (fault, chunk, pace) = {
                let mut cur = current.lock().unwrap();
                if let Some(i) = cur.2.take() {
                    // The response starts: spend the rule, unless another connection did.
                    let mut rules = self.rules.lock().unwrap();
                    match rules.get_mut(i) {
                        Some(r) if r.times > 0 => r.times -= 1,
                        _ => cur.0 = None,
                    }
                }
                let room = match &cur.0 {
                    Some(
                        Fault::CloseAfter(limit)
                        | Fault::ResetAfter(limit)
                        | Fault::StallAfter(limit, _),
                    ) => limit.saturating_sub(cur.1) as usize,
                    _ => usize::MAX,
                };
                let chunk = &buf[..n.min(room)];
                cur.1 += chunk.len() as u64;
                let pace = match cur.0 {
                    Some(Fault::Pace(size, gap)) => Some((size, gap)),
                    _ => None,
                };
                (cur.0.clone().filter(|_| room < n), chunk, pace)
            };
            let wrote = match pace {
                Some((size, gap)) => chunk.chunks(size.max(1)).all(|piece| {
                    let ok = to.write_all(piece).is_ok();
                    #[allow(clippy::disallowed_methods)] // the pause is the fault
                    thread::sleep(gap);
                    ok
                }),
                None => to.write_all(chunk).is_ok(),
            };
            match fault {
                None if wrote => {}
                None => return,
                Some(Fault::ResetAfter(_)) => {
                    let _ = socket2::SockRef::from(to).set_linger(Some(Duration::ZERO));
                    return;
                }
                Some(Fault::StallAfter(_, d)) => {
                    #[allow(clippy::disallowed_methods)] // the stall is the fault
                    thread::sleep(d);
                    return;
                }
                Some(_) => return,
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}
