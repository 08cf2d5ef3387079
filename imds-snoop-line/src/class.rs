//! The class table: every kind of request line the daemon writes, and how each output
//! spells it. Adding a class is one row here (and the daemon's classifier); the readers and
//! the tests below pick it up.

/// The kind of a request line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// A GET without a token: IMDSv1.
    V1,
    /// A request with a session token: IMDSv2.
    V2,
    /// The token PUT (`PUT /latest/api/token`).
    V2Token,
    /// Anything sent to IMDS that is not a parseable HTTP request.
    Malformed,
    /// A token PUT whose response never came within `--response-timeout`: the hop-limit
    /// warning (a hop limit of 1 drops the reply to pods behind a bridge or veth).
    V2TokenNoResponse,
    /// A token PUT whose response was seen dropped in the node's forwarding path with its
    /// TTL run out (the drop hook, `tp_btf/kfree_skb`): the hop limit, proven.
    V2TokenDropped,
}

/// The level a line is written at, as the anchor tool (aws-imds-packet-analyzer) spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    Info,
    Warning,
}

impl Level {
    /// `INFO` or `WARNING`: the text line's `[LEVEL]` and the JSON `level`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warning => "WARNING",
        }
    }

    /// The level spelled `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "INFO" => Some(Level::Info),
            "WARNING" => Some(Level::Warning),
            _ => None,
        }
    }
}

/// One row of the class table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassInfo {
    pub class: Class,
    /// The text line's label, after `[LEVEL] ` (e.g. `imdsv1(!)`); `grep imdsv1` habits
    /// from the anchor tool depend on these.
    pub label: &'static str,
    /// The JSON line's `class` (snake_case).
    pub json: &'static str,
    /// The `class` label of `imds_snoop_requests_total`. A token PUT left unanswered is
    /// counted as `v2_token` (with `status="none"`), one seen dropped as `v2_token` with
    /// `status="dropped"`, so the metric's label set stays the four request kinds.
    pub metric: &'static str,
    pub level: Level,
}

/// The class table, one row per [`Class`], in declaration order.
pub const CLASSES: [ClassInfo; 6] = [
    ClassInfo {
        class: Class::V1,
        label: "imdsv1(!)",
        json: "v1",
        metric: "v1",
        level: Level::Warning,
    },
    ClassInfo {
        class: Class::V2,
        label: "imdsv2",
        json: "v2",
        metric: "v2",
        level: Level::Info,
    },
    ClassInfo {
        class: Class::V2Token,
        label: "imdsv2(token)",
        json: "v2_token",
        metric: "v2_token",
        level: Level::Info,
    },
    ClassInfo {
        class: Class::Malformed,
        label: "malformed(!)",
        json: "malformed",
        metric: "malformed",
        level: Level::Warning,
    },
    ClassInfo {
        class: Class::V2TokenNoResponse,
        label: "imdsv2 token response not received (hop limit?)",
        json: "v2_token_no_response",
        metric: "v2_token",
        level: Level::Warning,
    },
    ClassInfo {
        class: Class::V2TokenDropped,
        label: "imdsv2 token response dropped (hop limit)",
        json: "v2_token_dropped",
        metric: "v2_token",
        level: Level::Warning,
    },
];

impl Class {
    /// This class's row of [`CLASSES`].
    pub const fn info(self) -> &'static ClassInfo {
        &CLASSES[self as usize]
    }

    /// The text label (`imdsv1(!)`, ...).
    pub const fn label(self) -> &'static str {
        self.info().label
    }

    /// The JSON `class` (`v1`, ...).
    pub const fn json(self) -> &'static str {
        self.info().json
    }

    /// The metric's `class` label.
    pub const fn metric(self) -> &'static str {
        self.info().metric
    }

    pub const fn level(self) -> Level {
        self.info().level
    }

    /// The class whose text label is exactly `label`.
    pub fn from_label(label: &str) -> Option<Self> {
        CLASSES.iter().find(|c| c.label == label).map(|c| c.class)
    }

    /// The class whose JSON `class` is exactly `json`.
    pub fn from_json(json: &str) -> Option<Self> {
        CLASSES.iter().find(|c| c.json == json).map(|c| c.class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_in_class_order_and_unique() {
        for (i, row) in CLASSES.iter().enumerate() {
            assert_eq!(row.class as usize, i, "{row:?}");
            assert_eq!(row.class.info(), row);
            assert_eq!(Class::from_label(row.label), Some(row.class));
            assert_eq!(Class::from_json(row.json), Some(row.class));
        }
        assert_eq!(Class::from_label("imdsv3"), None);
        assert_eq!(Class::from_json("dropped"), None);
    }

    /// The spellings as the README documents them and the daemon wrote them before it took
    /// them from this table (its own `http::Class::label`, `output::TOKEN_NO_RESPONSE_*`,
    /// `metrics::class_label`).
    #[test]
    fn spellings_as_documented() {
        let rows: Vec<_> = CLASSES
            .iter()
            .map(|c| (c.label, c.json, c.metric, c.level.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                ("imdsv1(!)", "v1", "v1", "WARNING"),
                ("imdsv2", "v2", "v2", "INFO"),
                ("imdsv2(token)", "v2_token", "v2_token", "INFO"),
                ("malformed(!)", "malformed", "malformed", "WARNING"),
                (
                    "imdsv2 token response not received (hop limit?)",
                    "v2_token_no_response",
                    "v2_token",
                    "WARNING"
                ),
                (
                    "imdsv2 token response dropped (hop limit)",
                    "v2_token_dropped",
                    "v2_token",
                    "WARNING"
                ),
            ]
        );
        assert_eq!(Level::parse("WARNING"), Some(Level::Warning));
        assert_eq!(Level::parse("ERROR"), None);
    }
}
