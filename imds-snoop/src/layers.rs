//! The crate's floors, checked: every module imports only from floors below its own (or
//! from its own room), so there is no import circle and no arrow up. The table is the
//! README's Layout; a new module must be placed in it, and an import that goes up fails
//! here (through `crate::`, or through enough `super::` to reach the crate root). Test
//! code may also import across a floor (formatting a record in outcome's tests, say), and
//! is not checked. Also checked here: the line contract (imds-snoop-line) is not spelled
//! again in this crate.

use std::{fs, path::Path};

/// Floors, bottom first. A room is a top-level module (a file or a directory).
const FLOORS: &[&[&str]] = &[
    // The ground floor: depend on nothing in the crate.
    &["escape", "redact", "clock", "readiness", "btf", "decode"],
    &["http", "capture"],
    &["attribution"],
    &["record"],
    &["output"],
    &["outcome"],
    &["losses"],
    &["pipeline", "metrics", "report"],
    &["cli", "fuzzing"],
    &["daemon"],
    &["lib", "main", "layers"],
];

fn floor(room: &str) -> usize {
    FLOORS
        .iter()
        .position(|f| f.contains(&room))
        .unwrap_or_else(|| panic!("module {room} is on no floor: add it to FLOORS and the README"))
}

/// The source without test code: from the first test module to the end of the file (tests
/// sit at the end), and single items gated by `#[cfg(test)]`.
fn production(source: &str) -> String {
    let mut out = String::new();
    let mut skip_next = false;
    for line in source.lines() {
        let t = line.trim_start();
        if line == "#[cfg(test)]" && skip_next {
            continue;
        }
        if t.starts_with("mod tests")
            || t.starts_with("pub(crate) mod tests")
            || t.starts_with("pub mod tests")
        {
            // Drop the `#[cfg(test)]` line before it too (already pushed): harmless.
            break;
        }
        if skip_next {
            skip_next = false;
            if !t.ends_with('{') {
                continue;
            }
        }
        if t == "#[cfg(test)]" {
            skip_next = true;
            continue;
        }
        if !t.starts_with("//") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The rooms named after `crate::` in `source`, including each item of a `crate::{..}`
/// group.
fn rooms_named(source: &str) -> Vec<String> {
    let mut rooms = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[i..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        item_start = false;
                        let ident: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        rooms.push(ident);
                    }
                    _ => {}
                }
            }
        } else {
            rooms.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    rooms
}

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            visit(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn imports_only_go_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let room = first.trim_end_matches(".rs").to_string();
        if room == "layers" {
            continue; // the checker: its strings name modules
        }
        let here = floor(&room);
        let source = production(&fs::read_to_string(file).unwrap());
        // `super::` as often as the file is deep reaches the crate root, around the check
        // of `crate::` paths: not in production code.
        let depth = rel.components().count() - usize::from(rel.ends_with("mod.rs"));
        if source.contains(&"super::".repeat(depth)) {
            wrong.push(format!(
                "{} reaches the crate root through super::",
                rel.display()
            ));
        }
        for named in rooms_named(&source) {
            // `crate::x` where x is an item of lib.rs (none today) would not be a room.
            if named == room || named.is_empty() {
                continue;
            }
            if floor(&named) >= here {
                wrong.push(format!("{} imports crate::{named}", rel.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports up or sideways: {wrong:#?}");
}

#[test]
fn the_checker_sees_groups_and_test_code() {
    let source = "use crate::{\n    a::{B, C},\n    d::E,\n};\nfn f() { crate::g::h(); }\n\
                  #[cfg(test)]\nuse crate::x::Y;\n#[cfg(test)]\nmod tests {\n    use crate::z;\n}\n";
    assert_eq!(rooms_named(&production(source)), ["a", "d", "g"]);
}

/// The line contract is spelled once, in imds-snoop-line: no production code of this crate
/// writes a class's text label, JSON class or metric label, a loss line's class, or a
/// separator or field label of the text line as a string literal of its own (test code may:
/// it is the independent oracle). Exact literals only: a label inside a longer format string
/// is not caught.
#[test]
fn the_line_contract_is_spelled_only_in_imds_snoop_line() {
    use imds_snoop_line::{CLASSES, json, label};

    let mut spelled: Vec<&str> = CLASSES
        .iter()
        .flat_map(|c| [c.label, c.json, c.metric])
        .chain([json::DROPPED_CLASS, json::DEGRADED_CLASS])
        .chain(label::ALL)
        .collect();
    // Too short or too common to be the contract's alone: `-` (no unit), `, ` (a join), and
    // `host` / `unit:`, the halves of `host unit:` as its reader splits them (the report
    // says "host" in its own tables).
    spelled.retain(|s| s.trim().len() > 2 && ![label::HOST, label::UNIT].contains(s));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        if file.ends_with("layers.rs") {
            continue;
        }
        let source = production(&fs::read_to_string(file).unwrap());
        for s in &spelled {
            let literal = format!("\"{}\"", s.escape_default());
            if source.contains(&literal) {
                wrong.push(format!("{}: {literal}", file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "spelled outside the contract: {wrong:#?}");
}
