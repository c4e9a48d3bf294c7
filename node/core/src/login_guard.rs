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
    /// Admitted attempts whose password check has not finished.
    pending: usize,
    blocked_until: Option<Instant>,
}

impl Failures {
    fn blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| now < until)
    }

    fn prune(&mut self, now: Instant, policy: &LockoutPolicy) {
        while self.times.front().is_some_and(|&time| now.duration_since(time) > policy.window) {
            self.times.pop_front();
        }
    }

    /// Whether another attempt may start: failures in the window plus attempts still being
    /// checked stay under the limit, so parallel guesses cannot overrun it.
    fn has_room(&mut self, now: Instant, policy: &LockoutPolicy, limit: usize) -> bool {
        self.prune(now, policy);
        self.times.len() + self.pending < limit
    }

    /// Ends an attempt; a failure is counted and may start a block (then true).
    fn finish(&mut self, failed: bool, now: Instant, policy: &LockoutPolicy, limit: usize) -> bool {
        self.pending = self.pending.saturating_sub(1);
        if failed {
            self.prune(now, policy);
            self.times.push_back(now);
            if self.times.len() >= limit {
                self.blocked_until = Some(now + policy.block);
                self.times.clear();
                return true;
            }
        }
        false
    }

    fn idle(&self, now: Instant, policy: &LockoutPolicy) -> bool {
        !self.blocked(now)
            && self.pending == 0
            && self.times.back().is_none_or(|&last| now.duration_since(last) > policy.window)
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
            self.addresses.retain(|_, failures| failures.blocked(now) || failures.pending > 0);
            self.accounts.retain(|_, failures| failures.blocked(now) || failures.pending > 0);
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
    /// So many attempts for the account or from the address are being checked right now
    /// that one more could exceed the limit; a moment later it may go through.
    Busy,
}

/// A block a failure started on this node: to be made cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedBlock {
    /// `address` or `account`.
    pub kind: &'static str,
    /// The client address (IPv6 per /64, as `2001:db8:1:2::`) or the account name.
    pub key: String,
}

/// An admitted login attempt. Call [`Attempt::succeeded`] when the password was right, or
/// [`Attempt::failed`]; dropped otherwise (an error, a cancelled session), it counts as a
/// failure too.
pub struct Attempt<'a> {
    guard: &'a LoginGuard,
    address: Option<IpAddr>,
    account: String,
    finished: bool,
}

impl Attempt<'_> {
    /// Ends the attempt as a success: it counts for nothing, and earlier failures stay
    /// counted, so a user's own logins never reset an attacker's budget.
    pub fn succeeded(mut self) {
        self.finished = true;
        self.guard.finish(self.address, &self.account, false, Instant::now());
    }

    /// Ends the attempt without checking the password: it counts for nothing.
    pub fn withdrawn(self) {
        self.succeeded();
    }

    /// Ends the attempt as a failure; returns the blocks it started.
    pub fn failed(mut self) -> Vec<StartedBlock> {
        self.finished = true;
        self.guard.finish(self.address, &self.account, true, Instant::now())
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.guard.finish(self.address, &self.account, true, Instant::now());
    }
}

/// The lockout state of one node.
pub struct LoginGuard {
    policy: LockoutPolicy,
    tables: Mutex<Tables>,
    /// Woken whenever an attempt ends (see [`LoginGuard::attempt_patiently`]).
    released: tokio::sync::Notify,
}

impl LoginGuard {
    /// A guard with `policy`.
    pub fn new(policy: LockoutPolicy) -> Self {
        Self { policy, tables: Mutex::new(Tables::default()), released: tokio::sync::Notify::new() }
    }

