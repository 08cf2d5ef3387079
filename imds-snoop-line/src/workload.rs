//! A pod's workload, guessed from its name alone: the base name the controller gave its
//! pods, so a CronJob's hundred short-lived pods, or a Deployment's pods across rollouts,
//! are one thing to fix. A guess, never a controller kind: the node has no API server, and
//! the shapes below overlap (a DaemonSet's, a Job's and a bare ReplicaSet's pods look the
//! same). Lines mark it as a guess (text `workload~:`, JSON `pod.workload` with
//! `pod.workload_guess: true`).
//!
//! How Kubernetes names pods (k8s.io/apiserver `pkg/storage/names`, k8s.io/apimachinery
//! `pkg/util/rand`, kubernetes `pkg/controller`):
//!
//! - a `generateName` gets 5 random characters from [`SUFFIX_ALPHABET`]
//!   (`bcdfghjklmnpqrstvwxz2456789`: no vowels, no `0`, `1`, `3`), after the prefix cut to
//!   58 characters (`maxGeneratedNameLength` = 63 - 5): a long prefix loses its end, its
//!   `-` included, and the name is then exactly 63 characters;
//! - Deployment: the ReplicaSet is `<name>-<pod-template-hash>`, its pods
//!   `<name>-<hash>-<5>`; the hash is `rand.SafeEncodeString` of a uint32's decimal digits,
//!   so up to 10 characters, each the image of a digit in the alphabet
//!   ([`HASH_CHARS`]: `4`-`9`, `b`, `c`, `d`, `f`); before Kubernetes 1.11 the digits
//!   themselves;
//! - CronJob: the Job is `<name>-<scheduled time in unix minutes>` (8 digits since 1989),
//!   its pods `<name>-<minutes>-<5>`;
//! - StatefulSet: `<name>-<ordinal>`;
//! - DaemonSet, Job, bare ReplicaSet: `<name>-<5>`.
//!
//! The guess strips, in this order, a random suffix (`-<5>`, or 5 characters after a
//! 58-character prefix in a 63-character name), then a template hash or a CronJob's
//! minutes (a partial one, where the 58-character cut went through it); or, with no random
//! suffix, a StatefulSet's ordinal. A name with none of these is its own workload (a bare
//! pod). All pods of one controller get the same guess, long names included: the cut is at
//! the same place for all of them.
//!
//! Names come from lines (hostile in a report's input): only `-` and ASCII are looked at,
//! and the guess is a prefix of the name ending at a `-` (a character boundary), never
//! empty.

/// The random suffix's characters (`k8s.io/apimachinery/pkg/util/rand`'s `alphanums`).
pub const SUFFIX_ALPHABET: &str = "bcdfghjklmnpqrstvwxz2456789";
/// Length of the random suffix of a generated name.
pub const SUFFIX_LEN: usize = 5;
/// Longest generated name (`maxNameLength`), and the prefix it keeps (`maxGeneratedNameLength`).
pub const MAX_GENERATED_NAME: usize = 63;
pub const MAX_GENERATED_PREFIX: usize = MAX_GENERATED_NAME - SUFFIX_LEN;
/// What a pod-template-hash is made of: `SafeEncodeString` maps each decimal digit's byte
/// (`'0'` = 48 ... `'9'` = 57) to `alphanums[b % 27]`: `4 5 6 7 8 9 b c d f`.
pub const HASH_CHARS: &str = "456789bcdf";
/// A pod-template-hash is the encoded decimal form of a uint32: at most 10 characters;
/// fewer than 6 is too rare (a uint32 below 100000) to be told from a name's word.
const HASH_LEN: std::ops::RangeInclusive<usize> = 6..=10;
/// A CronJob's scheduled time in minutes since 1970 (8 digits from 1989 to 2160), or an
/// old (before 1.11) decimal template hash (up to 10 digits).
const DIGITS_LEN: std::ops::RangeInclusive<usize> = 8..=10;

