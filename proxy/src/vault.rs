//! The vault: secrets of the API tokens agents mint through tollgate, kept behind the gate.
//!
//! Owns: the vault keys (`[vault]`: base64 of 32 bytes each, read from environment variables; the first key
//! seals, every key opens, so a key is rotated by putting a new one first), sealing and opening a minted
//! token's secret with AES-256-GCM (`ring::aead`, a random 96-bit nonce per secret, associated data binding the
//! ciphertext to its provider and token id so a row's ciphertext cannot be swapped into another's), reading
//! the minted token out of a provider's token response ([`MintedResponse`]) and putting a handle where its
//! secret was, and which agents keep custody of the secrets they mint ([`Custody`]).
//! Must not: log, return or store a secret in the clear. A [`MintedSecret`] only leaves this module as the
//! `Authorization` header value `forward` sends upstream; errors never carry key or secret material.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::HeaderValue;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::config::VaultConfig;

/// What a key check seals (see [`Vault::key_checks`]), under this provider name no real provider has.
const KEY_CHECK_TEXT: &str = "tollgate vault key check v1";
const KEY_CHECK_PROVIDER: &str = "tollgate-vault-key-check";

/// The most of a token response read to find the minted token: Cloudflare's are about a kilobyte.
pub const TOKEN_RESPONSE_LIMIT: usize = 256 * 1024;

/// The catalog actions whose answers mint, roll or delete a provider token.
pub const TOKEN_CREATE: &str = "cloudflare.token.create";
pub const TOKEN_ROLL: &str = "cloudflare.token.roll";
pub const TOKEN_UPDATE: &str = "cloudflare.token.update";
pub const TOKEN_DELETE: &str = "cloudflare.token.delete";

/// What a token action does to the token it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEvent {
    Created,
    Rolled,
    /// Rewritten (name, policies, expiry, status): the row follows, and the handle's expiry with it.
    Updated,
    Deleted,
}

/// Who holds a minted token's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Custody {
    /// tollgate: the agent got a handle.
    Vault,
    /// The agent: it got the secret (`vault.pass_through_labels`, or vault mode off).
    PassThrough,
}

/// A minted token's secret sealed under a vault key.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// An opened secret: usable only as the credential header of a forwarded request.
pub struct MintedSecret(SecretString);

