//! Login lockout: too many failed logins from one client address, or for one account,
//! within a window block further attempts for a while (the seed manuals' defaults: 10
//! minutes, 55 failures per address or 20 per account, blocked for 2,880 minutes).
//!
//! The counters are this node's; replicating them so they hold cluster-wide is part of the
//! cluster work. Memory is bounded: idle entries are dropped when the table grows.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Thresholds of the lockout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// The window failures are counted in.
    pub window: Duration,
    /// Failures from one client address within the window that trigger a block.
    pub max_failures_per_address: usize,
    /// Failures for one account within the window that trigger a block.
    pub max_failures_per_account: usize,
    /// How long a block lasts.
    pub block: Duration,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10 * 60),
            max_failures_per_address: 55,
            max_failures_per_account: 20,
            block: Duration::from_secs(2_880 * 60),
        }
    }
}

/// Most tracked keys before idle ones are dropped.
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
struct Failures {
    times: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

impl Failures {
    fn blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| now < until)
    }

    fn record(&mut self, now: Instant, policy: &LockoutPolicy, limit: usize) {
        while self.times.front().is_some_and(|&time| now.duration_since(time) > policy.window) {
            self.times.pop_front();
        }
        self.times.push_back(now);
        if self.times.len() >= limit {
            self.blocked_until = Some(now + policy.block);
            self.times.clear();
        }
    }

    fn idle(&self, now: Instant, policy: &LockoutPolicy) -> bool {
        !self.blocked(now) && self.times.back().is_none_or(|&last| now.duration_since(last) > policy.window)
    }
}

#[derive(Default)]
struct Tables {
    addresses: HashMap<IpAddr, Failures>,
    accounts: HashMap<String, Failures>,
}

/// Why a login attempt is refused before its password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The client address failed too often.
    Address,
    /// The account failed too often.
    Account,
}

/// The lockout state of one node.
pub struct LoginGuard {
    policy: LockoutPolicy,
    tables: Mutex<Tables>,
}

impl LoginGuard {
    /// A guard with `policy`.
    pub fn new(policy: LockoutPolicy) -> Self {
        Self { policy, tables: Mutex::new(Tables::default()) }
    }

    /// Returns whether an attempt from `address` for `account` is blocked now.
    pub fn check(&self, address: Option<IpAddr>, account: &str, now: Instant) -> Result<(), Blocked> {
        let tables = self.tables.lock().expect("login guard lock");
        if address.and_then(|ip| tables.addresses.get(&ip)).is_some_and(|f| f.blocked(now)) {
            return Err(Blocked::Address);
        }
        if tables.accounts.get(account).is_some_and(|f| f.blocked(now)) {
            return Err(Blocked::Account);
        }
        Ok(())
    }

    /// Counts a failed attempt.
    pub fn failed(&self, address: Option<IpAddr>, account: &str, now: Instant) {
        let mut tables = self.tables.lock().expect("login guard lock");
        let policy = self.policy;
        if tables.addresses.len() + tables.accounts.len() > MAX_TRACKED {
            tables.addresses.retain(|_, failures| !failures.idle(now, &policy));
            tables.accounts.retain(|_, failures| !failures.idle(now, &policy));
        }
        if let Some(ip) = address {
            tables.addresses.entry(ip).or_default().record(now, &policy, policy.max_failures_per_address);
        }
        tables.accounts.entry(account.to_owned()).or_default().record(now, &policy, policy.max_failures_per_account);
    }

    /// Forgets an account's failures after a successful login.
    pub fn succeeded(&self, account: &str) {
        self.tables.lock().expect("login guard lock").accounts.remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LockoutPolicy {
        LockoutPolicy {
            window: Duration::from_secs(60),
            max_failures_per_address: 5,
            max_failures_per_account: 3,
            block: Duration::from_secs(600),
        }
    }

    #[test]
    fn an_account_is_blocked_after_its_limit_within_the_window_and_freed_later() {
        let guard = LoginGuard::new(policy());
        let start = Instant::now();
        let ip: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        for second in 0..2 {
            guard.failed(ip, "a@x.test", start + Duration::from_secs(second));
        }
        assert_eq!(guard.check(ip, "a@x.test", start + Duration::from_secs(3)), Ok(()));
        guard.failed(ip, "a@x.test", start + Duration::from_secs(3));
        assert_eq!(guard.check(None, "a@x.test", start + Duration::from_secs(4)), Err(Blocked::Account));
        assert_eq!(guard.check(ip, "b@x.test", start + Duration::from_secs(4)), Ok(()), "other accounts are fine");
        assert_eq!(guard.check(None, "a@x.test", start + Duration::from_secs(604)), Ok(()), "the block ends");
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up_and_success_resets() {
        let guard = LoginGuard::new(policy());
        let start = Instant::now();
        for minute in 0..5 {
            guard.failed(None, "a@x.test", start + Duration::from_secs(minute * 61));
        }
        assert_eq!(guard.check(None, "a@x.test", start + Duration::from_secs(400)), Ok(()));
        guard.failed(None, "a@x.test", start + Duration::from_secs(401));
        guard.failed(None, "a@x.test", start + Duration::from_secs(402));
        guard.succeeded("a@x.test");
        guard.failed(None, "a@x.test", start + Duration::from_secs(403));
        assert_eq!(guard.check(None, "a@x.test", start + Duration::from_secs(404)), Ok(()));
    }

    #[test]
    fn an_address_trying_many_accounts_is_blocked() {
        let guard = LoginGuard::new(policy());
        let start = Instant::now();
        let ip: Option<IpAddr> = Some("2001:db8::1".parse().unwrap());
        for n in 0..5 {
            guard.failed(ip, &format!("user{n}@x.test"), start);
        }
        assert_eq!(guard.check(ip, "fresh@x.test", start), Err(Blocked::Address));
        assert_eq!(guard.check(Some("192.0.2.9".parse().unwrap()), "fresh@x.test", start), Ok(()));
    }
}
