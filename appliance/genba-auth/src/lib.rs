//! Who may connect: argon2id password hashes and random API keys with their SHA-256 digests
//! (`passwords`), and the checking of user names and passwords with a cache of what verified
//! (`credentials`). Shared by the broker (MQTT CONNECT), the bridge (HTTP Basic, the console's
//! log-in) and the CLI that makes the hashes and keys.

pub mod credentials;
pub mod passwords;
