//! Password hashing with argon2id (PHC strings), off the async executor.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use aws_lc_rs::hmac;

use crate::error::{CoreError, Result};

/// Argon2 hashes computed at once, node-wide: each needs about 19 MiB and a core, so
/// unbounded parallel logins (a password-guessing flood) could exhaust memory.
static HASHING_SLOTS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()).max(2))
});

/// Shortest password accepted.
pub const MIN_PASSWORD_LENGTH: usize = 8;

/// Checks the password policy.
pub fn check_policy(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_LENGTH {
        return Err(CoreError::invalid(format!(
            "password is too short: use at least {MIN_PASSWORD_LENGTH} characters"
        )));
    }
    Ok(())
}

/// Hashes `password` with argon2id and a random salt.
pub async fn hash(password: String) -> Result<String> {
    let _slot = HASHING_SLOTS.acquire().await.map_err(|e| CoreError::internal("hashing a password", e))?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| CoreError::internal("hashing a password", e))
    })
    .await
    .map_err(|e| CoreError::internal("hashing a password", e))?
}

/// Argon2 work memory kept between verifications, one buffer per hashing slot. Each
/// verification needs about 19 MiB; allocating and freeing that per login made glibc keep
/// hundreds of megabytes in per-thread arenas, so the buffers are reused instead.
static BLOCK_POOL: std::sync::Mutex<Vec<Vec<Block>>> = std::sync::Mutex::new(Vec::new());

/// Verifies `password` against a parsed PHC hash like `PasswordVerifier` does (same
/// algorithm, version, parameters and salt; constant-time comparison), with work memory
/// from [`BLOCK_POOL`].
fn verify_with_pooled_memory(password: &str, parsed: &PasswordHash) -> bool {
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) =
        (Algorithm::try_from(parsed.algorithm), Params::try_from(parsed), parsed.salt, parsed.hash)
    else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let mut salt_buffer = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buffer) else { return false };
    let mut blocks = BLOCK_POOL.lock().expect("block pool lock").pop().unwrap_or_default();
    if blocks.len() < params.block_count() {
        blocks.resize(params.block_count(), Block::default());
    }
    let mut output = vec![0u8; expected.len()];
    let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password.as_bytes(),
        salt,
        &mut output,
        &mut blocks,
    );
    BLOCK_POOL.lock().expect("block pool lock").push(blocks);
    // Constant time: every byte is compared whatever the first difference.
    hashed.is_ok() && output.iter().zip(expected.as_bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// A hash of a random secret, verified against when the account does not exist so the
/// response time does not reveal which addresses exist.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let secret: [u8; 16] = rand::random();
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(&secret, &salt).map(|hash| hash.to_string()).unwrap_or_default()
});

/// Most accounts [`VerifiedPasswords`] remembers a password of (about 64 bytes each); when
/// full, expired entries are dropped, and if none were, new logins are simply not
/// remembered.
const MAX_REMEMBERED: usize = 250_000;

/// The password each account last logged in with on this node, so a client that logs in
/// again and again (phones open a connection per check, desktop clients several at once)
/// pays for argon2 once per `ttl`, not once per login. The entry is a keyed MAC of the
/// account's PHC hash and the password, under a key made at start-up and never stored:
/// a wrong password never matches it, and a changed password (a new PHC hash) never
/// matches the old one. Failures are never remembered, so guessing costs argon2 every
/// time. The trade-off: someone able to read this process's memory could test guesses
/// against an entry at HMAC speed instead of argon2 speed (they could also read the
/// passwords of logins as they arrive).
pub struct VerifiedPasswords {
    key: hmac::Key,
    ttl: Duration,
    entries: Mutex<HashMap<u64, ([u8; 32], Instant)>>,
    hashed: AtomicU64,
    remembered: AtomicU64,
}

