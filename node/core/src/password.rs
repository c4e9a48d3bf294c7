//! Password hashing with argon2id (PHC strings), off the async executor.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};

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

/// A hash of a random secret, verified against when the account does not exist so the
/// response time does not reveal which addresses exist.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let secret: [u8; 16] = rand::random();
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(&secret, &salt).map(|hash| hash.to_string()).unwrap_or_default()
});

/// Returns whether `password` matches the PHC `hash`; `None` (no such account) costs the
/// same time and never matches. Malformed hashes never match.
pub async fn verify(password: String, hash: Option<String>) -> bool {
    let Ok(_slot) = HASHING_SLOTS.acquire().await else { return false };
    tokio::task::spawn_blocking(move || {
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        let matches = PasswordHash::new(&hash)
            .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok());
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
        assert!(check_policy("short").is_err());
    }
}
