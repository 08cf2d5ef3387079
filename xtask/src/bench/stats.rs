//! Small statistics for the benchmark's figures: median and spread of repetitions, and a
//! ratio of paired rounds with its confidence interval.

/// Median; NaN for no values.
pub(crate) fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// Linear-interpolated quantile `q` in 0..=1; NaN for no values.
pub(crate) fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = (s.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

pub(crate) fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub(crate) fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Two-sided 95% quantile of Student's t with `df` degrees of freedom (table for 1..=30,
/// then the normal's 1.96 approached through 2.0 at 40-60).
fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => T[df - 1],
        31..=60 => 2.021,
        _ => 1.96,
    }
}

/// A ratio of paired rounds: the geometric mean of the per-round ratios with a 95%
/// t-interval on their logarithms (rounds are paired, so the machine's drift between
/// rounds cancels; ratios are skewed, logs less so).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ratio {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

impl Ratio {
    pub(crate) fn of(ratios: &[f64]) -> Self {
        let logs: Vec<f64> = ratios
            .iter()
            .filter(|r| r.is_finite() && **r > 0.0)
            .map(|r| r.ln())
            .collect();
        let n = logs.len();
        if n == 0 {
            return Self {
                mean: f64::NAN,
                lo: f64::NAN,
                hi: f64::NAN,
                n,
            };
        }
        let m = logs.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            logs.iter().map(|l| (l - m).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            f64::INFINITY
        };
        let half = t95(n - 1) * (var / n as f64).sqrt();
        Self {
            mean: m.exp(),
            lo: (m - half).exp(),
            hi: (m + half).exp(),
            n,
        }
    }

    /// `+1.2% [-0.8% .. +3.3%]`.
    pub(crate) fn show(&self) -> String {
        format!("{} [{} .. {}]", pct(self.mean), pct(self.lo), pct(self.hi))
    }

    /// Whether 1.0 (no difference) is outside the interval.
    pub(crate) fn resolved(&self) -> bool {
        self.lo > 1.0 || self.hi < 1.0
    }
}

pub(crate) fn pct(ratio: f64) -> String {
    format!("{:+.1}%", (ratio - 1.0) * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(median(&v), 2.5);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert_eq!(quantile(&v, 0.25), 1.75);
        assert!(median(&[]).is_nan());
    }

    /// Ratios 1.1 and 0.9 around 1: the interval holds 1 and is wide (t with 1 df is
    /// 12.7); identical ratios give a zero-width interval at that ratio.
    #[test]
    fn ratio_interval() {
        let r = Ratio::of(&[1.1, 0.9]);
        assert!(r.lo < 0.5 && r.hi > 1.5 && !r.resolved(), "{r:?}");
        let same = Ratio::of(&[1.05; 8]);
        assert!((same.mean - 1.05).abs() < 1e-12 && (same.hi - same.lo).abs() < 1e-12);
        assert!(same.resolved());
        // 10 rounds of 1.02 +- 0.01: mean 1.02, half-width t(9) * s / sqrt(10).
        let v: Vec<f64> = (0..10)
            .map(|i| if i % 2 == 0 { 1.03 } else { 1.01 })
            .collect();
        let r = Ratio::of(&v);
        let logs: Vec<f64> = v.iter().map(|x| x.ln()).collect();
        let m = logs.iter().sum::<f64>() / 10.0;
        let s = (logs.iter().map(|l| (l - m).powi(2)).sum::<f64>() / 9.0).sqrt();
        assert!((r.hi.ln() - m - 2.262 * s / 10f64.sqrt()).abs() < 1e-12);
        assert!(r.resolved());
    }
}
