//! tailgate: an origin sidecar serving composite objects (a shared head plus a per-variant
//! tail, stored in S3) one segment at a time, correct to the byte. Module list only; data
//! flows conf → server → http → route → object → upstream → relay → client.

pub mod conf;
pub mod http;
pub mod log;
pub mod metrics;
pub mod object;
pub mod pack;
pub mod relay;
pub mod route;
pub mod rt;
pub mod server;
pub mod sock;
pub mod timer;
pub mod upstream;