/// The guessed workload of pod `name`: a prefix of it (see the module doc), `name` itself
/// when it has none of the controllers' shapes. Never empty for a non-empty name.
pub fn guess(name: &str) -> &str {
    if let Some(base) = strip_random_suffix(name) {
        let truncated = base.len() + SUFFIX_LEN == name.len();
        return strip_generation(base, truncated).unwrap_or(base);
    }
    strip_ordinal(name).unwrap_or(name)
}

/// `web-7d9f8b6c5-x2k4p` -> `web-7d9f8b6c5`; a 63-character name whose last 5 are the
/// alphabet's -> its first 58 without a trailing `-` (the generator cut the prefix).
fn strip_random_suffix(name: &str) -> Option<&str> {
    if let Some((base, suffix)) = name.rsplit_once('-')
        && is_suffix(suffix)
        && !base.is_empty()
    {
        return Some(base);
    }
    if name.len() == MAX_GENERATED_NAME {
        let (base, suffix) = name.split_at_checked(MAX_GENERATED_PREFIX)?;
        let base = base.trim_end_matches('-');
        if is_suffix(suffix) && !base.is_empty() {
            return Some(base);
        }
    }
    None
}

fn is_suffix(s: &str) -> bool {
    s.len() == SUFFIX_LEN && s.bytes().all(|b| SUFFIX_ALPHABET.as_bytes().contains(&b))
}

/// `web-7d9f8b6c5` -> `web`, `backup-29412345` -> `backup`. When the generator cut the
/// prefix (`truncated`), a last segment of hash characters or digits of any length is taken
/// for what is left of the hash or minutes.
fn strip_generation(base: &str, truncated: bool) -> Option<&str> {
    let (name, last) = base.rsplit_once('-')?;
    if name.is_empty() || last.is_empty() {
        return None;
    }
    let hash = last.bytes().all(|b| HASH_CHARS.as_bytes().contains(&b));
    let digits = last.bytes().all(|b| b.is_ascii_digit());
    let whole =
        (hash && HASH_LEN.contains(&last.len())) || (digits && DIGITS_LEN.contains(&last.len()));
    (whole || (truncated && (hash || digits))).then_some(name)
}

