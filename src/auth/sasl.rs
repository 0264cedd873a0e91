//! SASL mechanisms for the POP3 AUTH command (RFC 5034), without I/O: decoded client responses
//! and user credentials go in, challenges and a verdict come out.
//!
//! How a session drives one exchange:
//! 1. `AUTH NAME [initial-response]`: parse NAME as a [`Mechanism`], decode the initial
//!    response with [`decode_response`], draw a [`Seed`], call [`Exchange::start`].
//! 2. [`Step::Challenge`]: send `+ ` followed by [`encode_challenge`] and read a line. `*`
//!    cancels; a line [`decode_response`] refuses fails the exchange; otherwise call
//!    [`Exchange::step`] with the decoded bytes.
//! 3. [`Step::NeedCredentials`]: call [`Exchange::credentials`] with
//!    [`Users::sasl_credentials`](super::Users::sasl_credentials) for that name, on the
//!    blocking pool (it may run PBKDF2).
//! 4. [`Step::Done`]: [`Outcome::Password`] still needs `verify_password`, [`Outcome::Verified`]
//!    is a successful login, [`Outcome::Failed`] a failed one.
//!
//! A call the last step did not ask for ends the exchange as [`FailReason::Malformed`].

use std::fmt;
use std::hint::black_box;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::password::{
    SALT_LEN, SCRAM_ITERATIONS, ScramKeys, StoredPassword, hmac_sha256, lower_hex,
};

/// Random bytes in a SCRAM server nonce: RFC 5802 wants it unpredictable, and 24 bytes make
/// 32 base64 characters, all valid nonce characters.
const NONCE_BYTES: usize = 24;

/// A SASL mechanism this server implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// RFC 5802/7677 without channel binding: no password on the wire, and the server proves
    /// it holds the keys.
    ScramSha256,
    /// RFC 4616: the password in clear, so only where USER/PASS would be allowed.
    Plain,
    /// The password in clear too (draft-murchison-sasl-login), for clients with nothing else.
    Login,
    /// RFC 2195: a challenge-response that needs the plaintext stored, like APOP.
    CramMd5,
}

impl Mechanism {
    /// Every mechanism, strongest first, the order for CAPA's SASL line.
    pub const ALL: [Mechanism; 4] = [
        Mechanism::ScramSha256,
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::CramMd5,
    ];

    /// The IANA name, as in CAPA and AUTH.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// AUTH named a mechanism this server does not implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownMechanism;

impl fmt::Display for UnknownMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown SASL mechanism")
    }
}

impl std::error::Error for UnknownMechanism {}

impl FromStr for Mechanism {
    type Err = UnknownMechanism;

    /// SASL mechanism names are case-insensitive (RFC 4422 section 3.1).
    fn from_str(name: &str) -> Result<Mechanism, UnknownMechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|mechanism| mechanism.name().eq_ignore_ascii_case(name))
            .ok_or(UnknownMechanism)
    }
}

/// Decodes one client line of an exchange (the initial response or an answer to a challenge):
/// base64, where `=` (RFC 5034's empty initial response) and an empty line are both the empty
/// response. `*` (cancel) is the session's to recognise first. `None` when it is not base64.
pub fn decode_response(line: impl AsRef<[u8]>) -> Option<Vec<u8>> {
    match line.as_ref() {
        b"=" => Some(Vec::new()),
        line => BASE64.decode(line).ok(),
    }
}

/// The text to send after `+ ` for a challenge; empty for an empty challenge, which makes the
/// bare `+ ` line RFC 5034 asks for.
pub fn encode_challenge(challenge: &[u8]) -> String {
    BASE64.encode(challenge)
}

/// The randomness of one exchange: the SCRAM server nonce and the CRAM-MD5 challenge.
pub struct Seed {
    scram_nonce: String,
    cram_challenge: String,
    secret: &'static [u8; 32],
}

/// Debug hides the per-process secret.
impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seed").finish_non_exhaustive()
    }
}

impl Seed {
    /// Fresh randomness, with `hostname` in the CRAM-MD5 challenge as RFC 2195 shows it.
    /// `None` when the system has no randomness to give: AUTH must then be refused, as a
    /// guessable nonce would let a recorded exchange be replayed.
    pub fn new(hostname: &str) -> Option<Seed> {
        let secret = process_secret()?;
        let mut nonce = [0; NONCE_BYTES];
        let mut cram = [0; 8];
        getrandom::fill(&mut nonce).ok()?;
        getrandom::fill(&mut cram).ok()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Some(Seed {
            scram_nonce: BASE64.encode(nonce),
            cram_challenge: format!("<{}.{now}@{hostname}>", u64::from_le_bytes(cram)),
            secret,
        })
    }
}

/// Keys the salts of PLAIN-derived and stand-in SCRAM credentials: random, so nobody can
/// precompute them, and fixed for the process, so repeated attempts see the same salt.
fn process_secret() -> Option<&'static [u8; 32]> {
    static SECRET: OnceLock<Option<[u8; 32]>> = OnceLock::new();
    SECRET
        .get_or_init(|| {
            let mut secret = [0; 32];
            getrandom::fill(&mut secret).ok().map(|()| secret)
        })
        .as_ref()
}

/// What SCRAM-SHA-256 or CRAM-MD5 checks a user against, from
/// [`Users::sasl_credentials`](super::Users::sasl_credentials).
#[derive(Clone)]
pub struct SaslCredentials {
    /// The user name salts are derived from (the user's, not the device login's).
    name: String,
    secret: Secret,
}

#[derive(Clone)]
enum Secret {
    Plaintext(String),
    Scram(ScramKeys),
    /// Unknown user, or a hash neither mechanism can use: a stand-in that never verifies.
    Unusable,
}

/// Debug shows nothing: even a stand-in would tell that the user does not exist.
impl fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslCredentials").finish_non_exhaustive()
    }
}

impl SaslCredentials {
    /// The credentials of user `name`, whose stored password is `stored`.
    pub(super) fn new(name: &str, stored: Option<&StoredPassword>) -> SaslCredentials {
        let secret = stored
            .and_then(|stored| {
                let plaintext = stored
                    .plaintext()
                    .map(|text| Secret::Plaintext(text.to_owned()));
                plaintext.or_else(|| stored.scram_keys().map(Secret::Scram))
            })
            .unwrap_or(Secret::Unusable);
        SaslCredentials {
            name: name.to_owned(),
            secret,
        }
    }
}

