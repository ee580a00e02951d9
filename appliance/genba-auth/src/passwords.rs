//! Password and API-key hashing: argon2id PHC strings for passwords, SHA-256 for random API keys.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};

/// Hashes a password into an argon2id PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks `password` against a PHC string; a malformed hash never verifies.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Whether `phc` is a hash `verify_password` can use.
pub fn check_hash(phc: &str) -> Result<(), String> {
    PasswordHash::new(phc)
        .map(|_| ())
        .map_err(|e| format!("not an argon2 PHC string ({e}); make one with `genba passwd`"))
}

/// SHA-256 of an API key, lower-case hex.
pub fn api_key_digest(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random API key (32 bytes, URL-safe base64).
pub fn generate_api_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip_and_wrong_password() {
        let h = hash_password("s3cret").unwrap();
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("s3cret!", &h));
        assert!(!verify_password("s3cret", "not-a-hash"));
    }

    #[test]
    fn api_key_digest_is_sha256_hex() {
        assert_eq!(
            api_key_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(generate_api_key(), generate_api_key());
    }
}
