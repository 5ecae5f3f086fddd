//! HTTP/1.x for the client side, sans-IO: request heads in, response heads out.

pub mod chunked;
pub mod date;
pub mod request;
pub mod response;