/// What the session does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes as a `+ ` continuation and pass the answer to [`Exchange::step`].
    Challenge(Vec<u8>),
    /// Look this user up and pass [`Users::sasl_credentials`](super::Users::sasl_credentials)
    /// to [`Exchange::credentials`].
    NeedCredentials {
        /// The authentication identity the client gave.
        authcid: String,
    },
    /// The exchange is over.
    Done(Outcome),
}

/// How an exchange ended.
#[derive(Clone, PartialEq, Eq)]
pub enum Outcome {
    /// PLAIN or LOGIN: check the password as for USER/PASS.
    Password {
        /// The user name to log in as.
        authcid: String,
        /// The password the client sent.
        password: String,
    },
    /// SCRAM-SHA-256 or CRAM-MD5: the client proved it knows the password.
    Verified {
        /// The user name to log in as.
        authcid: String,
    },
    /// A failed login; the client gets `-ERR [AUTH]` as for a wrong password.
    Failed {
        /// The user name, when the client got as far as giving one (for the log).
        authcid: Option<String>,
        /// Why, for the log.
        reason: FailReason,
    },
}

/// Debug never shows a password.
impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Password { authcid, .. } => f
                .debug_struct("Password")
                .field("authcid", authcid)
                .finish_non_exhaustive(),
            Outcome::Verified { authcid } => f
                .debug_struct("Verified")
                .field("authcid", authcid)
                .finish(),
            Outcome::Failed { authcid, reason } => f
                .debug_struct("Failed")
                .field("authcid", authcid)
                .field("reason", reason)
                .finish(),
        }
    }
}

/// Why an exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The client's message does not follow the mechanism's syntax.
    Malformed,
    /// The client asked to act as another user; there are no master users here.
    AuthzidRefused,
    /// SCRAM with channel binding (`p=`): this server offers no -PLUS mechanism.
    ChannelBinding,
    /// A SCRAM user name that is not ASCII: SASLprep would need Unicode tables this server
    /// does not carry, and guessing could let two spellings log in as one user.
    UnsupportedUsername,
    /// Wrong proof or digest, or no such user: the two look the same.
    WrongCredentials,
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailReason::Malformed => "malformed response",
            FailReason::AuthzidRefused => "authorization identity refused",
            FailReason::ChannelBinding => "channel binding not supported",
            FailReason::UnsupportedUsername => "non-ASCII SCRAM user name",
            FailReason::WrongCredentials => "wrong credentials",
        })
    }
}

/// One running AUTH exchange.
#[derive(Debug)]
pub struct Exchange {
    state: State,
    seed: Seed,
}

#[derive(Debug)]
enum State {
    /// PLAIN: waiting for `authzid NUL authcid NUL passwd`.
    Plain,
    /// LOGIN: "Username:" sent.
    LoginUser,
    /// LOGIN: "Password:" sent.
    LoginPassword {
        authcid: String,
    },
    /// SCRAM: waiting for client-first-message.
    ScramClientFirst,
    /// SCRAM: waiting for the user's credentials.
    ScramCredentials(ScramFirst),
    /// SCRAM: server-first-message sent, waiting for client-final-message.
    ScramClientFinal {
        first: ScramFirst,
        server_first: String,
        keys: ScramKeys,
        genuine: bool,
    },
    /// SCRAM: server-final-message sent as a challenge, as SASL does where the success reply
    /// (here +OK) carries no data; waiting for the client's empty response.
    ScramServerFinal {
        authcid: String,
    },
    /// CRAM-MD5: challenge sent, waiting for `user digest`.
    CramResponse,
    /// CRAM-MD5: waiting for the user's credentials.
    CramCredentials {
        authcid: String,
        digest: String,
    },
    Finished,
}

/// What a SCRAM client-first-message said.
#[derive(Debug)]
struct ScramFirst {
    authcid: String,
    /// `n,,`, `y,,` or with `a=`: what `c=` must echo.
    gs2_header: String,
    /// client-first-message-bare, part of the AuthMessage.
    bare: String,
    /// The client's nonce followed by ours.
    nonce: String,
}

impl Exchange {
    /// Starts `mechanism`. `initial_response` is the decoded AUTH argument, if any.
    pub fn start(
        mechanism: Mechanism,
        initial_response: Option<&[u8]>,
        seed: Seed,
    ) -> (Exchange, Step) {
        let (state, first_challenge) = match mechanism {
            Mechanism::Plain => (State::Plain, Vec::new()),
            Mechanism::Login => (State::LoginUser, b"Username:".to_vec()),
            Mechanism::ScramSha256 => (State::ScramClientFirst, Vec::new()),
            Mechanism::CramMd5 => (
                State::CramResponse,
                seed.cram_challenge.clone().into_bytes(),
            ),
        };
        let mut exchange = Exchange { state, seed };
        let step = match initial_response {
            None => Step::Challenge(first_challenge),
            // CRAM-MD5 is server-first: an initial response has nothing to answer.
            Some(_) if mechanism == Mechanism::CramMd5 => {
                exchange.state = State::Finished;
                failed(None, FailReason::Malformed)
            }
            Some(response) => exchange.step(response),
        };
        (exchange, step)
    }

