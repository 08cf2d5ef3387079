#![no_std]
//! Empty library target: lets `imds-snoop` name this crate as a build-dependency, so cargo
//! re-runs its build script (which builds the real kernel program, `src/main.rs`) on change.