/// `web-0`, `db-12` -> `web`, `db` (a StatefulSet's ordinal: digits without a leading 0,
/// or `0`).
fn strip_ordinal(name: &str) -> Option<&str> {
    let (base, ordinal) = name.rsplit_once('-')?;
    let digits = !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit());
    (digits && (ordinal == "0" || !ordinal.starts_with('0')) && !base.is_empty()).then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names as clusters have them (EKS add-ons, common charts, the generators' shapes).
    #[test]
    fn real_world_shapes() {
        for (pod, workload) in [
            // Deployments: <name>-<pod-template-hash>-<5>.
            ("coredns-5d78c9869d-x7k2p", "coredns"),
            (
                "aws-load-balancer-controller-6b474476c4-9zq8w",
                "aws-load-balancer-controller",
            ),
            ("metrics-server-7db4fb59f9-lzkvn", "metrics-server"),
            ("web-85f4b5c9d7-bcdfg", "web"),
            ("ebs-csi-controller-7bd6c8f5d4-2m4xn", "ebs-csi-controller"),
            // A 9-character hash (a uint32 below 10^9).
            ("api-674b9d8c5-q9w2x", "api"),
            // Before 1.11: the decimal hash.
            ("nginx-3637847476-x2k4p", "nginx"),
            // CronJob: <name>-<minutes>-<5>.
            ("backup-29412345-mv8tq", "backup"),
            ("nightly-report-29412360-z2c4d", "nightly-report"),
            // StatefulSet: <name>-<ordinal>.
            ("web-0", "web"),
            ("kafka-broker-12", "kafka-broker"),
            ("web-1", "web"),
            // DaemonSet, Job, bare ReplicaSet: <name>-<5>.
            ("aws-node-9xk2v", "aws-node"),
            ("kube-proxy-7h5zq", "kube-proxy"),
            ("ebs-csi-node-lw4xt", "ebs-csi-node"),
            ("fluent-bit-2d5pf", "fluent-bit"),
            ("db-migrate-7qk8z", "db-migrate"),
            // A random suffix of digits only.
            ("node-exporter-24567", "node-exporter"),
            // Bare pods: their own workload.
            ("debug", "debug"),
            ("my-shell", "my-shell"),
            // A static pod (`<name>-<node>`): no shape to strip.
            (
                "kube-apiserver-ip-10-0-1-5.ec2.internal",
                "kube-apiserver-ip-10-0-1-5.ec2.internal",
            ),
        ] {
            assert_eq!(guess(pod), workload, "{pod}");
        }
    }

    /// The generator cuts a prefix longer than 58 characters: every pod of the workload
    /// still gets one guess, whatever its hash or random suffix.
    #[test]
    fn long_names_cut_by_the_generator() {
        let deploy = "payments-reconciliation-worker-for-eu-west-1-prod";
        assert_eq!(deploy.len(), 49);
        let mut guesses = std::collections::BTreeSet::new();
        for (hash, random) in [
            ("7d9f8b6c5d", "x2k4p"),
            ("5c98db65d4", "bcdfg"),
            ("6b474476c4", "22222"),
        ] {
            // generateName `<deploy>-<hash>-`, cut to 58, then 5 random characters.
            let prefix = format!("{deploy}-{hash}-");
            let cut = &prefix[..prefix.len().min(MAX_GENERATED_PREFIX)];
            let pod = format!("{cut}{random}");
            assert_eq!(pod.len(), MAX_GENERATED_NAME, "{pod}");
            guesses.insert(guess(&pod).to_owned());
        }
        assert_eq!(guesses.into_iter().collect::<Vec<_>>(), [deploy]);
        // The cut right after the name: `<58 characters>-` -> the `-` is cut.
        let name57 = "a".repeat(57);
        assert_eq!(guess(&format!("{name57}-x2k4p")), name57);
        // The cut inside the name itself (its hash gone): the cut name, for every pod.
        let long = format!("{}-service", "b".repeat(60));
        let pod = format!("{}{}", &format!("{long}-7d9f8b6c5d-")[..58], "x2k4p");
        assert_eq!(guess(&pod), &long[..58]);
        // A CronJob of 52 characters (the most a CronJob name may have): its minutes cut.
        let cron = "c".repeat(48) + "-job";
        let pod = format!("{}{}", &format!("{cron}-29412345-")[..58], "q9w2x");
        assert_eq!(guess(&pod), cron);
    }

    /// Names a hostile line can hold: no panic, a prefix of the name, never empty.
    #[test]
    fn adversarial_names() {
        for name in [
            "",
            "-",
            "--",
            "-x2k4p",
            "x2k4p",
            "-0",
            "a-",
            "a--x2k4p",
            "é-x2k4p",
            "éééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé",
            "aé-bcdfg",
            "a-01",
            "a-00",
            "web-7d9f8b6c5-",
            &"-".repeat(63),
            &"b".repeat(63),
            &format!("{}é{}", "a".repeat(57), "bcdf"),
            "pod:x/y-bcdfg",
            "a\n-bcdfg",
        ] {
            let g = guess(name);
            assert!(name.starts_with(g), "{name:?} -> {g:?}");
            assert_eq!(g.is_empty(), name.is_empty(), "{name:?} -> {g:?}");
        }
        // Leading zeros are no ordinal; a 5-character word with a vowel is no suffix.
        assert_eq!(guess("a-01"), "a-01");
        assert_eq!(guess("cache-redis"), "cache-redis");
        assert_eq!(guess("a--x2k4p"), "a-");
        // Only a whole hash of 6 to 10 characters when nothing was cut.
        assert_eq!(guess("app-bcd-x2k4p"), "app-bcd");
        assert_eq!(guess("app-44444444444-x2k4p"), "app-44444444444");
    }
}
