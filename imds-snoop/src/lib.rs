//! imds-snoop as a library: the modules of the data path, in order capture -> pipeline
//! (decode -> http -> attribution -> outcome -> record) -> output (and metrics), and the
//! `report` subcommand. Modules sit on floors and import only from below (the README's
//! Layout; checked by `layers.rs`).
//!
//! The binary (main.rs) is argument parsing and wiring only. The library exists so that
//! code outside the crate can drive the parts that take untrusted input: the fuzz targets
//! in `fuzz/` call [`decode::decode`], [`http::Reassembler`] and
//! [`report::parse::parse_line`] directly. Only what main.rs or those targets need is
//! `pub`; the rest stays private to the crate, and nothing here is a stable API.

mod attribution;
mod btf;
mod capture;
pub mod cli;
mod clock;
pub mod daemon;
pub mod decode;
mod escape;
/// For the `pipeline` fuzz target only.
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
#[cfg(test)]
mod layers;
mod losses;
mod metrics;
mod outcome;
mod output;
mod pipeline;
pub mod readiness;
mod record;
mod redact;
pub mod report;
