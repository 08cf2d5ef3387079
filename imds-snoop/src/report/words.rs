//! English for counts, shared by the table (`render`) and the verdicts (`verdict`): its own
//! module so that neither has to import the other.

/// `1 line`, `2 lines`: `n` and `noun`, plural unless `n` is 1.
pub(super) fn plural(n: u64, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}