    /// Takes the client's decoded answer to the last challenge.
    pub fn step(&mut self, response: &[u8]) -> Step {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Plain => plain(response),
            State::LoginUser => match login_field(response) {
                Some(authcid) => {
                    self.state = State::LoginPassword { authcid };
                    Step::Challenge(b"Password:".to_vec())
                }
                None => failed(None, FailReason::Malformed),
            },
            State::LoginPassword { authcid } => match login_field(response) {
                Some(password) => Step::Done(Outcome::Password { authcid, password }),
                None => failed(Some(authcid), FailReason::Malformed),
            },
            State::ScramClientFirst => match parse_client_first(response, &self.seed.scram_nonce) {
                Ok(first) => {
                    let authcid = first.authcid.clone();
                    self.state = State::ScramCredentials(first);
                    Step::NeedCredentials { authcid }
                }
                Err((authcid, reason)) => failed(authcid, reason),
            },
            State::ScramClientFinal {
                first,
                server_first,
                keys,
                genuine,
            } => self.scram_client_final(first, &server_first, &keys, genuine, response),
            State::ScramServerFinal { authcid } if response.is_empty() => {
                Step::Done(Outcome::Verified { authcid })
            }
            State::ScramServerFinal { authcid } => failed(Some(authcid), FailReason::Malformed),
            State::CramResponse => match parse_cram_response(response) {
                Some((authcid, digest)) => {
                    self.state = State::CramCredentials {
                        authcid: authcid.clone(),
                        digest,
                    };
                    Step::NeedCredentials { authcid }
                }
                None => failed(None, FailReason::Malformed),
            },
            State::ScramCredentials(_) | State::CramCredentials { .. } | State::Finished => {
                failed(None, FailReason::Malformed)
            }
        }
    }

    /// Takes the credentials asked for by [`Step::NeedCredentials`]. Stand-in credentials run
    /// the exchange to the end like real ones and fail at the proof, so an unknown user gets
    /// the same replies as a wrong password.
    pub fn credentials(&mut self, credentials: SaslCredentials) -> Step {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::ScramCredentials(first) => self.scram_server_first(first, credentials),
            State::CramCredentials { authcid, digest } => {
                let (key, genuine) = match &credentials.secret {
                    Secret::Plaintext(password) => (password.as_bytes(), true),
                    Secret::Scram(_) | Secret::Unusable => (&self.seed.secret[..], false),
                };
                let mut mac = Hmac::<Md5>::new_from_slice(key).expect("HMAC takes any key");
                mac.update(self.seed.cram_challenge.as_bytes());
                let expected = lower_hex(&mac.finalize().into_bytes());
                let same: bool = expected.as_bytes().ct_eq(digest.as_bytes()).into();
                verdict(authcid, same && genuine)
            }
            _ => failed(None, FailReason::Malformed),
        }
    }

    fn scram_server_first(&mut self, first: ScramFirst, credentials: SaslCredentials) -> Step {
        let salt = || {
            let tag = hmac_sha256(self.seed.secret, &[b"salt\0", credentials.name.as_bytes()]);
            tag[..SALT_LEN].to_vec()
        };
        let (keys, genuine) = match credentials.secret {
            Secret::Scram(keys) => {
                // Costs what a derivation below costs, so the wait for the challenge does
                // not tell stored keys from a PLAIN password or an unknown user.
                black_box(ScramKeys::derive(b"", Vec::new(), SCRAM_ITERATIONS));
                (keys, true)
            }
            Secret::Plaintext(ref password) => (
                ScramKeys::derive(password.as_bytes(), salt(), SCRAM_ITERATIONS),
                true,
            ),
            Secret::Unusable => (
                ScramKeys::derive(self.seed.secret, salt(), SCRAM_ITERATIONS),
                false,
            ),
        };
        let server_first = format!(
            "r={},s={},i={}",
            first.nonce,
            BASE64.encode(&keys.salt),
            keys.iterations
        );
        let challenge = server_first.clone().into_bytes();
        self.state = State::ScramClientFinal {
            first,
            server_first,
            keys,
            genuine,
        };
        Step::Challenge(challenge)
    }

    fn scram_client_final(
        &mut self,
        first: ScramFirst,
        server_first: &str,
        keys: &ScramKeys,
        genuine: bool,
        response: &[u8],
    ) -> Step {
        let Some((without_proof, proof)) = parse_client_final(&first, response) else {
            return failed(Some(first.authcid), FailReason::Malformed);
        };
        let auth_message = format!("{},{server_first},{without_proof}", first.bare);
        let signature = hmac_sha256(&keys.stored_key, &[auth_message.as_bytes()]);
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let same: bool = Sha256::digest(&client_key)
            .as_slice()
            .ct_eq(&keys.stored_key)
            .into();
        if !(same && genuine) {
            return failed(Some(first.authcid), FailReason::WrongCredentials);
        }
        let server_signature = hmac_sha256(&keys.server_key, &[auth_message.as_bytes()]);
        self.state = State::ScramServerFinal {
            authcid: first.authcid,
        };
        Step::Challenge(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

fn failed(authcid: Option<String>, reason: FailReason) -> Step {
    Step::Done(Outcome::Failed { authcid, reason })
}

fn verdict(authcid: String, verified: bool) -> Step {
    if verified {
        Step::Done(Outcome::Verified { authcid })
    } else {
        failed(Some(authcid), FailReason::WrongCredentials)
    }
}

/// RFC 4616: `authzid NUL authcid NUL passwd`, each UTF-8 without NUL, the last two non-empty.
fn plain(response: &[u8]) -> Step {
    let fields: Vec<&[u8]> = response.split(|&b| b == 0).collect();
    let [authzid, authcid, password] = fields[..] else {
        return failed(None, FailReason::Malformed);
    };
    let (Ok(authzid), Ok(authcid), Ok(password)) = (
        std::str::from_utf8(authzid),
        std::str::from_utf8(authcid),
        std::str::from_utf8(password),
    ) else {
        return failed(None, FailReason::Malformed);
    };
    if authcid.is_empty() || password.is_empty() {
        return failed(None, FailReason::Malformed);
    }
    if !authzid.is_empty() && authzid != authcid {
        return failed(Some(authcid.to_owned()), FailReason::AuthzidRefused);
    }
    Step::Done(Outcome::Password {
        authcid: authcid.to_owned(),
        password: password.to_owned(),
    })
}

/// A LOGIN user name or password: non-empty UTF-8 without NUL.
fn login_field(response: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(response).ok()?;
    (!text.is_empty() && !text.contains('\0')).then(|| text.to_owned())
}

type ScramFailure = (Option<String>, FailReason);

/// RFC 5802 section 7: `gs2-header client-first-message-bare`; the nonce gets ours appended.
fn parse_client_first(response: &[u8], server_nonce: &str) -> Result<ScramFirst, ScramFailure> {
    let malformed = |authcid: Option<&str>| (authcid.map(str::to_owned), FailReason::Malformed);
    let text = std::str::from_utf8(response).map_err(|_| malformed(None))?;
    let (cbind_flag, rest) = text.split_once(',').ok_or(malformed(None))?;
    match cbind_flag {
        "n" | "y" => {}
        flag if flag.starts_with("p=") => return Err((None, FailReason::ChannelBinding)),
        _ => return Err(malformed(None)),
    }
    let (authzid, bare) = rest.split_once(',').ok_or(malformed(None))?;
    let gs2_header = &text[..text.len() - bare.len()];

    let mut fields = bare.split(',');
    // The user name must come first: a leading `m=` is a mandatory extension, which this
    // server cannot know and so must fail.
    let username = fields
        .next()
        .and_then(|field| field.strip_prefix("n="))
        .ok_or(malformed(None))?;
    let authcid = sasl_name(username)?;
    let client_nonce = fields
        .next()
        .and_then(|field| field.strip_prefix("r="))
        .filter(|nonce| !nonce.is_empty() && nonce.bytes().all(|b| matches!(b, 0x21..=0x7e)))
        .ok_or(malformed(Some(&authcid)))?;
    if !fields.all(is_extension) {
        return Err(malformed(Some(&authcid)));
    }
    if !authzid.is_empty() {
        let authzid = authzid
            .strip_prefix("a=")
            .ok_or(malformed(Some(&authcid)))
            .and_then(|name| sasl_name(name).map_err(|_| malformed(Some(&authcid))))?;
        if authzid != authcid {
            return Err((Some(authcid), FailReason::AuthzidRefused));
        }
    }
    Ok(ScramFirst {
        authcid,
        gs2_header: gs2_header.to_owned(),
        bare: bare.to_owned(),
        nonce: format!("{client_nonce}{server_nonce}"),
    })
}

/// A SCRAM `saslname`: `=2C` and `=3D` decoded to `,` and `=`. Only printable ASCII is taken,
/// which SASLprep leaves as it is; anything else is refused rather than guessed at.
fn sasl_name(encoded: &str) -> Result<String, ScramFailure> {
    let mut name = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(c) = rest.chars().next() {
        if c == '=' {
            let escape = rest.get(..3).ok_or((None, FailReason::Malformed))?;
            name.push(match escape {
                "=2C" => ',',
                "=3D" => '=',
                _ => return Err((None, FailReason::Malformed)),
            });
            rest = &rest[3..];
        } else {
            if !c.is_ascii() {
                return Err((None, FailReason::UnsupportedUsername));
            }
            if c.is_ascii_control() {
                return Err((None, FailReason::Malformed));
            }
            name.push(c);
            rest = &rest[1..];
        }
    }
    if name.is_empty() {
        return Err((None, FailReason::Malformed));
    }
    Ok(name)
}

/// An optional SCRAM extension `x=value`, ignored as RFC 5802 allows.
fn is_extension(field: &str) -> bool {
    field
        .split_once('=')
        .is_some_and(|(name, _)| name.len() == 1 && name.bytes().all(|b| b.is_ascii_alphabetic()))
}

/// RFC 5802 section 7: `c=base64(gs2-header),r=nonce[,extensions],p=proof`. Returns the
/// message without the proof, for the AuthMessage, and the proof.
fn parse_client_final<'a>(first: &ScramFirst, response: &'a [u8]) -> Option<(&'a str, Vec<u8>)> {
    let text = std::str::from_utf8(response).ok()?;
    let (without_proof, proof) = text.rsplit_once(",p=")?;
    let proof = BASE64.decode(proof).ok().filter(|p| p.len() == 32)?;
    let mut fields = without_proof.split(',');
    let binding = BASE64.decode(fields.next()?.strip_prefix("c=")?).ok()?;
    let nonce = fields.next()?.strip_prefix("r=")?;
    let valid =
        binding == first.gs2_header.as_bytes() && nonce == first.nonce && fields.all(is_extension);
    valid.then_some((without_proof, proof))
}

/// RFC 2195: `user SP digest`, the digest 32 hex digits (any case, compared lowercased).
fn parse_cram_response(response: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(response).ok()?;
    let (user, digest) = text.rsplit_once(' ')?;
    let valid = !user.is_empty()
        && !user.contains('\0')
        && digest.len() == 32
        && digest.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| (user.to_owned(), digest.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::super::{Users, verify_password};
    use super::*;

    /// The per-process secret of test seeds, so stand-ins are reproducible.
    static TEST_SECRET: [u8; 32] = [7; 32];

    /// RFC 7677 section 3's server nonce part.
    const RFC7677_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";

    /// RFC 2195's example challenge.
    const RFC2195_CHALLENGE: &str = "<1896.697170952@postoffice.reston.mci.net>";

    /// `doveadm pw -s SCRAM-SHA-256 -p pencil`, Dovecot 2.3.
    const DOVEADM_SCRAM: &str = "{SCRAM-SHA-256}4096,/DaWi4cvau/FTipTrmo2zQ==,BfTsqKdh3zlqiARk1ik3ZH1J6bJr1GtyjPARWDu1/Nk=,2RXfb/674NIEC5cT4rftkOlkfnMRpf1TW0lUlycLrVU=";

    fn seed() -> Seed {
        Seed {
            scram_nonce: RFC7677_NONCE.to_owned(),
            cram_challenge: RFC2195_CHALLENGE.to_owned(),
            secret: &TEST_SECRET,
        }
    }

    fn start(mechanism: Mechanism, initial_response: Option<&[u8]>) -> (Exchange, Step) {
        Exchange::start(mechanism, initial_response, seed())
    }

    fn challenge(step: Step) -> Vec<u8> {
        match step {
            Step::Challenge(bytes) => bytes,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    fn password(authcid: &str, password: &str) -> Step {
        Step::Done(Outcome::Password {
            authcid: authcid.into(),
            password: password.into(),
        })
    }

    fn verified(authcid: &str) -> Step {
        Step::Done(Outcome::Verified {
            authcid: authcid.into(),
        })
    }

    fn fail(authcid: Option<&str>, reason: FailReason) -> Step {
        failed(authcid.map(str::to_owned), reason)
    }

    fn need(authcid: &str) -> Step {
        Step::NeedCredentials {
            authcid: authcid.into(),
        }
    }

    /// The client side of SCRAM-SHA-256 from RFC 5802 section 3: the client-final-message
    /// answering `server_first`, and the server-final-message it expects back.
    fn scram_client(
        password: &[u8],
        gs2_header: &str,
        client_first_bare: &str,
        server_first: &[u8],
    ) -> (Vec<u8>, Vec<u8>) {
        let server_first = std::str::from_utf8(server_first).expect("UTF-8");
        let mut fields = server_first.split(',');
        let mut attribute = |name: &str| {
            fields
                .next()
                .and_then(|f| f.strip_prefix(name))
                .expect("attribute")
                .to_owned()
        };
        let (nonce, salt, iterations) = (attribute("r="), attribute("s="), attribute("i="));
        let salt = BASE64.decode(salt).expect("salt");
        let iterations = iterations.parse().expect("iterations");
        let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, &salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        let stored_key = Sha256::digest(client_key);
        let without_proof = format!("c={},r={nonce}", BASE64.encode(gs2_header));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac_sha256(&salted, &[b"Server Key"]);
        let server_signature = hmac_sha256(&server_key, &[auth_message.as_bytes()]);
        (
            format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes(),
            format!("v={}", BASE64.encode(server_signature)).into_bytes(),
        )
    }

    /// A whole SCRAM exchange as `login` with `password` against `users`; returns the final
    /// step and the salt the server sent.
    fn scram_login(users: &Users, login: &str, password: &[u8]) -> (Step, Vec<u8>) {
        let bare = format!("n={login},r=fyko+d2lbbFgONRv9qkxdawL");
        let (mut exchange, step) = start(
            Mechanism::ScramSha256,
            Some(format!("n,,{bare}").as_bytes()),
        );
        assert_eq!(step, need(login));
        let server_first = challenge(exchange.credentials(users.sasl_credentials(login)));
        let salt = std::str::from_utf8(&server_first)
            .expect("UTF-8")
            .split(',')
            .find_map(|f| f.strip_prefix("s="))
            .map(|s| BASE64.decode(s).expect("salt"))
            .expect("salt attribute");
        let (client_final, server_final) = scram_client(password, "n,,", &bare, &server_first);
        let step = exchange.step(&client_final);
        if step != Step::Challenge(server_final) {
            return (step, salt);
        }
        (exchange.step(b""), salt)
    }

    #[test]
    fn mechanism_names_are_case_insensitive() {
        for mechanism in Mechanism::ALL {
            assert_eq!(mechanism.name().parse(), Ok(mechanism));
            assert_eq!(mechanism.name().to_lowercase().parse(), Ok(mechanism));
            assert_eq!(mechanism.to_string(), mechanism.name());
        }
        assert_eq!("Scram-Sha-256".parse(), Ok(Mechanism::ScramSha256));
        for name in [
            "",
            "SCRAM-SHA-1",
            "SCRAM-SHA-256-PLUS",
            "DIGEST-MD5",
            "PLAIN ",
        ] {
            assert_eq!(name.parse::<Mechanism>(), Err(UnknownMechanism), "{name:?}");
        }
    }

    #[test]
    fn base64_lines() {
        assert_eq!(decode_response("="), Some(Vec::new()));
        assert_eq!(decode_response(""), Some(Vec::new()));
        assert_eq!(
            decode_response("AHRpbQB0YW5zdGFhZg=="),
            Some(b"\0tim\0tanstaaf".to_vec())
        );
        assert_eq!(decode_response(b"dGlt"), Some(b"tim".to_vec()));
        for line in ["dGltAA", "dGlt ", "*", "==", "dG=t", "d\u{e9}lt"] {
            assert_eq!(decode_response(line), None, "{line:?}");
        }
        assert_eq!(encode_challenge(b""), "");
        assert_eq!(encode_challenge(b"Username:"), "VXNlcm5hbWU6");
        assert_eq!(encode_challenge(b"Password:"), "UGFzc3dvcmQ6");
    }

    #[test]
    fn seeds_are_fresh() {
        let (a, b) = (Seed::new("mail.example.com"), Seed::new("mail.example.com"));
        let (a, b) = (a.expect("randomness"), b.expect("randomness"));
        assert_eq!(a.scram_nonce.len(), 32);
        assert!(
            a.scram_nonce
                .bytes()
                .all(|c| c.is_ascii_graphic() && c != b',')
        );
        assert_ne!(a.scram_nonce, b.scram_nonce);
        assert_ne!(a.cram_challenge, b.cram_challenge);
        let inner = a
            .cram_challenge
            .strip_prefix('<')
            .and_then(|c| c.strip_suffix("@mail.example.com>"))
            .expect("<random.time@host>");
        let (random, time) = inner.split_once('.').expect("two numbers");
        assert!(
            random.parse::<u64>().is_ok() && time.parse::<u64>().is_ok(),
            "{inner}"
        );
        assert!(std::ptr::eq(a.secret, b.secret), "one secret per process");
        assert!(!format!("{a:?}").contains(&a.scram_nonce));
    }

    /// The session runs `credentials` on the blocking pool, so both must move between threads.
    #[test]
    fn exchange_and_credentials_are_send() {
        fn send<T: Send + 'static>() {}
        send::<Exchange>();
        send::<SaslCredentials>();
    }

    #[test]
    fn plain_rfc4616_examples() {
        let (_, step) = start(Mechanism::Plain, Some(b"\0tim\0tanstaaftanstaaf"));
        assert_eq!(step, password("tim", "tanstaaftanstaaf"));
        let (_, step) = start(Mechanism::Plain, Some(b"Ursel\0Kurt\0xipj3plmq"));
        assert_eq!(step, fail(Some("Kurt"), FailReason::AuthzidRefused));
        let (_, step) = start(Mechanism::Plain, Some(b"Kurt\0Kurt\0xipj3plmq"));
        assert_eq!(step, password("Kurt", "xipj3plmq"));
    }

    #[test]
    fn plain_without_initial_response_sends_an_empty_challenge() {
        let (mut exchange, step) = start(Mechanism::Plain, None);
        assert_eq!(step, Step::Challenge(Vec::new()));
        assert_eq!(
            exchange.step("\0jos\u{e9}\0p\u{e4}ss word".as_bytes()),
            password("jos\u{e9}", "p\u{e4}ss word")
        );
        assert_eq!(
            exchange.step(b"\0tim\0x"),
            fail(None, FailReason::Malformed)
        );
    }

    #[test]
    fn malformed_plain_fails() {
        for response in [
            &b""[..],
            b"tim",
            b"\0tim",
            b"\0tim\0",
            b"\0\0secret",
            b"\0tim\0secret\0",
            b"\0tim\0sec\0ret",
            b"\0\0\0",
            b"\0t\xffm\0secret",
            b"\0tim\0s\xffcret",
            b"\xff\0tim\0secret",
        ] {
            let (_, step) = start(Mechanism::Plain, Some(response));
            assert_eq!(step, fail(None, FailReason::Malformed), "{response:?}");
        }
    }

    #[test]
    fn login_exchange() {
        let (mut exchange, step) = start(Mechanism::Login, None);
        assert_eq!(step, Step::Challenge(b"Username:".to_vec()));
        assert_eq!(
            exchange.step(b"tim"),
            Step::Challenge(b"Password:".to_vec())
        );
        assert_eq!(exchange.step(b"tanstaaf"), password("tim", "tanstaaf"));

        let (mut exchange, step) = start(Mechanism::Login, Some(b"tim"));
        assert_eq!(step, Step::Challenge(b"Password:".to_vec()));
        assert_eq!(exchange.step(b"a:b c"), password("tim", "a:b c"));
    }

    #[test]
    fn malformed_login_fails() {
        for bad in [&b""[..], b"t\0m", b"t\xffm"] {
            let (_, step) = start(Mechanism::Login, Some(bad));
            assert_eq!(step, fail(None, FailReason::Malformed), "{bad:?}");
            let (mut exchange, _) = start(Mechanism::Login, Some(b"tim"));
            assert_eq!(
                exchange.step(bad),
                fail(Some("tim"), FailReason::Malformed),
                "{bad:?}"
            );
        }
    }

    /// RFC 7677 section 3, byte for byte, with its server nonce, salt and iteration count.
    #[test]
    fn scram_rfc7677_example() {
        let credentials = SaslCredentials {
            name: "user".into(),
            secret: Secret::Scram(ScramKeys::derive(
                b"pencil",
                BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt"),
                4096,
            )),
        };
        let (mut exchange, step) = start(Mechanism::ScramSha256, None);
        assert_eq!(step, Step::Challenge(Vec::new()));
        assert_eq!(
            exchange.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"),
            need("user")
        );
        assert_eq!(
            challenge(exchange.credentials(credentials)),
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        assert_eq!(
            challenge(exchange.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")),
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert_eq!(exchange.step(b""), verified("user"));
        assert_eq!(exchange.step(b""), fail(None, FailReason::Malformed));
    }

    #[test]
    fn scram_doveadm_vector_works_for_pass_and_scram() {
        let users = Users::parse(&format!("user:{DOVEADM_SCRAM}\n")).expect("valid");
        let user = users.get("user");
        assert!(verify_password(user, b"pencil"));
        assert!(!verify_password(user, b"pencil "));
        assert!(!verify_password(user, b""));

        assert_eq!(scram_login(&users, "user", b"pencil").0, verified("user"));
        let (step, salt) = scram_login(&users, "user+phone", b"pencil");
        assert_eq!(step, verified("user+phone"));
        assert_eq!(BASE64.encode(salt), "/DaWi4cvau/FTipTrmo2zQ==");
        assert_eq!(
            scram_login(&users, "user", b"Pencil").0,
            fail(Some("user"), FailReason::WrongCredentials)
        );
    }

    #[test]
    fn scram_with_gs2_y_and_an_authzid_and_extensions() {
        let users = Users::parse(&format!("a,b=c:{DOVEADM_SCRAM}\n")).expect("valid");
        for gs2 in ["y,,", "n,a=a=2Cb=3Dc,", "y,a=a=2Cb=3Dc,"] {
            let bare = "n=a=2Cb=3Dc,r=abc,x=extension";
            let (mut exchange, step) = start(
                Mechanism::ScramSha256,
                Some(format!("{gs2}{bare}").as_bytes()),
            );
            assert_eq!(step, need("a,b=c"), "{gs2}");
            let server_first = challenge(exchange.credentials(users.sasl_credentials("a,b=c")));
            let (client_final, server_final) = scram_client(b"pencil", gs2, bare, &server_first);
            assert_eq!(
                challenge(exchange.step(&client_final)),
                server_final,
                "{gs2}"
            );
            assert_eq!(exchange.step(b""), verified("a,b=c"), "{gs2}");
        }
    }

    #[test]
    fn scram_from_a_plain_password_has_a_stable_salt() {
        let users = Users::parse("alice:{PLAIN}correct horse\nbob:{PLAIN}x\n").expect("valid");
        let (step, salt) = scram_login(&users, "alice", b"correct horse");
        assert_eq!(step, verified("alice"));
        assert_eq!(salt.len(), SALT_LEN);
        let (step, again) = scram_login(&users, "alice+laptop", b"correct horse");
        assert_eq!(step, verified("alice+laptop"));
        assert_eq!(again, salt, "one salt per user, whatever the device");
        assert_ne!(scram_login(&users, "bob", b"x").1, salt);
        assert_eq!(
            scram_login(&users, "alice", b"correct horsf").0,
            fail(Some("alice"), FailReason::WrongCredentials)
        );
    }

    #[test]
    fn scram_unknown_user_runs_to_the_end_and_fails_like_a_wrong_password() {
        let users = Users::parse(&format!(
            "alice:{{PLAIN}}secret\nhashed:{{SHA256-CRYPT}}$5$y/r94uo8vWGdUlsX$fc4dWJxZ9azC0UObRpIzQx0DB/72b/OxDaCdrO7t8f0\nuser:{DOVEADM_SCRAM}\n"
        ))
        .expect("valid");
        for login in ["nobody", "nobody+phone", "hashed", "alice+../x"] {
            let (step, salt) = scram_login(&users, login, b"secret");
            assert_eq!(step, fail(Some(login), FailReason::WrongCredentials));
            assert_eq!(salt.len(), SALT_LEN, "{login}");
        }
        // The stand-in's own secret does not open it either.
        let (step, _) = scram_login(&users, "nobody", &TEST_SECRET);
        assert_eq!(step, fail(Some("nobody"), FailReason::WrongCredentials));
        // Repeated attempts, and device logins, see the salt a real user would show.
        let salt = |login| scram_login(&users, login, b"x").1;
        assert_eq!(salt("nobody"), salt("nobody"));
        assert_eq!(salt("nobody"), salt("nobody+phone"));
        assert_eq!(salt("nobody@example.com"), salt("nobody+a@example.com"));
        assert_ne!(salt("nobody"), salt("somebody"));
        assert_ne!(salt("alice+../x"), salt("alice"));
        // A user whose hash SCRAM cannot use looks like a user whose plaintext it can.
        assert_eq!(salt("hashed"), salt("hashed+phone"));
        let server_first = |login: &str| {
            let (mut exchange, _) = start(
                Mechanism::ScramSha256,
                Some(format!("n,,n={login},r=abc").as_bytes()),
            );
            let first = challenge(exchange.credentials(users.sasl_credentials(login)));
            String::from_utf8(first).expect("UTF-8")
        };
        for login in ["nobody", "hashed", "alice", "user"] {
            let first = server_first(login);
            assert!(
                first.starts_with(&format!("r=abc{RFC7677_NONCE},s=")),
                "{first}"
            );
            assert!(first.ends_with(",i=4096"), "{first}");
            assert_eq!(first.len(), server_first("nobody").len(), "{first}");
        }
    }

    #[test]
    fn malformed_scram_client_first_fails_without_asking_for_credentials() {
        use FailReason::*;
        let cases: [(&[u8], Option<&str>, FailReason); 24] = [
            (b"", None, Malformed),
            (b"n", None, Malformed),
            (b"n,", None, Malformed),
            (b"n,,", None, Malformed),
            (b"x,,n=user,r=abc", None, Malformed),
            (b"N,,n=user,r=abc", None, Malformed),
            (b"p=tls-unique,,n=user,r=abc", None, ChannelBinding),
            (
                b"p=tls-server-end-point,a=user,n=user,r=abc",
                None,
                ChannelBinding,
            ),
            (b"n,,n=user", Some("user"), Malformed),
            (b"n,,r=abc,n=user", None, Malformed),
            (b"n,,m=ext,n=user,r=abc", None, Malformed),
            (b"n,,n=,r=abc", None, Malformed),
            (b"n,,n=us=2Xer,r=abc", None, Malformed),
            (b"n,,n=user=,r=abc", None, Malformed),
            (b"n,,n=us\ter,r=abc", None, Malformed),
            (b"n,,n=us\xffer,r=abc", None, Malformed),
            ("n,,n=jos\u{e9},r=abc".as_bytes(), None, UnsupportedUsername),
            (b"n,,n=user,r=", Some("user"), Malformed),
            (b"n,,n=user,r=a b", Some("user"), Malformed),
            (b"n,,n=user,r=abc,bad", Some("user"), Malformed),
            (b"n,,n=user,r=abc,xy=z", Some("user"), Malformed),
            (b"n,user,n=user,r=abc", Some("user"), Malformed),
            (b"n,a=other,n=user,r=abc", Some("user"), AuthzidRefused),
            (b"n,a=,n=user,r=abc", Some("user"), Malformed),
        ];
        for (response, authcid, reason) in cases {
            let (_, step) = start(Mechanism::ScramSha256, Some(response));
            assert_eq!(
                step,
                fail(authcid, reason),
                "{:?}",
                String::from_utf8_lossy(response)
            );
        }
    }

    #[test]
    fn malformed_scram_client_final_fails() {
        let users = Users::parse(&format!("user:{DOVEADM_SCRAM}\n")).expect("valid");
        let bare = "n=user,r=abc";
        let exchange_at_final = || {
            let (mut exchange, _) = start(
                Mechanism::ScramSha256,
                Some(format!("n,,{bare}").as_bytes()),
            );
            let first = challenge(exchange.credentials(users.sasl_credentials("user")));
            (exchange, first)
        };
        let (_, server_first) = exchange_at_final();
        let (good, _) = scram_client(b"pencil", "n,,", bare, &server_first);
        let good = String::from_utf8(good).expect("UTF-8");
        let (without_proof, proof) = good.rsplit_once(",p=").expect("proof");
        let nonce = format!("abc{RFC7677_NONCE}");
        let malformed = [
            String::new(),
            without_proof.to_owned(),
            format!("{without_proof},p="),
            format!("{without_proof},p=!!!!"),
            format!("{without_proof},p={}", &proof[..proof.len() - 4]),
            format!("{without_proof},p={proof}A"),
            format!("{without_proof},p={}", BASE64.encode([0; 31])),
            format!("{good},x=after-the-proof"),
            format!("{good},"),
            format!("c=eSws,r={nonce},p={proof}"),
            format!("c=biws,r=abc,p={proof}"),
            format!("c=biws,r={nonce}x,p={proof}"),
            format!("c=biws,r=abc%hvYDpWUa2RaTCAfuxFIlj)hNlF$k1,p={proof}"),
            format!("c=biw,r={nonce},p={proof}"),
            format!("c=bi!s,r={nonce},p={proof}"),
            format!("r={nonce},p={proof}"),
            format!("c=biws,p={proof}"),
            format!("r={nonce},c=biws,p={proof}"),
            format!("c=biws,r={nonce},bad,p={proof}"),
            format!("C=biws,r={nonce},p={proof}"),
        ];
        for response in malformed {
            let (mut exchange, _) = exchange_at_final();
            assert_eq!(
                exchange.step(response.as_bytes()),
                fail(Some("user"), FailReason::Malformed),
                "{response:?}"
            );
        }
        let (mut exchange, _) = exchange_at_final();
        assert_eq!(
            exchange.step(b"c=biws,r=abc,p=\xff"),
            fail(Some("user"), FailReason::Malformed)
        );
        // Well-formed but wrong: a proof of 32 other bytes, or an extension inside the
        // signed part the client did not sign.
        for response in [
            format!("{without_proof},p={}", BASE64.encode([0; 32])),
            format!("{without_proof},x=y,p={proof}"),
        ] {
            let (mut exchange, _) = exchange_at_final();
            assert_eq!(
                exchange.step(response.as_bytes()),
                fail(Some("user"), FailReason::WrongCredentials),
                "{response:?}"
            );
        }
        // After the server's signature, only an empty response completes the login.
        let (mut exchange, _) = exchange_at_final();
        assert!(matches!(exchange.step(good.as_bytes()), Step::Challenge(_)));
        assert_eq!(
            exchange.step(b"v"),
            fail(Some("user"), FailReason::Malformed)
        );
    }

    #[test]
    fn scram_empty_initial_response_is_malformed() {
        let (_, step) = start(Mechanism::ScramSha256, Some(b""));
        assert_eq!(step, fail(None, FailReason::Malformed));
    }

    #[test]
    fn cram_md5_rfc2195_example() {
        let users = Users::parse("tim:{PLAIN}tanstaaftanstaaf\n").expect("valid");
        for digest in [
            "b913a602c7eda7a495b4e6e7334d3890",
            "B913A602C7EDA7A495B4E6E7334D3890",
        ] {
            let (mut exchange, step) = start(Mechanism::CramMd5, None);
            assert_eq!(step, Step::Challenge(RFC2195_CHALLENGE.as_bytes().to_vec()));
            assert_eq!(
                exchange.step(format!("tim {digest}").as_bytes()),
                need("tim")
            );
            assert_eq!(
                exchange.credentials(users.sasl_credentials("tim")),
                verified("tim")
            );
        }
    }

    #[test]
    fn cram_md5_fails_for_wrong_digests_hashes_and_unknown_users() {
        let users = Users::parse(&format!(
            "tim:{{PLAIN}}tanstaaftanstaaf\nhashed:{DOVEADM_SCRAM}\n"
        ))
        .expect("valid");
        let right = "b913a602c7eda7a495b4e6e7334d3890";
        let cram = |login: &str, digest: &str| {
            let (mut exchange, _) = start(Mechanism::CramMd5, None);
            assert_eq!(
                exchange.step(format!("{login} {digest}").as_bytes()),
                need(login)
            );
            exchange.credentials(users.sasl_credentials(login))
        };
        assert_eq!(
            cram("tim", "b913a602c7eda7a495b4e6e7334d3891"),
            fail(Some("tim"), FailReason::WrongCredentials)
        );
        assert_eq!(cram("tim+phone", right), verified("tim+phone"));
        for login in ["hashed", "nobody"] {
            assert_eq!(
                cram(login, right),
                fail(Some(login), FailReason::WrongCredentials)
            );
        }
        // The stand-in key does not open it either.
        let mut mac = Hmac::<Md5>::new_from_slice(&TEST_SECRET).expect("any key");
        mac.update(RFC2195_CHALLENGE.as_bytes());
        let stand_in = lower_hex(&mac.finalize().into_bytes());
        assert_eq!(
            cram("nobody", &stand_in),
            fail(Some("nobody"), FailReason::WrongCredentials)
        );
    }

    #[test]
    fn malformed_cram_md5_fails() {
        let (_, step) = start(
            Mechanism::CramMd5,
            Some(b"tim b913a602c7eda7a495b4e6e7334d3890"),
        );
        assert_eq!(step, fail(None, FailReason::Malformed));
        for response in [
            &b""[..],
            b"tim",
            b"b913a602c7eda7a495b4e6e7334d3890",
            b" b913a602c7eda7a495b4e6e7334d3890",
            b"tim b913a602c7eda7a495b4e6e7334d389",
            b"tim b913a602c7eda7a495b4e6e7334d38900",
            b"tim b913a602c7eda7a495b4e6e7334d389g",
            b"tim b913a602c7eda7a495b4e6e7334d3890 ",
            b"t\0m b913a602c7eda7a495b4e6e7334d3890",
            b"t\xffm b913a602c7eda7a495b4e6e7334d3890",
        ] {
            let (mut exchange, _) = start(Mechanism::CramMd5, None);
            assert_eq!(
                exchange.step(response),
                fail(None, FailReason::Malformed),
                "{response:?}"
            );
        }
    }

    #[test]
    fn calls_out_of_order_fail_the_exchange() {
        let users = Users::parse("tim:{PLAIN}x\n").expect("valid");
        let (mut exchange, _) = start(Mechanism::Plain, None);
        assert_eq!(
            exchange.credentials(users.sasl_credentials("tim")),
            fail(None, FailReason::Malformed)
        );
        assert_eq!(
            exchange.step(b"\0tim\0x"),
            fail(None, FailReason::Malformed)
        );

        let (mut exchange, _) = start(Mechanism::ScramSha256, Some(b"n,,n=tim,r=abc"));
        assert_eq!(
            exchange.step(b"n,,n=tim,r=abc"),
            fail(None, FailReason::Malformed)
        );
        assert_eq!(
            exchange.credentials(users.sasl_credentials("tim")),
            fail(None, FailReason::Malformed)
        );

        let (mut exchange, _) = start(Mechanism::CramMd5, None);
        assert_eq!(
            exchange.step(b"tim b913a602c7eda7a495b4e6e7334d3890"),
            need("tim")
        );
        assert_eq!(
            exchange.step(b"tim b913a602c7eda7a495b4e6e7334d3890"),
            fail(None, FailReason::Malformed)
        );
    }

    /// Mutated and random input in every state: never a panic, never a success.
    #[test]
    fn garbage_never_panics_or_verifies() {
        let users =
            Users::parse(&format!("user:{DOVEADM_SCRAM}\ntim:{{PLAIN}}x\n")).expect("valid");
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds: [&[u8]; 6] = [
            b"n,,n=user,r=abc",
            b"c=biws,r=abc%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            b"\0tim\0x",
            b"tim b913a602c7eda7a495b4e6e7334d3890",
            b"y,a=user,n=us=3Der,r=a,x=1",
            b"=,\0 \xff\xc3",
        ];
        for _ in 0..3000 {
            let mut messages = Vec::new();
            for _ in 0..3 {
                let mut message = seeds[random() as usize % seeds.len()].to_vec();
                for _ in 0..random() % 4 {
                    let byte = seeds[5][random() as usize % seeds[5].len()];
                    match random() % 3 {
                        0 if !message.is_empty() => {
                            message.truncate(random() as usize % message.len());
                        }
                        1 => message.insert(random() as usize % (message.len() + 1), byte),
                        _ => message.push(random() as u8),
                    }
                }
                messages.push(message);
            }
            let mechanism = Mechanism::ALL[random() as usize % 4];
            let initial = (random() % 2 == 0).then_some(messages[0].as_slice());
            let (mut exchange, mut step) = start(mechanism, initial);
            for message in &messages[1..] {
                step = match step {
                    Step::Challenge(_) => exchange.step(message),
                    Step::NeedCredentials { authcid } => {
                        exchange.credentials(users.sasl_credentials(&authcid))
                    }
                    Step::Done(_) => break,
                };
            }
            assert!(
                !matches!(step, Step::Done(Outcome::Verified { .. })),
                "{messages:?}"
            );
        }
    }

    #[test]
    fn debug_output_holds_no_secrets() {
        let outcome = Outcome::Password {
            authcid: "tim".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{outcome:?}").contains("hunter2"));
        let users =
            Users::parse(&format!("tim:{{PLAIN}}hunter2\nuser:{DOVEADM_SCRAM}\n")).expect("valid");
        let credentials = users.sasl_credentials("tim");
        assert!(!format!("{credentials:?}").contains("hunter2"));
        let (mut exchange, _) = start(Mechanism::ScramSha256, Some(b"n,,n=user,r=abc"));
        exchange.credentials(users.sasl_credentials("user"));
        let debug = format!("{exchange:?}");
        assert!(
            !debug.contains("BfTsqKdh") && !debug.contains("2RXfb"),
            "{debug}"
        );
        let (mut exchange, _) = start(Mechanism::Login, Some(b"tim"));
        exchange.step(b"hunter2");
        assert!(!format!("{exchange:?}").contains("hunter2"));
    }
}
