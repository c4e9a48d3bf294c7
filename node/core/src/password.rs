//! Password hashing with argon2id (PHC strings), off the async executor.

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Block, Params, Version};

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
}
