//! The trace-line contract of imds-snoop, written once: what a line says and how it is
//! spelled. The daemon writes lines with it; `imds-snoop report`, the end-to-end tests,
//! the VM guest suite and the benchmark read them back through it.
//!
//! - [`Class`] and [`CLASSES`]: every kind of request line, with its text label, JSON
//!   `class`, metric label and level.
//! - [`json`]: the JSON line ([`JsonLine`], [`LossLine`]) as structs that serialize to the
//!   bytes the daemon writes and deserialize them back; [`SCHEMA_VERSION`].
//! - [`text`]: the text line's reader ([`TextLine::parse`]).
//! - [`label`]: the separators and field labels of the text line.
//! - [`workload`]: a pod's workload guessed from its name.
//!
//! Dependencies: serde and serde_json only, so a static musl test binary can use it.

pub mod class;
pub mod json;
pub mod label;
pub mod text;
pub mod workload;

pub use class::{CLASSES, Class, ClassInfo, Level};
pub use json::{JsonLine, JsonRecord, LossLine, ReadError, SCHEMA_VERSION};
pub use text::{TextBody, TextCall, TextLine, TextOrigin};
