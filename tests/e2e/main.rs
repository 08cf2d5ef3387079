//! End-to-end tests of imds-snoop: real kernel program, real binary, real clients (curl,
//! botocore, raw sockets) against a fake IMDS in a throw-away network namespace.
//!
//! They need root; without it they are skipped with a loud message, except under `CI`,
//! where they fail. See tests/README.md.

mod capture;
mod containers;
mod evasion;
mod harness;
mod hop_drop;
mod metrics;
mod outcome;
mod output;
mod prometheus;
mod reliability;
mod trust;
