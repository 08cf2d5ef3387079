//! imds-snoop as a library: the modules of the data path, in order
//! capture -> decode -> http -> process -> outcome (waits for the response's status) ->
//! output (and metrics), and the `report` subcommand.
//!
//! The binary (main.rs) is argument parsing and wiring only. The library exists so that
//! code outside the crate can drive the parts that take untrusted input: the fuzz targets
//! in `fuzz/` call [`decode::decode`], [`http::Reassembler`] and
//! [`report::parse::parse_line`] directly. Only what main.rs or those targets need is
//! `pub`; the rest stays private to the crate, and nothing here is a stable API.
#![expect(
    unreachable_pub,
    reason = "visibility narrowed after the module restructure (issue 14)"
)]
#![expect(
    clippy::allow_attributes,
    reason = "http.rs's `allow`s become `expect`s after the module restructure (issue 14)"
)]

mod btf;
mod capture;
pub mod cli;
mod container;
pub mod daemon;
pub mod decode;
pub mod http;
mod metrics;
mod outcome;
mod output;
mod process;
pub mod readiness;
pub mod report;
