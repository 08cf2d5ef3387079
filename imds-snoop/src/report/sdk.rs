//! Which SDK a User-Agent names, and whether that version is older than the first one that
//! supports IMDSv2. The minimum versions are data (`imds-snoop/data/sdk-min-versions.json`),
//! copied from the AWS page named in the file.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

const TABLE_JSON: &str = include_str!("../../data/sdk-min-versions.json");

/// AWS's table of minimum SDK versions for IMDSv2, with the User-Agent names we match.
#[derive(Debug, Deserialize)]
pub(super) struct SdkTable {
    pub source: Source,
    sdks: Vec<Entry>,
}

#[derive(Debug, Deserialize, Serialize)]
pub(super) struct Source {
    pub title: String,
    pub url: String,
}

#[derive(Debug, Deserialize)]
struct Entry {
    sdk: String,
    min_version: String,
    user_agent: Vec<String>,
}

/// The client a User-Agent names: its first token that is a known SDK, else its first token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct Sdk {
    /// As written in the User-Agent (the text format lowercases it).
    pub name: String,
    pub version: Option<String>,
    /// Set when the name is in the table and the version could be compared.
    pub imdsv2: Option<Support>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct Support {
    /// AWS's name for the SDK, e.g. `AWS SDK for Python (Botocore)`.
    pub sdk: String,
    pub min_version: String,
    /// Older than `min_version`: this SDK cannot use IMDSv2 at all.
    pub below_minimum: bool,
}

impl Sdk {
    /// `botocore 1.43.11`, or the bare name.
    pub(super) fn label(&self) -> String {
        match &self.version {
            Some(v) => format!("{} {v}", self.name),
            None => self.name.clone(),
        }
    }

    pub(super) fn below_minimum(&self) -> bool {
        self.imdsv2.as_ref().is_some_and(|s| s.below_minimum)
    }
}

impl SdkTable {
    /// The table compiled into the binary.
    pub(super) fn builtin() -> Result<Self, serde_json::Error> {
        serde_json::from_str(TABLE_JSON)
    }

    fn knows(&self, name: &str) -> bool {
        self.entries_for(name).next().is_some()
    }

    fn entries_for<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Entry> {
        self.sdks
            .iter()
            .filter(move |e| e.user_agent.iter().any(|ua| ua.eq_ignore_ascii_case(name)))
    }

    /// Names the client in `user_agent` and checks its version against the table.
    pub(super) fn identify(&self, user_agent: &str) -> Option<Sdk> {
        let tokens: Vec<(&str, Option<&str>)> = user_agent
            .split_whitespace()
            .map(|t| match t.split_once('/') {
                Some((name, version)) => (name, Some(version)),
                None => (t, None),
            })
            .collect();
        let (name, version) = tokens
            .iter()
            .find(|(name, _)| self.knows(name))
            .or_else(|| tokens.first())
            .copied()?;
        let imdsv2 = version.and_then(|v| self.support(name, v));
        Some(Sdk {
            name: name.to_string(),
            version: version.map(str::to_string),
            imdsv2,
        })
    }

    /// The entry of the same major version decides; a major newer than every entry's is
    /// supported, one older than every entry's is not.
    fn support(&self, name: &str, version: &str) -> Option<Support> {
        let have = version_parts(version)?;
        let entry = self
            .entries_for(name)
            .filter_map(|e| Some((e, version_parts(&e.min_version)?)))
            .filter(|(_, min)| min[0] <= have[0])
            .max_by_key(|(_, min)| min[0]);
        let (e, below) = match entry {
            Some((e, min)) => (
                e,
                min[0] == have[0] && compare(&have, &min) == Ordering::Less,
            ),
            None => (self.entries_for(name).next()?, true),
        };
        Some(Support {
            sdk: e.sdk.clone(),
            min_version: e.min_version.clone(),
            below_minimum: below,
        })
    }
}

/// `1.12.x` -> [1, 12]; `2.0.0-rc.1` -> [2, 0, 0]; None without a leading number.
fn version_parts(v: &str) -> Option<Vec<u64>> {
    let numeric = v
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap_or("");
    let parts: Vec<u64> = numeric.split('.').map_while(|p| p.parse().ok()).collect();
    (!parts.is_empty()).then_some(parts)
}

