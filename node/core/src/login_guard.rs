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

/// Most tracked keys; past it idle entries are dropped, then unblocked ones.
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

    /// Takes back one counted attempt (it succeeded).
    fn forgive(&mut self) {
        self.times.pop_back();
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

impl Tables {
    fn len(&self) -> usize {
        self.addresses.len() + self.accounts.len()
    }

    /// Keeps memory bounded whatever clients send: drops idle entries, then (under a
    /// flood of distinct names or addresses) every entry that is not blocking.
    fn shrink(&mut self, now: Instant, policy: &LockoutPolicy) {
        self.addresses.retain(|_, failures| !failures.idle(now, policy));
        self.accounts.retain(|_, failures| !failures.idle(now, policy));
        if self.len() > MAX_TRACKED {
            self.addresses.retain(|_, failures| failures.blocked(now));
            self.accounts.retain(|_, failures| failures.blocked(now));
        }
    }
}

/// Why a login attempt is refused before its password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The client address failed too often.
    Address,
    /// The account failed too often.
    Account,
}

/// IPv6 clients are counted per /64, the block one subscriber usually holds.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(segments[0], segments[1], segments[2], segments[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
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

    /// Admits a login attempt from `address` for `account`, or refuses it while either is
    /// blocked. An admitted attempt counts as a failure at once (so parallel attempts
    /// cannot all slip in before the first failure is recorded) until [`Self::succeeded`]
    /// takes it back.
    pub fn attempt(&self, address: Option<IpAddr>, account: &str, now: Instant) -> Result<(), Blocked> {
        let address = address.map(address_key);
        let mut tables = self.tables.lock().expect("login guard lock");
        if address.and_then(|ip| tables.addresses.get(&ip)).is_some_and(|f| f.blocked(now)) {
            return Err(Blocked::Address);
        }
        if tables.accounts.get(account).is_some_and(|f| f.blocked(now)) {
            return Err(Blocked::Account);
        }
        if tables.len() > MAX_TRACKED {
            tables.shrink(now, &self.policy);
        }
        let policy = self.policy;
        if let Some(ip) = address {
            tables.addresses.entry(ip).or_default().record(now, &policy, policy.max_failures_per_address);
        }
        tables.accounts.entry(account.to_owned()).or_default().record(now, &policy, policy.max_failures_per_account);
        Ok(())
    }

    /// Takes back the attempt counted by [`Self::attempt`]: the password was right. Earlier
    /// failures stay counted, so a user's own logins never reset an attacker's budget.
    pub fn succeeded(&self, address: Option<IpAddr>, account: &str) {
        let mut tables = self.tables.lock().expect("login guard lock");
        if let Some(failures) = address.map(address_key).and_then(|ip| tables.addresses.get_mut(&ip)) {
            failures.forgive();
        }
        if let Some(failures) = tables.accounts.get_mut(account) {
            failures.forgive();
        }
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
        for second in 0..3 {
            assert_eq!(guard.attempt(ip, "a@x.test", start + Duration::from_secs(second)), Ok(()));
        }
        assert_eq!(guard.attempt(None, "a@x.test", start + Duration::from_secs(4)), Err(Blocked::Account));
        assert_eq!(guard.attempt(ip, "b@x.test", start + Duration::from_secs(4)), Ok(()), "other accounts are fine");
        assert_eq!(guard.attempt(None, "a@x.test", start + Duration::from_secs(604)), Ok(()), "the block ends");
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up_and_success_resets() {
        let guard = LoginGuard::new(policy());
        let start = Instant::now();
        for minute in 0..5 {
            assert_eq!(guard.attempt(None, "a@x.test", start + Duration::from_secs(minute * 61)), Ok(()));
        }
        // Successful logins are taken back; earlier failures stay counted.
        guard.attempt(None, "a@x.test", start + Duration::from_secs(401)).unwrap();
        for second in 402..412 {
            guard.attempt(None, "a@x.test", start + Duration::from_secs(second)).unwrap();
            guard.succeeded(None, "a@x.test");
        }
        guard.attempt(None, "a@x.test", start + Duration::from_secs(413)).unwrap();
        // The third failure in the window is admitted and blocks what follows, whatever
        // the successes between them.
        guard.attempt(None, "a@x.test", start + Duration::from_secs(414)).unwrap();
        assert_eq!(guard.attempt(None, "a@x.test", start + Duration::from_secs(415)), Err(Blocked::Account));
    }

    #[test]
    fn an_address_trying_many_accounts_is_blocked() {
        let guard = LoginGuard::new(policy());
        let start = Instant::now();
        let ip: Option<IpAddr> = Some("2001:db8::1".parse().unwrap());
        for n in 0..5 {
            guard.attempt(ip, &format!("user{n}@x.test"), start).unwrap();
        }
        assert_eq!(guard.attempt(ip, "fresh@x.test", start), Err(Blocked::Address));
        let same_subscriber: Option<IpAddr> = Some("2001:db8::ffff".parse().unwrap());
        assert_eq!(guard.attempt(same_subscriber, "fresh@x.test", start), Err(Blocked::Address), "counted per /64");
        assert_eq!(guard.attempt(Some("192.0.2.9".parse().unwrap()), "fresh@x.test", start), Ok(()));
    }
}
