//! The pipeline as the `pipeline` fuzz target (fuzz/) drives it: ring records in, the
//! lines the daemon would write out, reading a node tree (`/proc`, cgroups, runtime state)
//! under any root. Not used by the daemon; kept to what the target needs.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    attribution::{Origin, Paths},
    output::{Format, LineFormatter},
    pipeline::Pipeline,
    record::Record,
};

/// One record as the daemon would write it.
pub struct Line {
    pub text: String,
    pub json: String,
    /// `(namespace, name)` of the pod the record names.
    pub pod: Option<(String, String)>,
}

/// [`Pipeline`] on a tree under `root` whose runtime state belongs to `owner`.
pub struct FuzzPipeline {
    pipeline: Pipeline,
    text: LineFormatter,
    json: LineFormatter,
    out: Vec<Record>,
}

impl FuzzPipeline {
    pub fn new(root: &Path, owner: u32) -> Self {
        let mut paths = Paths::under(root);
        paths.owner = owner;
        Self {
            pipeline: Pipeline::new(paths, None),
            text: LineFormatter::new(Format::Text, "fuzz"),
            json: LineFormatter::new(Format::Json, "fuzz"),
            out: Vec::new(),
        }
    }

    /// One ring record; the lines it lets out.
    pub fn push(&mut self, record: &[u8]) -> Vec<Line> {
        self.pipeline.push(record, Instant::now(), &mut self.out);
        self.lines()
    }

    /// Everything still held (heads in reassembly), as at shutdown.
    pub fn finish(&mut self) -> Vec<Line> {
        let later = Instant::now() + Duration::from_secs(60);
        self.pipeline.expire(later, &mut self.out);
        self.pipeline.finish(later, &mut self.out);
        self.lines()
    }

    fn lines(&mut self) -> Vec<Line> {
        self.out
            .drain(..)
            .map(|r| {
                let (mut text, mut json) = (String::new(), String::new());
                self.text.push_line(&r, &mut text);
                self.json.push_line(&r, &mut json);
                let pod = match &r.origin {
                    Origin::Container(c) => c
                        .pod
                        .as_ref()
                        .map(|p| (p.namespace.clone(), p.name.clone())),
                    _ => None,
                };
                Line { text, json, pod }
            })
            .collect()
    }
}