/// Component-wise, missing components being 0 (`1.2` == `1.2.0`).
fn compare(a: &[u64], b: &[u64]) -> Ordering {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| a.get(i).unwrap_or(&0).cmp(b.get(i).unwrap_or(&0)))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SdkTable {
        SdkTable::builtin().expect("the builtin SDK table parses")
    }

    fn below(ua: &str) -> Option<bool> {
        table().identify(ua)?.imdsv2.map(|s| s.below_minimum)
    }

    #[test]
    fn builtin_table_names_its_source() {
        let t = table();
        assert!(t.source.url.starts_with("https://docs.aws.amazon.com/"));
        assert!(t.sdks.len() >= 13, "AWS lists 13 SDKs");
        for e in &t.sdks {
            assert!(version_parts(&e.min_version).is_some(), "{}", e.sdk);
        }
    }

    #[test]
    fn versions() {
        assert_eq!(version_parts("1.12.x"), Some(vec![1, 12]));
        assert_eq!(version_parts("2.0.0-rc.1"), Some(vec![2, 0, 0]));
        assert_eq!(version_parts("x"), None);
        assert_eq!(compare(&[1, 2], &[1, 2, 0]), Ordering::Equal);
        assert_eq!(compare(&[1, 11, 678], &[1, 12]), Ordering::Less);
    }

    #[test]
    fn flags_old_sdks_only() {
        assert_eq!(below("Botocore/1.13.24 Python/3.7"), Some(true));
        assert_eq!(below("Botocore/1.13.25 Python/3.7"), Some(false));
        assert_eq!(
            below("botocore/1.43.11 python/3.11.7 linux/6.18.44"),
            Some(false)
        );
        assert_eq!(
            below("aws-sdk-go/1.44.0 (go1.20; linux; amd64)"),
            Some(false)
        );
        assert_eq!(
            below("aws-sdk-go/1.25.37 (go1.13; linux; amd64)"),
            Some(true)
        );
        assert_eq!(below("aws-sdk-go-v2/0.18.0 os/linux"), Some(true));
        assert_eq!(
            below("aws-sdk-go-v2/1.17.0 os/linux lang/go#1.20"),
            Some(false)
        );
        assert_eq!(below("aws-sdk-java/1.11.600 Linux/5.10"), Some(true));
        assert_eq!(below("aws-sdk-java/1.12.x Linux/5.10"), Some(false));
        assert_eq!(below("aws-sdk-java/2.10.20 Linux/5.10"), Some(true));
        assert_eq!(below("aws-sdk-java/2.20.0 Linux/5.10"), Some(false));
        assert_eq!(below("aws-sdk-nodejs/2.700.0 linux/v12"), Some(true));
        assert_eq!(below("aws-sdk-js/3.400.0 ua/2.0 os/linux"), Some(false));
        assert_eq!(
            below("aws-cli/1.16.200 Python/2.7 botocore/1.12.190"),
            Some(true)
        );
        assert_eq!(below("aws-cli/2.13.0 md/awscrt#0.16 ua/2.0"), Some(false));
        assert_eq!(below("Boto3/1.28.0 md/Botocore#1.31.0 ua/2.0"), Some(false));
        // Not in AWS's table: named, never flagged.
        assert_eq!(below("curl/8.5.0"), None);
        assert_eq!(below("aws-sdk-rust/1.3.0 os/linux lang/rust#1.80"), None);
    }

    #[test]
    fn names_the_sdk_not_the_application() {
        let sdk = table()
            .identify("my-app/3.0 aws-sdk-go/1.20.0 (go1.12; linux; amd64)")
            .unwrap();
        assert_eq!(sdk.label(), "aws-sdk-go 1.20.0");
        assert!(sdk.below_minimum());
        assert_eq!(sdk.imdsv2.unwrap().min_version, "1.25.38");
        assert_eq!(table().identify("wget").unwrap().label(), "wget");
        assert_eq!(table().identify("  "), None);
    }
}