impl MintedSecret {
    /// `Bearer <secret>`, marked sensitive (never logged by hyper); `None` when the secret cannot be a header.
    pub fn bearer(&self) -> Option<HeaderValue> {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", self.0.expose_secret())).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("vault key '{0}' is not configured")]
    UnknownKey(String),
    #[error("the sealed secret does not open (wrong key, wrong token or tampered)")]
    Unsealable,
    #[error("the system random source failed")]
    Random,
}

/// One vault key.
struct VaultKey {
    id: String,
    key: LessSafeKey,
}

/// The vault keys of this deployment and the custody rule.
pub struct Vault {
    enabled: bool,
    /// The first seals; all open.
    keys: Vec<VaultKey>,
    pass_through_labels: Vec<(String, String)>,
    /// `[vault] screen_trips`: see [`held::TRIPS_ALLOWED`].
    pub screen_trips: usize,
    random: SystemRandom,
}

/// What a token action's 2xx answer said about the token.
#[derive(Debug)]
pub struct MintedResponse {
    /// The parsed answer, to be re-serialized with the handle in place of the secret.
    body: Value,
    pub token_id: Option<String>,
    pub name: Option<String>,
    pub expires_on: Option<DateTime<Utc>>,
    /// The secret, if this answer carried one (create, roll).
    secret: Option<SecretString>,
}

impl Vault {
    /// Builds the vault from checked config. Errors name the variable and what is wrong with it, never its
    /// value.
    pub fn from_config(config: &VaultConfig) -> Result<Vault, Vec<String>> {
        let mut errors = Vec::new();
        let mut keys = Vec::new();
        if config.enabled {
            for k in &config.keys {
                match &k.secret {
                    None => errors.push(format!(
                        "vault: environment variable {} (vault key '{}') is not set; vault mode needs it \
                         (base64 of 32 random bytes, e.g. `openssl rand -base64 32`), or set [vault] enabled = false",
                        k.env, k.id
                    )),
                    Some(secret) => match key_from_base64(secret.expose_secret()) {
                        Ok(key) => keys.push(VaultKey {
                            id: k.id.clone(),
                            key,
                        }),
                        Err(problem) => errors.push(format!(
                            "vault: environment variable {} (vault key '{}') {problem}",
                            k.env, k.id
                        )),
                    },
                }
            }
            if config.keys.is_empty() {
                errors.push("vault: vault mode is on but [vault] names no key".to_string());
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Vault {
            enabled: config.enabled,
            keys,
            pass_through_labels: config.pass_through_labels.clone(),
            screen_trips: config.screen_trips,
            random: SystemRandom::new(),
        })
    }

    /// A vault from raw keys (id, 32 bytes), first sealing; for tests and tools.
    pub fn with_keys(keys: &[(&str, [u8; 32])]) -> Vault {
        Vault {
            enabled: true,
            keys: keys
                .iter()
                .filter_map(|(id, bytes)| {
                    UnboundKey::new(&AES_256_GCM, bytes).ok().map(|k| VaultKey {
                        id: id.to_string(),
                        key: LessSafeKey::new(k),
                    })
                })
                .collect(),
            pass_through_labels: Vec::new(),
            screen_trips: held::TRIPS_ALLOWED,
            random: SystemRandom::new(),
        }
    }

    /// Who keeps the secret of a token this agent mints: the agent, when vault mode is off or one of its
    /// labels is listed in `vault.pass_through_labels` (a reviewer's config, not the agent's choice).
    pub fn custody_for(&self, labels: &BTreeMap<String, String>) -> Custody {
        if !self.enabled
            || self
                .pass_through_labels
                .iter()
                .any(|(k, v)| labels.get(k) == Some(v))
        {
            Custody::PassThrough
        } else {
            Custody::Vault
        }
    }

    /// Seals a secret for the token (provider, token id) under the first key.
    pub fn seal(
        &self,
        provider: &str,
        token_id: &str,
        secret: &SecretString,
    ) -> Result<SealedSecret, VaultError> {
        let key = self
            .keys
            .first()
            .ok_or_else(|| VaultError::UnknownKey(String::new()))?;
        self.seal_with(key, provider, token_id, secret)
    }

    /// One key check per configured key: a known text sealed under that key, which the store keeps once per
    /// key id. A replica started with a different key under the same id cannot open the stored check, and
    /// [`Vault::verify_key_check`] says so before it seals or opens anything.
    pub fn key_checks(&self) -> Result<Vec<SealedSecret>, VaultError> {
        let text = SecretString::from(KEY_CHECK_TEXT);
        self.keys
            .iter()
            .map(|k| self.seal_with(k, KEY_CHECK_PROVIDER, &k.id, &text))
            .collect()
    }

    /// Whether the stored key check of `sealed.key_id` opens with this vault's key of that id.
    pub fn verify_key_check(&self, sealed: &SealedSecret) -> Result<(), VaultError> {
        let opened = self.open(KEY_CHECK_PROVIDER, &sealed.key_id, sealed)?;
        if opened.0.expose_secret() == KEY_CHECK_TEXT {
            Ok(())
        } else {
            Err(VaultError::Unsealable)
        }
    }

    fn seal_with(
        &self,
        key: &VaultKey,
        provider: &str,
        token_id: &str,
        secret: &SecretString,
    ) -> Result<SealedSecret, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| VaultError::Random)?;
        let mut in_out = secret.expose_secret().as_bytes().to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(provider, token_id)),
                &mut in_out,
            )
            .map_err(|_| VaultError::Unsealable)?;
        Ok(SealedSecret {
            key_id: key.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext: in_out,
        })
    }

    /// Opens a sealed secret of the token (provider, token id) with the key it names.
    pub fn open(
        &self,
        provider: &str,
        token_id: &str,
        sealed: &SealedSecret,
    ) -> Result<MintedSecret, VaultError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| VaultError::UnknownKey(sealed.key_id.clone()))?;
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed.nonce).map_err(|_| VaultError::Unsealable)?;
        let mut in_out = sealed.ciphertext.clone();
        let plain = key
            .key
            .open_in_place(
                nonce,
                Aad::from(associated_data(provider, token_id)),
                &mut in_out,
            )
            .map_err(|_| VaultError::Unsealable)?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| VaultError::Unsealable)?;
        Ok(MintedSecret(SecretString::from(text)))
    }
}