impl VerifiedPasswords {
    /// Remembers verified passwords for `ttl` (zero: never).
    pub fn new(ttl: Duration) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &rand::random::<[u8; 32]>());
        Self { key, ttl, entries: Mutex::new(HashMap::new()), hashed: AtomicU64::new(0), remembered: AtomicU64::new(0) }
    }

    fn tag(&self, hash: &str, password: &str) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(&(hash.len() as u64).to_be_bytes());
        context.update(hash.as_bytes());
        context.update(password.as_bytes());
        context.sign().as_ref().try_into().expect("HMAC-SHA256 tags are 32 bytes")
    }

    /// Whether `password` matches `account`'s PHC `hash` (see [`verify`]), from memory
    /// when that account logged in with it less than `ttl` ago.
    pub async fn verify(&self, account: Option<u64>, password: String, hash: Option<String>) -> bool {
        let remembering = !self.ttl.is_zero();
        let remembered = account.zip(hash.as_deref()).filter(|_| remembering);
        let tag = remembered.map(|(account, hash)| (account, self.tag(hash, &password)));
        if let Some((account, tag)) = tag {
            let entries = self.entries.lock().expect("verified passwords lock");
            if entries.get(&account).is_some_and(|(known, verified)| *known == tag && verified.elapsed() < self.ttl) {
                self.remembered.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        self.hashed.fetch_add(1, Ordering::Relaxed);
        let matches = verify(password, hash).await;
        if let Some((account, tag)) = tag.filter(|_| matches) {
            let mut entries = self.entries.lock().expect("verified passwords lock");
            if entries.len() >= MAX_REMEMBERED && !entries.contains_key(&account) {
                entries.retain(|_, (_, verified)| verified.elapsed() < self.ttl);
            }
            if entries.len() < MAX_REMEMBERED || entries.contains_key(&account) {
                entries.insert(account, (tag, Instant::now()));
            }
        }
        matches
    }

    /// Password checks so far: (argon2 verifications, answered from memory).
    pub fn counts(&self) -> (u64, u64) {
        (self.hashed.load(Ordering::Relaxed), self.remembered.load(Ordering::Relaxed))
    }
}

/// Returns whether `password` matches the PHC `hash`; `None` (no such account) costs the
/// same time and never matches. Malformed hashes never match.
pub async fn verify(password: String, hash: Option<String>) -> bool {
    let Ok(_slot) = HASHING_SLOTS.acquire().await else { return false };
    tokio::task::spawn_blocking(move || {
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        let matches = PasswordHash::new(&hash).is_ok_and(|parsed| verify_with_pooled_memory(&password, &parsed));
        exists && matches
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let hash = hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify("correct horse".into(), Some(hash.clone())).await);
        assert!(!verify("wrong horse".into(), Some(hash)).await);
        assert!(!verify("x".into(), Some("not a hash".into())).await);
        assert!(!verify("x".into(), None).await);
        // Hashes with other parameters (older accounts, other tools) verify too.
        let salt = SaltString::generate(&mut OsRng);
        let params = Params::new(8 * 1024, 3, 1, None).unwrap();
        let other =
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params).hash_password(b"pw1234567", &salt).unwrap();
        assert!(verify("pw1234567".into(), Some(other.to_string())).await);
        assert!(!verify("pw1234568".into(), Some(other.to_string())).await);
        assert!(check_policy("short").is_err());
    }

    #[tokio::test]
    async fn a_verified_password_is_remembered_for_its_hash_only() {
        let hash = hash("correct horse".into()).await.unwrap();
        let verified = VerifiedPasswords::new(Duration::from_secs(600));
        assert!(verified.verify(Some(1), "correct horse".into(), Some(hash.clone())).await);
        assert!(verified.verify(Some(1), "correct horse".into(), Some(hash.clone())).await);
        assert_eq!(verified.counts(), (1, 1), "the second check came from memory");
        // A wrong password is checked (and fails) every time; so is an unknown account.
        assert!(!verified.verify(Some(1), "wrong horse".into(), Some(hash.clone())).await);
        assert!(!verified.verify(Some(1), "wrong horse".into(), Some(hash.clone())).await);
        assert!(!verified.verify(None, "correct horse".into(), None).await);
        assert_eq!(verified.counts(), (4, 1));
        // Another account with the same hash string is checked on its own.
        assert!(verified.verify(Some(2), "correct horse".into(), Some(hash.clone())).await);
        assert_eq!(verified.counts(), (5, 1));
        // A new password (a new hash) is checked again; the old one no longer matches it.
        let changed = super::hash("new horse 123".into()).await.unwrap();
        assert!(!verified.verify(Some(1), "correct horse".into(), Some(changed.clone())).await);
        assert!(verified.verify(Some(1), "new horse 123".into(), Some(changed.clone())).await);
        assert!(verified.verify(Some(1), "new horse 123".into(), Some(changed)).await);
        assert_eq!(verified.counts(), (7, 2));
        // With no time to remember, every check hashes.
        let never = VerifiedPasswords::new(Duration::ZERO);
        assert!(never.verify(Some(1), "correct horse".into(), Some(hash.clone())).await);
        assert!(never.verify(Some(1), "correct horse".into(), Some(hash)).await);
        assert_eq!(never.counts(), (2, 0));
    }
}
