//! Scratch directories.

use std::{
    fs,
    path::{Path, PathBuf},
    process, thread,
};

use crate::next_id;

/// A scratch directory, removed on drop unless the test is failing (then kept, and its path
/// printed, for a post-mortem).
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("imds-e2e-{}-{}-{tag}", process::id(), next_id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh file name in this directory.
    pub fn file(&self, stem: &str) -> PathBuf {
        self.path.join(format!("{stem}-{}", next_id()))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("e2e: kept {} for inspection", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

pub(crate) fn read_or_empty(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