/// Binds a ciphertext to its row: a ciphertext copied to another token's row does not open.
fn associated_data(provider: &str, token_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + provider.len() + token_id.len());
    aad.extend_from_slice(b"tollgate minted token v1\0");
    aad.extend_from_slice(provider.as_bytes());
    aad.push(0);
    aad.extend_from_slice(token_id.as_bytes());
    aad
}

/// A vault key from its base64 text, or what is wrong with it. A key that is not random (all zeros, a
/// repeated pattern: fewer than 12 distinct byte values, which 32 random bytes practically never have) is
/// refused, since such a key is guessable.
fn key_from_base64(text: &str) -> Result<LessSafeKey, &'static str> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "is not base64 of exactly 32 bytes")?;
    if bytes.len() != 32 {
        return Err("is not base64 of exactly 32 bytes");
    }
    let distinct = bytes
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if distinct < 12 {
        return Err(
            "is not 32 random bytes (too few distinct byte values: all zeros or a pattern); generate one with `openssl rand -base64 32`",
        );
    }
    UnboundKey::new(&AES_256_GCM, &bytes)
        .map(LessSafeKey::new)
        .map_err(|_| "is not a usable AES-256 key")
}

impl TokenEvent {
    /// The token event a catalog action's 2xx answer is, if any.
    pub fn of_action(action: &str) -> Option<TokenEvent> {
        match action {
            TOKEN_CREATE => Some(TokenEvent::Created),
            TOKEN_ROLL => Some(TokenEvent::Rolled),
            TOKEN_UPDATE => Some(TokenEvent::Updated),
            TOKEN_DELETE => Some(TokenEvent::Deleted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenEvent::Created => "created",
            TokenEvent::Rolled => "rolled",
            TokenEvent::Updated => "updated",
            TokenEvent::Deleted => "deleted",
        }
    }
}

impl MintedResponse {
    /// Reads a token action's 2xx answer (Cloudflare's envelope): create → `result.id`, `result.name`,
    /// `result.expires_on` and the secret `result.value`; roll → the secret as `result` (a string); delete →
    /// nothing needed. `None` when the body is not the JSON envelope expected.
    pub fn parse(event: TokenEvent, body: &[u8]) -> Option<MintedResponse> {
        let body: Value = serde_json::from_slice(body).ok()?;
        let result = body.get("result")?;
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let (token_id, name, expires_on, secret) = match event {
            // A `result` object without `value` carries no secret (nothing to keep); anything but an object
            // is not an answer tollgate knows.
            // A secret that cannot be a credential (empty, short, with spaces) is no secret where
            // expected: the answer is withheld, as one without `value` is.
            TokenEvent::Created => (
                text(result.as_object()?.get("id")),
                text(result.get("name")),
                text(result.get("expires_on")).and_then(|t| parse_time(&t)),
                text(result.get("value")).filter(|v| plausible_secret(v)),
            ),
            TokenEvent::Rolled => (
                None,
                None,
                None,
                Some(result.as_str()?.to_string()).filter(|v| plausible_secret(v)),
            ),
            // An update's answer carries no secret; one that does is withheld like any other leak.
            TokenEvent::Updated => (
                text(result.get("id")),
                text(result.get("name")),
                text(result.get("expires_on")).and_then(|t| parse_time(&t)),
                text(result.get("value")),
            ),
            TokenEvent::Deleted => (text(result.get("id")), None, None, None),
        };
        // A token id names a row and a handle: Cloudflare's are 32 hex characters; anything empty or odd is
        // not an answer tollgate knows (an empty id would make a handle no delete could end).
        let token_id = token_id.filter(|id| {
            !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        Some(MintedResponse {
            token_id,
            name,
            expires_on,
            secret: secret.map(SecretString::from),
            body,
        })
    }

    pub fn secret(&self) -> Option<&SecretString> {
        self.secret.as_ref()
    }

    /// The answer with `handle` where the secret was, twice: as the provider wrote it (every field, for
    /// the checks that nothing else in it carries a secret), and as the agent gets it — Cloudflare's envelope
    /// rebuilt with the token's own fields only ([`TOKEN_FIELDS`]; `errors` and `messages` empty), so a
    /// field Cloudflare does not send, or a note in `messages`, is no way out for a second secret beside a
    /// decoy `value`.
    pub fn with_handle(mut self, event: TokenEvent, handle: &str) -> (Bytes, Bytes) {
        match event {
            TokenEvent::Created => {
                if let Some(result) = self.body.get_mut("result").and_then(Value::as_object_mut) {
                    result.insert("value".into(), Value::from(handle));
                }
            }
            TokenEvent::Rolled => {
                if let Some(result) = self.body.get_mut("result") {
                    *result = Value::from(handle);
                }
            }
            TokenEvent::Updated | TokenEvent::Deleted => {}
        }
        let whole = Bytes::from(serde_json::to_vec(&self.body).unwrap_or_default());
        let result = match event {
            TokenEvent::Created => Value::Object(
                self.body
                    .get("result")
                    .and_then(Value::as_object)
                    .map(|r| {
                        r.iter()
                            .filter(|(k, _)| TOKEN_FIELDS.contains(&k.as_str()))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            TokenEvent::Rolled => Value::from(handle),
            TokenEvent::Updated | TokenEvent::Deleted => return (whole.clone(), whole),
        };
        let rebuilt = json!({"success": true, "errors": [], "messages": [], "result": result});
        (
            whole,
            Bytes::from(serde_json::to_vec(&rebuilt).unwrap_or_default()),
        )
    }
}

/// The fields of a Cloudflare API token object, the only ones a create's answer keeps in vault mode.
pub const TOKEN_FIELDS: &[&str] = &[
    "id",
    "name",
    "status",
    "issued_on",
    "modified_on",
    "last_used_on",
    "not_before",
    "expires_on",
    "policies",
    "condition",
    "value",
];

/// Whether a provider header may reach the agent with a token create or roll's answer in vault mode:
/// Cloudflare's request id (`cf-ray`, 16 hex digits and a data centre code) and nothing else — any other
/// header could carry a second secret beside a decoy `value`, which tollgate cannot look for.
pub fn token_answer_header(name: &http::HeaderName, value: &HeaderValue) -> bool {
    let Some((ray, colo)) = value.to_str().ok().and_then(|v| v.split_once('-')) else {
        return false;
    };
    name.as_str() == "cf-ray"
        && ray.len() == 16
        && ray.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && (3..=4).contains(&colo.len())
        && colo.bytes().all(|b| b.is_ascii_uppercase())
}

/// The shortest secret tollgate takes for a minted token's (Cloudflare's are 40 characters).
const SHORTEST_SECRET: usize = 20;

/// Whether `value` can be a minted token's secret: [`SHORTEST_SECRET`] to 512 printable ASCII characters
/// without spaces. An empty or short decoy in `value` must not pass for the secret while the real one sits
/// in another field.
pub fn plausible_secret(value: &str) -> bool {
    (SHORTEST_SECRET..=512).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `text` holds something shaped like a credential: a run of at least `min_run` characters of
/// `A-Z a-z 0-9 _ -` with an upper-case letter, a lower-case letter and a digit in it, once every character
/// outside ASCII is read as the ASCII one it spells or is drawn as, or else taken out (tag characters,
/// look-alikes and invisible ones between its characters hide nothing: [`screen::ascii_reading`]). Ids
/// (hex, UUIDs), words and times are not shaped so; random base62 secrets nearly always are.
pub fn credential_like(text: &str, min_run: usize) -> bool {
    let ascii = if text.is_ascii() {
        std::borrow::Cow::Borrowed(text)
    } else {
        std::borrow::Cow::Owned(screen::ascii_reading(text))
    };
    let ascii = ascii.as_bytes();
    ascii
        .split(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-'))
        .any(|run| {
            run.len() >= min_run
                && run.iter().any(u8::is_ascii_uppercase)
                && run.iter().any(u8::is_ascii_lowercase)
                && run.iter().any(u8::is_ascii_digit)
        })
}

/// Every string in `value` (object keys too).
fn strings<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k);
                strings(v, out);
            }
        }
        _ => {}
    }
}

/// Whether a token answer about to reach the agent (`answer`, with the handle in the secret's place) holds,
/// outside the strings the agent sent itself (`request`) and the `handle`, a string shaped like a credential
/// (see [`credential_like`]): a second secret beside a decoy `value`, which tollgate cannot tell from the
/// real one. Not JSON counts as holding one.
pub fn stray_credential(answer: &[u8], request: &Value, handle: &str) -> bool {
    let Ok(answer) = serde_json::from_slice::<Value>(answer) else {
        return true;
    };
    let mut sent = Vec::new();
    strings(request, &mut sent);
    let mut found = Vec::new();
    strings(&answer, &mut found);
    found
        .into_iter()
        .filter(|s| *s != handle && !sent.contains(s))
        .any(|s| {
            credential_like(s, SHORTEST_SECRET) || credential_like(&compacted(s), SHORTEST_SECRET)
        })
}

/// `text`'s ASCII letters and digits alone: a secret written in groups (`Xq7Lm 2Pz9R …`, dots, dashes)
/// reads whole again.
fn compacted(text: &str) -> String {
    text.chars().filter(char::is_ascii_alphanumeric).collect()
}

/// How many characters of a refusal's messages may sit in words that prose does not write (see
/// [`odd_characters`]). Ordinary messages (`Invalid request body`, `policies[0].effect is required`,
/// `Token name must be unique`) have none or few; a secret with its digits written as punctuation
/// (`Ab!dEf^h…`), or split into pieces at each capital (`Ab d Ef h Ij…`), is mostly such words.
const MOST_ODD: usize = 8;

/// How many characters of `message` sit in odd words: a letter with a digit or a symbol inside one word
/// (`x7Q`, `Ab!d`), a capital after a small letter (`aBcD`), or a lone letter other than `a` and `I`. A
/// word's leading and trailing punctuation is not part of it.
fn odd_characters(message: &str) -> usize {
    let edge = |c: char| {
        matches!(
            c,
            '.' | ',' | ':' | ';' | '(' | ')' | '"' | '\'' | '[' | ']'
        )
    };
    let inner = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '\'' | '[' | ']')
    };
    message
        .split_whitespace()
        .map(|w| w.trim_matches(edge))
        .filter(|w| {
            let letters = w.chars().any(|c| c.is_ascii_alphabetic());
            let symbol_inside = letters && !w.chars().all(inner);
            // An index in brackets (`policies[0]`) is not a digit inside a word.
            let unindexed: String = w
                .split('[')
                .map(|p| p.split_once(']').map_or(p, |(_, rest)| rest))
                .collect();
            let letter_and_digit = letters && unindexed.chars().any(|c| c.is_ascii_digit());
            let camel = w
                .as_bytes()
                .windows(2)
                .any(|p| p[0].is_ascii_lowercase() && p[1].is_ascii_uppercase());
            let lone_letter = w.len() == 1 && letters && !matches!(*w, "a" | "A" | "I");
            // An id in lower-case hex, or a UUID (`c8fed203…`, a permission group's), is not a secret's
            // piece: Cloudflare's secrets mix cases.
            let id = w
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-');
            !id && (symbol_inside || letter_and_digit || camel || lone_letter)
        })
        .map(str::len)
        .sum()
}

/// The letters and digits of `message`'s short words (four letters and digits or fewer), run together: a
/// secret cut into short pieces with spaces between (`Xq 7 Lm 2 Pz…`, each piece plain) is one run again,
/// while prose's short words (`to`, `the`, `120`) run to nothing shaped like a credential.
fn short_words(message: &str) -> String {
    message
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
        })
        .filter(|w| w.len() <= 4)
        .collect()
}

