//! Which runs a keep policy keeps, and why: restic's `forget` rules (borg's `prune` rules
//! are the same calendar buckets), on run times in UTC. Pure logic; `forget.rs` applies it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};

/// A keep policy: `--keep-last`, `--keep-hourly`, …, `--keep-within`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// The N most recent runs.
    pub last: u32,
    /// For the last N hours that have a run, the most recent run of each.
    pub hourly: u32,
    /// For the last N days that have a run, the most recent run of each.
    pub daily: u32,
    /// For the last N ISO weeks that have a run, the most recent run of each.
    pub weekly: u32,
    /// For the last N months that have a run, the most recent run of each.
    pub monthly: u32,
    /// For the last N years that have a run, the most recent run of each.
    pub yearly: u32,
    /// Every run taken within this long before the most recent run (restic's
    /// `--keep-within`: relative to the latest run, not to now, so a store whose backups
    /// stopped keeps its last runs).
    pub within: Option<Duration>,
}

/// Why a run is kept: the rules that chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeepReason {
    /// `--keep-last`.
    Last,
    /// `--keep-hourly`.
    Hourly,
    /// `--keep-daily`.
    Daily,
    /// `--keep-weekly`.
    Weekly,
    /// `--keep-monthly`.
    Monthly,
    /// `--keep-yearly`.
    Yearly,
    /// `--keep-within`.
    Within,
    /// The latest complete run is always kept: `index.json` and the next run's baseline
    /// follow it.
    Latest,
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeepReason::Last => "last",
            KeepReason::Hourly => "hourly",
            KeepReason::Daily => "daily",
            KeepReason::Weekly => "weekly",
            KeepReason::Monthly => "monthly",
            KeepReason::Yearly => "yearly",
            KeepReason::Within => "within",
            KeepReason::Latest => "latest",
        })
    }
}

/// A keep policy that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// No rule keeps anything.
    #[error("no keep rule given (--keep-last, --keep-daily, …): forget would remove every run but the latest; give at least one rule")]
    Empty,
    /// A `rule=N` item of a policy string could not be read.
    #[error("keep policy {text:?}: {reason}")]
    Invalid {
        /// The item.
        text: String,
        /// What was wrong.
        reason: String,
    },
}

impl KeepPolicy {
    /// True when no rule is set.
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }

    /// Parses `last=7,daily=30,weekly=12,monthly=24,yearly=3,within=30d` (the retention
    /// Lambda's `ECR_BACKUP_KEEP`).
    pub fn parse(text: &str) -> Result<KeepPolicy, PolicyError> {
        let mut policy = KeepPolicy::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let invalid = |reason: &str| PolicyError::Invalid {
                text: item.to_owned(),
                reason: reason.to_owned(),
            };
            let (rule, value) = item
                .split_once('=')
                .ok_or_else(|| invalid("expected rule=N"))?;
            if rule == "within" {
                policy.within = Some(parse_duration(value).map_err(|reason| invalid(&reason))?);
                continue;
            }
            let n: u32 = value
                .parse()
                .map_err(|_| invalid("expected a whole number"))?;
            match rule {
                "last" => policy.last = n,
                "hourly" => policy.hourly = n,
                "daily" => policy.daily = n,
                "weekly" => policy.weekly = n,
                "monthly" => policy.monthly = n,
                "yearly" => policy.yearly = n,
                _ => {
                    return Err(invalid(
                        "unknown rule (last, hourly, daily, weekly, monthly, yearly, within)",
                    ))
                }
            }
        }
        if policy.is_empty() {
            return Err(PolicyError::Empty);
        }
        Ok(policy)
    }

    /// Decides, for runs given by time (any order), which are kept and why. A run with no
    /// reason is forgotten. The newest run is always kept ([`KeepReason::Latest`]).
    pub fn apply<K: Ord + Clone>(
        &self,
        runs: &[(K, DateTime<Utc>)],
    ) -> BTreeMap<K, Vec<KeepReason>> {
        let mut order: Vec<&(K, DateTime<Utc>)> = runs.iter().collect();
        // Newest first; equal times by key, so the outcome does not depend on input order.
        order.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut reasons: BTreeMap<K, Vec<KeepReason>> =
            runs.iter().map(|(k, _)| (k.clone(), Vec::new())).collect();
        let Some(newest) = order.first().map(|r| r.1) else {
            return reasons;
        };
        let mut buckets = [
            (KeepReason::Hourly, self.hourly, None::<String>),
            (KeepReason::Daily, self.daily, None),
            (KeepReason::Weekly, self.weekly, None),
            (KeepReason::Monthly, self.monthly, None),
            (KeepReason::Yearly, self.yearly, None),
        ];
        let mut last = self.last;
        for (i, (key, at)) in order.iter().enumerate() {
            let kept = reasons.get_mut(key).expect("every run has an entry");
            if i == 0 {
                kept.push(KeepReason::Latest);
            }
            if last > 0 {
                last -= 1;
                kept.push(KeepReason::Last);
            }
            for (reason, left, previous) in buckets.iter_mut() {
                if *left == 0 {
                    continue;
                }
                let bucket = bucket_of(*reason, *at);
                if previous.as_deref() != Some(bucket.as_str()) {
                    *previous = Some(bucket);
                    *left -= 1;
                    kept.push(*reason);
                }
            }
            if let Some(within) = self.within {
                let within = chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
                if newest - *at <= within {
                    kept.push(KeepReason::Within);
                }
            }
        }
        reasons
    }
}

