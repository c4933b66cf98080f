//! The store's view of a static account: where its rotation stands, with
//! every secret sealed (the store never holds a plaintext).

use chrono::{DateTime, Utc};
use rand::Rng;

/// A username and its password, sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCredential {
    pub username: String,
    pub sealed: Vec<u8>,
}

/// How far a rotation under way has come; each is persisted before the
/// next backend step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationPhase {
    /// The new secret exists (sealed, in the store) but is not set in the
    /// backend yet.
    Created,
    /// The backend has it.
    Set,
    /// A login with it worked; promotion is all that is left.
    Tested,
}

impl RotationPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Set => "set",
            Self::Tested => "tested",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "created" => Some(Self::Created),
            "set" => Some(Self::Set),
            "tested" => Some(Self::Tested),
            _ => None,
        }
    }
}

/// A rotation under way (AWS Secrets Manager's `AWSPENDING`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRotation {
    pub version: u64,
    pub credential: SealedCredential,
    pub phase: RotationPhase,
    /// Why an operator asked for it; none for a scheduled one.
    pub reason: Option<String>,
    /// How long the credential it replaces keeps working.
    pub overlap_ms: u64,
}

/// One static account's rotation state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRecord {
    pub name: String,
    /// The version of `current`; 0 before the first rotation.
    pub version: u64,
    /// The credential consumers are handed (`AWSCURRENT`).
    pub current: Option<SealedCredential>,
    pub rotated_at: Option<DateTime<Utc>>,
    /// The credential `current` replaced (`AWSPREVIOUS`), working until
    /// `previous_valid_until`, then retired.
    pub previous_username: Option<String>,
    pub previous_valid_until: Option<DateTime<Utc>>,
    /// Retiring the previous credential also ends its sessions.
    pub previous_end_sessions: bool,
    pub pending: Option<PendingRotation>,
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// Failed attempts since the last success, and the latest error.
    pub failures: u32,
    pub last_error: Option<String>,
}

impl StaticRecord {
    /// Where the account stands, as a `rotated` event tells watchers.
    pub fn rotation(&self) -> lessor_client::Rotation {
        lessor_client::Rotation {
            account: self.name.clone(),
            version: self.version,
            username: self.current.as_ref().map(|c| c.username.clone()).unwrap_or_default(),
            rotated_at: self.rotated_at,
            previous_username: self.previous_username.clone(),
            previous_valid_until: self.previous_valid_until,
            next_rotation_at: self.next_rotation_at,
        }
    }

    /// An account lessor has never rotated.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            version: 0,
            current: None,
            rotated_at: None,
            previous_username: None,
            previous_valid_until: None,
            previous_end_sessions: false,
            pending: None,
            next_rotation_at: None,
            failures: 0,
            last_error: None,
        }
    }
}

/// A claim on a static account's rotation (or on another job one node runs
/// at a time, such as `tidy:<connection>`), as the store granted it.
///
/// The token is new with every claim granted. Every write made under the
/// claim applies only while the account's row still carries it: once the
/// claim lapsed and another node (or another run) took it, the old holder's
/// writes are refused with [`StoreError::ClaimLost`](super::StoreError::ClaimLost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticClaim {
    pub name: String,
    pub holder: String,
    pub token: i64,
}

impl StaticClaim {
    /// A claim `holder` asks for, with a fresh random token (positive, so
    /// it reads the same from either store).
    pub(super) fn new(name: &str, holder: &str) -> Self {
        let token = rand::rng().random_range(1..i64::MAX);
        Self { name: name.to_string(), holder: holder.to_string(), token }
    }
}