/// The most errors, and the largest error code, a rebuilt refusal carries.
const MOST_ERRORS: usize = 4;
const LARGEST_CODE: u64 = 99_999;

/// A provider's refusal of a token create or roll, rebuilt for the agent in vault mode: Cloudflare's
/// envelope with `success: false`, each error's `code` and its `message` when it is plain (printable ASCII
/// with no escape syntax and nothing shaped like a credential, see [`credential_like`]), and nothing else —
/// no `result`, no other field. The token may have been made all the same, and tollgate does not know its
/// secret to look for it; what the agent needs from a refusal is its code. Returns the body and how many
/// messages were withheld.
pub fn refusal_for_agent(body: &[u8]) -> (Vec<u8>, usize) {
    const WITHHELD: &str =
        "tollgate withheld the provider's message: it may carry a token's secret (vault mode)";
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let mut withheld = 0;
    let mut plain = |m: Option<&str>| -> Option<String> {
        let m = m?;
        let ok = m.len() <= 1000
            && m.bytes().all(|b| (0x20..0x7f).contains(&b))
            && !m.contains(['\\', '%', '&'])
            && !credential_like(m, 12)
            && !credential_like(&short_words(m), SHORTEST_SECRET)
            && odd_characters(m) <= MOST_ODD;
        if ok {
            Some(m.to_string())
        } else {
            withheld += 1;
            Some(WITHHELD.to_string())
        }
    };
    let mut errors = Vec::new();
    for e in parsed
        .as_ref()
        .and_then(|b| b.get("errors"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(MOST_ERRORS)
    {
        let mut out = serde_json::Map::new();
        // Cloudflare's codes are small numbers; a large one could spell bytes of a secret.
        if let Some(code) = e
            .get("code")
            .and_then(Value::as_u64)
            .filter(|c| *c <= LARGEST_CODE)
        {
            out.insert("code".into(), Value::from(code));
        }
        if let Some(message) = plain(e.get("message").and_then(Value::as_str)) {
            out.insert("message".into(), Value::from(message));
        }
        errors.push(Value::Object(out));
    }
    // Judged together too: pieces of a secret, one per message, each too short to look like one, are a
    // secret again when read in order. Then no message is passed on, only the codes.
    let kept: String = errors
        .iter()
        .filter_map(|e| e.get("message").and_then(Value::as_str))
        .filter(|m| *m != WITHHELD)
        .map(short_words)
        .collect();
    let odd: usize = errors
        .iter()
        .filter_map(|e| e.get("message").and_then(Value::as_str))
        .filter(|m| *m != WITHHELD)
        .map(odd_characters)
        .sum();
    if credential_like(&kept, SHORTEST_SECRET) || odd > MOST_ODD {
        for e in &mut errors {
            if let Some(message) = e.get_mut("message")
                && message.as_str() != Some(WITHHELD)
            {
                *message = Value::from(WITHHELD);
                withheld += 1;
            }
        }
    }
    if errors.is_empty() {
        errors.push(json!({
            "code": 10000,
            "message": "the provider refused this token action; tollgate passes on only its error codes (vault mode)",
        }));
    }
    let rebuilt = json!({"success": false, "errors": errors, "messages": [], "result": null});
    (serde_json::to_vec(&rebuilt).unwrap_or_default(), withheld)
}

/// Whether a provider's answer says it succeeded: Cloudflare's envelope with `"success": true`. A 2xx whose
/// body says otherwise (or is not the envelope) did not delete anything as far as tollgate can tell.
pub fn cloudflare_succeeded(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .is_ok_and(|v| v.get("success") == Some(&Value::Bool(true)))
}

/// A token id as the provider compares it: Cloudflare's ids are hex, and a spelling in another case or with
/// hyphens (a UUID's) must not pass for another token. `None` for an id that is not plain (letters, digits,
/// `-`, `_`; at most 128).
pub fn token_key(token_id: &str) -> Option<String> {
    let plain = !token_id.is_empty()
        && token_id.len() <= 128
        && token_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plain.then(|| {
        token_id
            .chars()
            .filter(|c| *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    })
}

/// Whether `needle` occurs in `haystack` (a minted secret in an answer about to leave).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// An RFC 3339 time as Cloudflare writes `expires_on`.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// What a handle's agent stands for: the token it is a handle of and the agent that minted it.
#[derive(Clone)]
pub struct Minted {
    pub provider: String,
    pub token_id: String,
    /// The policies granted at creation (the create request's `policies`).
    pub policies: Value,
    pub minted_by: uuid::Uuid,
    pub minted_by_name: String,
    /// The minter's own key expiry: a handle stops with it.
    pub minter_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub sealed: SealedSecret,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("provider", &self.provider)
            .field("token_id", &self.token_id)
            .field("minted_by_name", &self.minted_by_name)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Minted {
    fn eq(&self, other: &Minted) -> bool {
        self.provider == other.provider
            && self.token_id == other.token_id
            && self.minted_by == other.minted_by
    }
}

impl Eq for Minted {}

pub mod held;
mod latin;
pub mod screen;

#[cfg(test)]
mod tests;