    /// [`LoginGuard::attempt`], except that while the only obstacle is other attempts in
    /// progress ([`Blocked::Busy`]) it waits for them to end, up to `patience`: a burst of
    /// correct logins (a client opening many connections, an office behind one address
    /// reconnecting) is delayed by the password checks ahead of it, not refused.
    pub async fn attempt_patiently(
        &self,
        address: Option<IpAddr>,
        account: &str,
        patience: Duration,
    ) -> Result<Attempt<'_>, Blocked> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before the check, so an attempt ending in between still wakes us.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.attempt(address, account, Instant::now()) {
                Err(Blocked::Busy) => {
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        return Err(Blocked::Busy);
                    }
                }
                other => return other,
            }
        }
    }

    /// Admits a login attempt from `address` for `account`, or refuses it while either is
    /// blocked, or while failures plus attempts in progress reach a limit (so parallel
    /// guesses cannot all slip in before the first failure is recorded, and parallel
    /// correct logins are only held back a moment, never blocked).
    pub fn attempt(&self, address: Option<IpAddr>, account: &str, now: Instant) -> Result<Attempt<'_>, Blocked> {
        // IPv6 clients are counted per /64, like every other per-client limit.
        let address = address.map(wmail_net::client_network);
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
        let address_room = address.is_none_or(|ip| {
            tables.addresses.entry(ip).or_default().has_room(now, &policy, policy.max_failures_per_address)
        });
        let account_room = tables.accounts.entry(account.to_owned()).or_default().has_room(
            now,
            &policy,
            policy.max_failures_per_account,
        );
        if !address_room || !account_room {
            return Err(Blocked::Busy);
        }
        if let Some(ip) = address {
            tables.addresses.entry(ip).or_default().pending += 1;
        }
        tables.accounts.entry(account.to_owned()).or_default().pending += 1;
        Ok(Attempt { guard: self, address, account: account.to_owned(), finished: false })
    }

    fn finish(&self, address: Option<IpAddr>, account: &str, failed: bool, now: Instant) -> Vec<StartedBlock> {
        let policy = self.policy;
        let mut started = Vec::new();
        let mut tables = self.tables.lock().expect("login guard lock");
        if let Some((ip, failures)) = address.and_then(|ip| Some((ip, tables.addresses.get_mut(&ip)?)))
            && failures.finish(failed, now, &policy, policy.max_failures_per_address)
        {
            started.push(StartedBlock { kind: "address", key: ip.to_string() });
        }
        if let Some(failures) = tables.accounts.get_mut(account)
            && failures.finish(failed, now, &policy, policy.max_failures_per_account)
        {
            started.push(StartedBlock { kind: "account", key: account.to_owned() });
        }
        // Wakes the attempts waiting their turn (after the counts changed, under the lock).
        self.released.notify_waiters();
        started
    }

    /// The key a client address is counted and blocked under (IPv6 per /64).
    pub fn address_key(address: IpAddr) -> String {
        wmail_net::client_network(address).to_string()
    }

    /// The lockout thresholds.
    pub fn policy(&self) -> LockoutPolicy {
        self.policy
    }

    /// Forgets this node's own block of `key` (once the block is replicated, or lifted by
    /// an administrator), so the replicated state alone decides.
    pub fn forget_block(&self, kind: &str, key: &str) {
        let mut tables = self.tables.lock().expect("login guard lock");
        let failures = match kind {
            "address" => key.parse::<IpAddr>().ok().and_then(|ip| tables.addresses.get_mut(&ip)),
            _ => tables.accounts.get_mut(key),
        };
        if let Some(failures) = failures {
            failures.blocked_until = None;
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

    /// One failed attempt at `now` (dropping it counts the failure "now" too, which the
    /// window treats alike at this scale).
    fn fail(guard: &LoginGuard, ip: Option<IpAddr>, account: &str, now: Instant) -> Result<(), Blocked> {
        guard.attempt(ip, account, now).map(drop)
    }

    #[test]
    fn an_account_is_blocked_after_its_limit_and_freed_later() {
        let guard = LoginGuard::new(policy());
        let start = Instant::now();
        let ip: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(fail(&guard, ip, "a@x.test", start), Ok(()));
        }
        assert_eq!(guard.attempt(None, "a@x.test", start).err(), Some(Blocked::Account));
        assert!(guard.attempt(ip, "b@x.test", start).is_ok(), "other accounts are fine");
        let later = Instant::now() + Duration::from_secs(601);
        assert!(guard.attempt(None, "a@x.test", later).is_ok(), "the block ends");
    }

    #[test]
    fn parallel_correct_logins_are_held_back_but_never_blocked() {
        let guard = LoginGuard::new(policy());
        let now = Instant::now();
        let in_flight: Vec<Attempt> = (0..3).map(|_| guard.attempt(None, "a@x.test", now).unwrap()).collect();
        // A fourth at the same time could be the limit's worth of guesses: held back.
        assert_eq!(guard.attempt(None, "a@x.test", now).err(), Some(Blocked::Busy));
        in_flight.into_iter().for_each(Attempt::succeeded);
        for _ in 0..20 {
            guard.attempt(None, "a@x.test", now).unwrap().succeeded();
        }
        assert!(guard.attempt(None, "a@x.test", now).is_ok(), "successes never block");
    }

    #[test]
    fn failures_stay_counted_across_successes_and_expire_with_the_window() {
        let guard = LoginGuard::new(policy());
        let start = Instant::now();
        fail(&guard, None, "a@x.test", start).unwrap();
        for _ in 0..10 {
            guard.attempt(None, "a@x.test", start).unwrap().succeeded();
        }
        fail(&guard, None, "a@x.test", start).unwrap();
        // Two failures and one attempt in flight: a parallel one must wait.
        let pending = guard.attempt(None, "a@x.test", start).unwrap();
        assert_eq!(guard.attempt(None, "a@x.test", start).err(), Some(Blocked::Busy));
        drop(pending);
        assert_eq!(guard.attempt(None, "a@x.test", start).err(), Some(Blocked::Account), "the third failure blocks");
    }

    #[test]
    fn an_address_trying_many_accounts_is_blocked() {
        let guard = LoginGuard::new(policy());
        let start = Instant::now();
        let ip: Option<IpAddr> = Some("2001:db8::1".parse().unwrap());
        for n in 0..5 {
            fail(&guard, ip, &format!("user{n}@x.test"), start).unwrap();
        }
        assert_eq!(guard.attempt(ip, "fresh@x.test", start).err(), Some(Blocked::Address));
        let same_subscriber: Option<IpAddr> = Some("2001:db8::ffff".parse().unwrap());
        assert_eq!(guard.attempt(same_subscriber, "fresh@x.test", start).err(), Some(Blocked::Address), "per /64");
        assert!(guard.attempt(Some("192.0.2.9".parse().unwrap()), "fresh@x.test", start).is_ok());
    }

    #[tokio::test]
    async fn a_busy_login_waits_for_one_in_progress_instead_of_failing() {
        let guard = LoginGuard::new(policy());
        let start = Instant::now();
        let mut in_progress: Vec<Attempt<'_>> =
            (0..3).map(|_| guard.attempt(None, "a@x.test", start).expect("under the limit")).collect();
        let patience = Duration::from_secs(5);
        // Nothing ends: after its patience the attempt is told it is busy.
        let refused = guard.attempt_patiently(None, "a@x.test", Duration::from_millis(30)).await;
        assert_eq!(refused.err(), Some(Blocked::Busy));
        // One correct login ends while another waits: the waiting one is admitted.
        let (waited, ()) = tokio::join!(guard.attempt_patiently(None, "a@x.test", patience), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            in_progress.pop().expect("three").succeeded();
        });
        assert!(waited.is_ok());
    }
}
