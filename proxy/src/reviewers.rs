//! Reviewer identities and roles: the people who read the decision log, approve held requests and operate
//! tollgate, each authenticated by a token of their own.
//!
//! Owns: the roles and their order (viewer < approver < operator < admin: each role may do everything the one
//! below it may), reviewer tokens (`tgr_` + 40 base62 characters, shown once, stored as SHA-256 only — the
//! `tgr_` prefix keeps them apart from agent keys, `tg_`, so neither is ever taken for the other), creating,
//! rotating and authenticating reviewers, the bootstrap admin (`TOLLGATE_ADMIN_TOKEN`), and the separation of
//! duties rule (who may not approve what).
//! Must not: know HTTP (the admin API maps its answers to statuses) or decide policy.
//!
//! There is no cache: every authenticated admin call reads the reviewer's row (one indexed lookup by token
//! hash), so a revocation or rotation is honoured by every replica on the next call. Admin traffic is a few
//! calls a minute; the proxy path never comes here.

use std::fmt;

use chrono::Utc;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::store::{ReviewerRow, Store, StoreError};

pub const TOKEN_PREFIX: &str = "tgr_";
/// 40 base62 characters: about 238 bits of randomness, as agent keys.
const TOKEN_RANDOM_CHARS: usize = 40;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The name `TOLLGATE_ADMIN_TOKEN` acts under (it names no person). Reserved: no reviewer may take it.
pub const BOOTSTRAP_ADMIN: &str = "bootstrap-admin";
/// What the local CLI (direct store access, no token) records as the actor: `local:<who>`.
pub const LOCAL_PREFIX: &str = "local:";

/// What a reviewer may do. Ordered: a role may do everything a lower one may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: decisions, approvals, spend, agents, reviewers, policy status.
    Viewer,
    /// + approve and deny held requests.
    Approver,
    /// + freeze/unfreeze, policy reload, revoke agents, settle flagged reservations.
    Operator,
    /// + create agents, create/revoke/rotate reviewers.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Approver, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether this role may do what `required` guards.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is making an admin call, authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewer {
    /// `None` for the bootstrap admin and the local CLI.
    pub id: Option<Uuid>,
    /// What is recorded as the actor (`admin_actions.actor`, `approvals.decided_by`, `agents.created_by`).
    pub name: String,
    pub email: Option<String>,
    pub role: Role,
}

impl Reviewer {
    /// `TOLLGATE_ADMIN_TOKEN`: an admin named [`BOOTSTRAP_ADMIN`], for creating the first reviewers.
    pub fn bootstrap() -> Reviewer {
        Reviewer {
            id: None,
            name: BOOTSTRAP_ADMIN.to_string(),
            email: None,
            role: Role::Admin,
        }
    }

    /// The operator at the local CLI (who can write the store directly anyway), recorded as `local:<who>`.
    pub fn local(who: &str) -> Reviewer {
        Reviewer {
            id: None,
            name: format!("{LOCAL_PREFIX}{who}"),
            email: None,
            role: Role::Admin,
        }
    }

    /// Whether `person` (a `Tollgate-On-Behalf-Of` value or an agent's creator) is this reviewer: their name or
    /// email, compared trimmed and case-insensitively (emails are case-insensitive in practice, and a near
    /// miss must not slip past the rule).
    pub fn is(&self, person: &str) -> bool {
        let person = person.trim();
        !person.is_empty()
            && (person.eq_ignore_ascii_case(&self.name)
                || self
                    .email
                    .as_deref()
                    .is_some_and(|e| person.eq_ignore_ascii_case(e.trim())))
    }
}

/// Why a reviewer may not approve a request (separation of duties). Stable codes for the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfApproval {
    /// The request was made on the reviewer's own behalf (`Tollgate-On-Behalf-Of`).
    OnBehalfOfSelf,
    /// The request was made by an agent the reviewer created.
    OwnAgent,
}

impl SelfApproval {
    pub fn code(self) -> &'static str {
        match self {
            SelfApproval::OnBehalfOfSelf => "self_approval",
            SelfApproval::OwnAgent => "own_agent_approval",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            SelfApproval::OnBehalfOfSelf => {
                "separation of duties: this request was made on your behalf; another reviewer must approve it"
            }
            SelfApproval::OwnAgent => {
                "separation of duties: this request was made by an agent you created; another reviewer must approve it"
            }
        }
    }
}