/// The calendar bucket of a time for a rule (UTC; ISO weeks).
fn bucket_of(reason: KeepReason, at: DateTime<Utc>) -> String {
    match reason {
        KeepReason::Hourly => at.format("%Y-%m-%dT%H").to_string(),
        KeepReason::Daily => at.format("%Y-%m-%d").to_string(),
        KeepReason::Weekly => {
            let week = at.iso_week();
            format!("{}-W{:02}", week.year(), week.week())
        }
        KeepReason::Monthly => at.format("%Y-%m").to_string(),
        KeepReason::Yearly => at.format("%Y").to_string(),
        _ => unreachable!("only calendar rules have buckets"),
    }
}

/// Parses `90s`, `15m`, `36h`, `30d`, `2w`, `1y` (365 days), or combinations such as
/// `1d12h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = 0u64;
    let mut number = String::new();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .map_err(|_| format!("duration {text:?}: a unit without a number"))?;
        number.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            'y' => 365 * 86_400,
            _ => {
                return Err(format!(
                    "duration {text:?}: unknown unit {c:?} (s, m, h, d, w, y)"
                ))
            }
        };
        total = total.saturating_add(n.saturating_mul(unit));
    }
    if !number.is_empty() {
        return Err(format!(
            "duration {text:?}: a number without a unit (s, m, h, d, w, y)"
        ));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn kept(policy: &KeepPolicy, times: &[&str]) -> Vec<String> {
        let runs: Vec<(String, DateTime<Utc>)> =
            times.iter().map(|t| (t.to_string(), at(t))).collect();
        policy
            .apply(&runs)
            .into_iter()
            .filter(|(_, r)| !r.is_empty())
            .map(|(k, _)| k)
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let policy = KeepPolicy {
            last: 2,
            ..Default::default()
        };
        let times = [
            "2026-01-01T00:00:00Z",
            "2026-01-02T00:00:00Z",
            "2026-01-03T00:00:00Z",
        ];
        assert_eq!(
            kept(&policy, &times),
            ["2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"]
        );
    }

    #[test]
    fn keep_hourly_keeps_the_last_run_of_each_hour() {
        let policy = KeepPolicy {
            hourly: 2,
            ..Default::default()
        };
        let times = [
            "2026-01-01T10:05:00Z",
            "2026-01-01T10:55:00Z",
            "2026-01-01T11:10:00Z",
            "2026-01-01T11:20:00Z",
            "2026-01-01T12:00:00Z",
        ];
        assert_eq!(
            kept(&policy, &times),
            ["2026-01-01T11:20:00Z", "2026-01-01T12:00:00Z"]
        );
    }

    #[test]
    fn keep_daily_counts_days_that_have_runs_not_calendar_days() {
        // restic: "for the last n days which have one or more snapshots".
        let policy = KeepPolicy {
            daily: 2,
            ..Default::default()
        };
        let times = [
            "2026-01-01T05:00:00Z",
            "2026-01-01T23:00:00Z",
            "2026-01-05T05:00:00Z",
            "2026-01-20T05:00:00Z",
        ];
        assert_eq!(
            kept(&policy, &times),
            ["2026-01-05T05:00:00Z", "2026-01-20T05:00:00Z"]
        );
    }

    #[test]
    fn keep_weekly_uses_iso_weeks_across_a_year_end() {
        // 2026-12-31 (Thursday) and 2027-01-03 (Sunday) are both in ISO week 2026-W53.
        let policy = KeepPolicy {
            weekly: 2,
            ..Default::default()
        };
        let times = [
            "2026-12-24T00:00:00Z",
            "2026-12-31T00:00:00Z",
            "2027-01-03T00:00:00Z",
        ];
        assert_eq!(
            kept(&policy, &times),
            ["2026-12-24T00:00:00Z", "2027-01-03T00:00:00Z"]
        );
    }

    #[test]
    fn keep_monthly_and_yearly_keep_the_last_of_each() {
        let times = [
            "2025-06-30T00:00:00Z",
            "2025-12-31T00:00:00Z",
            "2026-01-15T00:00:00Z",
            "2026-01-31T00:00:00Z",
            "2026-02-01T00:00:00Z",
        ];
        let monthly = KeepPolicy {
            monthly: 2,
            ..Default::default()
        };
        assert_eq!(
            kept(&monthly, &times),
            ["2026-01-31T00:00:00Z", "2026-02-01T00:00:00Z"]
        );
        let yearly = KeepPolicy {
            yearly: 5,
            ..Default::default()
        };
        assert_eq!(
            kept(&yearly, &times),
            ["2025-12-31T00:00:00Z", "2026-02-01T00:00:00Z"]
        );
    }

    #[test]
    fn keep_within_is_relative_to_the_latest_run() {
        let policy = KeepPolicy {
            within: Some(Duration::from_secs(2 * 86_400)),
            ..Default::default()
        };
        let times = [
            "2020-01-01T00:00:00Z",
            "2020-01-09T00:00:00Z",
            "2020-01-10T00:00:00Z",
        ];
        assert_eq!(
            kept(&policy, &times),
            ["2020-01-09T00:00:00Z", "2020-01-10T00:00:00Z"]
        );
    }

    #[test]
    fn the_latest_run_is_always_kept_and_reasons_are_named() {
        let policy = KeepPolicy {
            daily: 1,
            ..Default::default()
        };
        let runs = vec![
            ("a", at("2026-01-01T00:00:00Z")),
            ("b", at("2026-01-02T00:00:00Z")),
        ];
        let reasons = policy.apply(&runs);
        assert_eq!(reasons["b"], [KeepReason::Latest, KeepReason::Daily]);
        assert!(reasons["a"].is_empty());
    }

    #[test]
    fn policies_parse_and_bad_ones_are_refused_naming_the_item() {
        let policy =
            KeepPolicy::parse("last=7, daily=30,weekly=12,monthly=24,yearly=3,within=1d12h")
                .unwrap();
        assert_eq!(policy.last, 7);
        assert_eq!(policy.yearly, 3);
        assert_eq!(policy.within, Some(Duration::from_secs(36 * 3600)));
        assert!(matches!(KeepPolicy::parse(""), Err(PolicyError::Empty)));
        let err = KeepPolicy::parse("daily=x").unwrap_err().to_string();
        assert!(err.contains("daily=x"), "{err}");
        assert!(KeepPolicy::parse("fortnightly=2").is_err());
        assert!(parse_duration("10").is_err());
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
    }

    fn times() -> impl Strategy<Value = Vec<DateTime<Utc>>> {
        // Runs spread over about three years, several per day at times.
        proptest::collection::vec(1_700_000_000i64..1_800_000_000i64, 1..120).prop_map(|secs| {
            secs.into_iter()
                .map(|s| DateTime::from_timestamp(s, 0).unwrap())
                .collect()
        })
    }

    proptest! {
        /// A calendar rule keeps exactly min(N, buckets with runs) runs: the newest run of
        /// each of the newest N buckets, so no two kept runs (for that rule) share a bucket.
        #[test]
        fn calendar_rules_keep_the_newest_run_of_each_of_the_newest_buckets(
            times in times(),
            n in 1u32..20,
            rule in 0usize..5,
        ) {
            let reason = [KeepReason::Hourly, KeepReason::Daily, KeepReason::Weekly, KeepReason::Monthly, KeepReason::Yearly][rule];
            let mut policy = KeepPolicy::default();
            match reason {
                KeepReason::Hourly => policy.hourly = n,
                KeepReason::Daily => policy.daily = n,
                KeepReason::Weekly => policy.weekly = n,
                KeepReason::Monthly => policy.monthly = n,
                _ => policy.yearly = n,
            }
            let runs: Vec<(usize, DateTime<Utc>)> = times.iter().copied().enumerate().collect();
            let reasons = policy.apply(&runs);
            // Expected: group by bucket, take the newest buckets, the newest run in each.
            let mut newest_in: BTreeMap<String, (DateTime<Utc>, usize)> = BTreeMap::new();
            for (i, t) in &runs {
                let b = bucket_of(reason, *t);
                let entry = newest_in.entry(b).or_insert((*t, *i));
                if (*t, std::cmp::Reverse(*i)) > (entry.0, std::cmp::Reverse(entry.1)) {
                    *entry = (*t, *i);
                }
            }
            let mut by_time: Vec<(DateTime<Utc>, usize)> = newest_in.into_values().collect();
            by_time.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let expected: std::collections::BTreeSet<usize> =
                by_time.iter().take(n as usize).map(|(_, i)| *i).collect();
            let got: std::collections::BTreeSet<usize> = reasons
                .iter()
                .filter(|(_, r)| r.contains(&reason))
                .map(|(i, _)| *i)
                .collect();
            prop_assert_eq!(got, expected);
        }

        /// Whatever the policy, the newest run is kept, and every run keep-last would keep is.
        #[test]
        fn the_newest_runs_are_never_forgotten(times in times(), last in 0u32..5, daily in 0u32..5) {
            let policy = KeepPolicy { last, daily, ..Default::default() };
            let runs: Vec<(usize, DateTime<Utc>)> = times.iter().copied().enumerate().collect();
            let reasons = policy.apply(&runs);
            let mut order = runs.clone();
            order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            prop_assert!(!reasons[&order[0].0].is_empty());
            for (i, _) in order.iter().take(last as usize) {
                prop_assert!(reasons[i].contains(&KeepReason::Last));
            }
        }
    }
}
