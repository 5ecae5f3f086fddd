//! What is served: composites and their manifests, ranges, preconditions and the fetch plan.
//! Pure values and arithmetic; no I/O.

pub mod composite;
pub mod conditional;
pub mod manifest;
pub mod plan;
pub mod range;
pub mod tail_cache;
