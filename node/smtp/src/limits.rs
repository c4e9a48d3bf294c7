//! Per-user sending limits on the submission listeners (the seeds' flow control): at most
//! so many recipients per hour and per day, and at most so many messages with the same
//! subject per day (a compromised account sending one spam run trips it). Counters are this
//! node's and live in memory; windows are fixed UTC hours and days.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// The limits; 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendPolicy {
    /// Recipients an account may send to per hour.
    pub recipients_per_hour: u32,
    /// Recipients an account may send to per day.
    pub recipients_per_day: u32,
    /// Messages with one subject an account may send per day.
    pub same_subject_per_day: u32,
}

impl Default for SendPolicy {
    /// The seed manuals' defaults: 200 recipients an hour, 8 messages with one subject a day.
    fn default() -> Self {
        Self { recipients_per_hour: 200, recipients_per_day: 0, same_subject_per_day: 8 }
    }
}

/// Which limit a sender reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReached {
    /// Recipients per hour.
    RecipientsPerHour(u32),
    /// Recipients per day.
    RecipientsPerDay(u32),
    /// Messages with one subject per day.
    SameSubject(u32),
}

/// Most accounts tracked; past it, accounts idle since an earlier day are dropped.
const MAX_ACCOUNTS: usize = 100_000;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

#[derive(Default)]
struct Usage {
    hour: u64,
    recipients_this_hour: u32,
    day: u64,
    recipients_today: u32,
    /// Messages per subject hash, today.
    subjects: HashMap<u64, u32>,
}

impl Usage {
    fn roll(&mut self, now_ms: u64) {
        let (hour, day) = (now_ms / HOUR_MS, now_ms / DAY_MS);
        if hour != self.hour {
            self.hour = hour;
            self.recipients_this_hour = 0;
        }
        if day != self.day {
            self.day = day;
            self.recipients_today = 0;
            self.subjects.clear();
        }
    }
}

/// The counters of one node.
pub struct SendLimiter {
    policy: SendPolicy,
    usage: Mutex<HashMap<u64, Usage>>,
}

impl std::fmt::Debug for SendLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendLimiter").field("policy", &self.policy).finish()
    }
}

fn subject_key(subject: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    subject.trim().to_lowercase().hash(&mut hasher);
    hasher.finish()
}

impl SendLimiter {
    /// Counters for `policy`.
    pub fn new(policy: SendPolicy) -> Self {
        Self { policy, usage: Mutex::new(HashMap::new()) }
    }

    fn with_usage<T>(&self, account_id: u64, now_ms: u64, f: impl FnOnce(&mut Usage) -> T) -> T {
        let mut usage = self.usage.lock().expect("send limiter lock");
        if usage.len() >= MAX_ACCOUNTS {
            let today = now_ms / DAY_MS;
            usage.retain(|_, entry| entry.day == today);
        }
        let entry = usage.entry(account_id).or_default();
        entry.roll(now_ms);
        f(entry)
    }

    /// Counts one more recipient for the account, or says which limit it would pass.
    pub fn admit_recipient(&self, account_id: u64, now_ms: u64) -> Result<(), LimitReached> {
        let policy = self.policy;
        self.with_usage(account_id, now_ms, |usage| {
            if policy.recipients_per_hour > 0 && usage.recipients_this_hour >= policy.recipients_per_hour {
                return Err(LimitReached::RecipientsPerHour(policy.recipients_per_hour));
            }
            if policy.recipients_per_day > 0 && usage.recipients_today >= policy.recipients_per_day {
                return Err(LimitReached::RecipientsPerDay(policy.recipients_per_day));
            }
            usage.recipients_this_hour += 1;
            usage.recipients_today += 1;
            Ok(())
        })
    }

    /// Whether the account may send one more message with `subject` today (an empty
    /// subject is never counted).
    pub fn check_subject(&self, account_id: u64, subject: &str, now_ms: u64) -> Result<(), LimitReached> {
        let limit = self.policy.same_subject_per_day;
        if limit == 0 || subject.trim().is_empty() {
            return Ok(());
        }
        let key = subject_key(subject);
        self.with_usage(account_id, now_ms, |usage| match usage.subjects.get(&key) {
            Some(&sent) if sent >= limit => Err(LimitReached::SameSubject(limit)),
            _ => Ok(()),
        })
    }

    /// Counts a message the account sent with `subject`.
    pub fn record_subject(&self, account_id: u64, subject: &str, now_ms: u64) {
        if self.policy.same_subject_per_day == 0 || subject.trim().is_empty() {
            return;
        }
        let key = subject_key(subject);
        self.with_usage(account_id, now_ms, |usage| *usage.subjects.entry(key).or_insert(0) += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_limited_per_hour_and_day_and_windows_roll() {
        let limiter =
            SendLimiter::new(SendPolicy { recipients_per_hour: 2, recipients_per_day: 3, same_subject_per_day: 0 });
        let hour = |n: u64| n * HOUR_MS + 5;
        assert!(limiter.admit_recipient(1, hour(0)).is_ok());
        assert!(limiter.admit_recipient(1, hour(0)).is_ok());
        assert_eq!(limiter.admit_recipient(1, hour(0)), Err(LimitReached::RecipientsPerHour(2)));
        assert!(limiter.admit_recipient(2, hour(0)).is_ok(), "another account has its own budget");
        assert!(limiter.admit_recipient(1, hour(1)).is_ok(), "a new hour");
        assert_eq!(limiter.admit_recipient(1, hour(1)), Err(LimitReached::RecipientsPerDay(3)));
        assert!(limiter.admit_recipient(1, hour(24)).is_ok(), "a new day");
    }

    #[test]
    fn the_ninth_message_with_one_subject_in_a_day_is_refused() {
        let limiter = SendLimiter::new(SendPolicy::default());
        for _ in 0..8 {
            assert!(limiter.check_subject(7, "Invoice  ", 1_000).is_ok());
            limiter.record_subject(7, "Invoice", 1_000);
        }
        assert_eq!(limiter.check_subject(7, " invoice", 2_000), Err(LimitReached::SameSubject(8)));
        assert!(limiter.check_subject(7, "Other", 2_000).is_ok());
        assert!(limiter.check_subject(7, "", 2_000).is_ok());
        assert!(limiter.check_subject(7, "Invoice", DAY_MS + 1).is_ok(), "tomorrow");
    }
}