/// The separation of duties rule for approving: `None` when `reviewer` may approve a request made on behalf of
/// `on_behalf_of` by an agent created by `agent_created_by`. An agent created at the local CLI
/// (`local:<user>`) counts as created by the reviewer named `<user>`: the name is unauthenticated there, but
/// reading it so can only refuse more, never less.
pub fn may_not_approve(
    reviewer: &Reviewer,
    on_behalf_of: Option<&str>,
    agent_created_by: Option<&str>,
) -> Option<SelfApproval> {
    if on_behalf_of.is_some_and(|p| reviewer.is(p)) {
        return Some(SelfApproval::OnBehalfOfSelf);
    }
    if agent_created_by.is_some_and(|c| reviewer.is(c.strip_prefix(LOCAL_PREFIX).unwrap_or(c))) {
        return Some(SelfApproval::OwnAgent);
    }
    None
}

/// A freshly generated reviewer token. Shown once, then only its hash exists.
pub struct ReviewerToken(SecretString);

impl ReviewerToken {
    pub fn generate() -> ReviewerToken {
        let mut rng = rand::rng();
        let mut token = String::with_capacity(TOKEN_PREFIX.len() + TOKEN_RANDOM_CHARS);
        token.push_str(TOKEN_PREFIX);
        for _ in 0..TOKEN_RANDOM_CHARS {
            token.push(BASE62[rng.random_range(0..BASE62.len())] as char);
        }
        ReviewerToken(SecretString::from(token))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn hash(&self) -> String {
        crate::identity::hash_key(self.expose())
    }

    /// The first characters, enough to tell tokens apart in a listing.
    pub fn display_prefix(&self) -> String {
        self.expose().chars().take(TOKEN_PREFIX.len() + 6).collect()
    }
}

/// Whether a presented string has the shape of a reviewer token (checked before any store lookup).
pub fn looks_like_token(presented: &str) -> bool {
    presented.len() == TOKEN_PREFIX.len() + TOKEN_RANDOM_CHARS
        && presented.starts_with(TOKEN_PREFIX)
        && presented[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewerError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A reviewer name: 1-64 characters of letters, digits, `-`, `_`, `.`, `@`, `+` (an email works), not the
/// bootstrap admin's and without `:` (so it never looks like `local:<who>`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != BOOTSTRAP_ADMIN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(&b))
}

/// Validates and stores a new reviewer; returns its row and the token, which is never stored.
pub async fn create(
    store: &Store,
    name: &str,
    role: Role,
    email: Option<&str>,
    created_by: &str,
) -> Result<(ReviewerRow, ReviewerToken), ReviewerError> {
    if !valid_name(name) {
        return Err(ReviewerError::Invalid(format!(
            "name must be 1-64 characters of letters, digits, '-', '_', '.', '@' or '+', and not '{BOOTSTRAP_ADMIN}'"
        )));
    }
    if let Some(e) = email
        && (e.len() > 254 || !e.contains('@') || e.contains(char::is_whitespace))
    {
        return Err(ReviewerError::Invalid(
            "email must be an address like alice@example.com".into(),
        ));
    }
    let token = ReviewerToken::generate();
    let row = ReviewerRow {
        id: Uuid::now_v7(),
        name: name.to_string(),
        email: email.map(str::to_string),
        role: role.as_str().to_string(),
        token_hash: token.hash(),
        token_prefix: token.display_prefix(),
        created_at: Utc::now(),
        created_by: created_by.to_string(),
        revoked_at: None,
        rotated_at: None,
        last_used: None,
    };
    store.insert_reviewer(&row).await?;
    Ok((row, token))
}

/// Gives an active reviewer a new token; the old one stops working at once. `None`: no such active reviewer.
pub async fn rotate(store: &Store, name: &str) -> Result<Option<ReviewerToken>, StoreError> {
    let token = ReviewerToken::generate();
    let done = store
        .rotate_reviewer(name, &token.hash(), &token.display_prefix())
        .await?;
    Ok(done.then_some(token))
}

/// The outcome of presenting a bearer token to the admin API.
#[derive(Debug)]
pub enum Authenticated {
    Reviewer(Reviewer),
    /// Missing, malformed, unknown, rotated-away or revoked.
    Unknown,
}

/// The reviewer behind a presented bearer token: a reviewer token (looked up by hash in the store, never
/// cached, refused once revoked or rotated), or the bootstrap token (compared in constant time).
pub async fn authenticate(
    store: &Store,
    bootstrap: Option<&SecretString>,
    presented: &str,
) -> Result<Authenticated, StoreError> {
    let row = if looks_like_token(presented) {
        store
            .reviewer_by_token_hash(&crate::identity::hash_key(presented))
            .await?
    } else {
        None
    };
    // A token of reviewer shape that no reviewer has may still be the bootstrap token (an operator may have
    // minted it in that shape), so it falls through to that comparison.
    if let Some(row) = row {
        let Some(role) = Role::parse(&row.role) else {
            return Ok(Authenticated::Unknown);
        };
        if row.revoked_at.is_some() {
            return Ok(Authenticated::Unknown);
        }
        if let Err(e) = store.touch_reviewer(row.id).await {
            tracing::warn!(error = %e, reviewer = %row.name, "reviewer last_used not recorded");
        }
        return Ok(Authenticated::Reviewer(Reviewer {
            id: Some(row.id),
            name: row.name,
            email: row.email,
            role,
        }));
    }
    match bootstrap {
        Some(token) if constant_time_eq(token.expose_secret().as_bytes(), presented.as_bytes()) => {
            Ok(Authenticated::Reviewer(Reviewer::bootstrap()))
        }
        _ => Ok(Authenticated::Unknown),
    }
}

/// The active reviewer whose email an authenticating reverse proxy vouches for (single sign-on). The caller
/// has checked that the request came from a trusted proxy address.
pub async fn authenticate_email(store: &Store, email: &str) -> Result<Authenticated, StoreError> {
    let email = email.trim();
    if email.is_empty() || !email.contains('@') {
        return Ok(Authenticated::Unknown);
    }
    let Some(row) = store.reviewer_by_email(email).await? else {
        return Ok(Authenticated::Unknown);
    };
    let Some(role) = Role::parse(&row.role) else {
        return Ok(Authenticated::Unknown);
    };
    if let Err(e) = store.touch_reviewer(row.id).await {
        tracing::warn!(error = %e, reviewer = %row.name, "reviewer last_used not recorded");
    }
    Ok(Authenticated::Reviewer(Reviewer {
        id: Some(row.id),
        name: row.name,
        email: row.email,
        role,
    }))
}

/// Compares without an early exit on the first differing byte (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Viewer < Role::Approver);
        assert!(Role::Approver < Role::Operator);
        assert!(Role::Operator < Role::Admin);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert!(r.allows(Role::Viewer));
            assert!(r.allows(r));
        }
        assert!(!Role::Viewer.allows(Role::Approver));
        assert!(!Role::Approver.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Admin));
        assert!(Role::Admin.allows(Role::Operator));
        assert_eq!(Role::parse("Admin"), None);
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn tokens_have_their_own_shape_and_are_never_agent_keys() {
        let a = ReviewerToken::generate();
        let b = ReviewerToken::generate();
        assert!(looks_like_token(a.expose()));
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.hash().len(), 64);
        assert_eq!(a.hash(), crate::identity::hash_key(a.expose()));
        assert_eq!(a.display_prefix().len(), 10);
        assert!(a.display_prefix().starts_with("tgr_"));
        // An agent key is not a reviewer token, nor the other way round.
        let agent = crate::identity::AgentKey::generate();
        assert!(!looks_like_token(agent.expose()));
        assert!(!agent.expose().starts_with(TOKEN_PREFIX));
        assert!(!looks_like_token("tgr_short"));
        assert!(!looks_like_token(&format!("tgr_{}!", "a".repeat(39))));
    }

    #[test]
    fn names() {
        assert!(valid_name("alice"));
        assert!(valid_name("alice@example.com"));
        assert!(!valid_name(BOOTSTRAP_ADMIN));
        assert!(!valid_name("local:alice"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(65)));
    }

    #[test]
    fn separation_of_duties() {
        let alice = Reviewer {
            id: None,
            name: "alice".into(),
            email: Some("Alice@Example.com".into()),
            role: Role::Approver,
        };
        assert_eq!(may_not_approve(&alice, None, None), None);
        assert_eq!(
            may_not_approve(&alice, Some("bob@example.com"), Some("bob")),
            None
        );
        assert_eq!(
            may_not_approve(&alice, Some(" alice@example.com "), None),
            Some(SelfApproval::OnBehalfOfSelf)
        );
        assert_eq!(
            may_not_approve(&alice, Some("ALICE"), None),
            Some(SelfApproval::OnBehalfOfSelf)
        );
        assert_eq!(
            may_not_approve(&alice, None, Some("alice")),
            Some(SelfApproval::OwnAgent)
        );
        assert_eq!(
            may_not_approve(&alice, None, Some("local:alice")),
            Some(SelfApproval::OwnAgent)
        );
        assert_eq!(may_not_approve(&alice, None, Some("local:bob")), None);
        assert_eq!(may_not_approve(&alice, Some(""), Some("")), None);
        assert_eq!(Reviewer::local("ops").name, "local:ops");
        assert_eq!(Reviewer::bootstrap().role, Role::Admin);
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
