//! Users and passwords from a Dovecot-compatible passwd-file, so existing Dovecot users files
//! work unchanged.
//!
//! Each line is `user:password:uid:gid:gecos:home:shell:extra_fields`; everything after the
//! password is optional, and blank lines and `#` comments are skipped. `extra_fields` is a
//! space-separated list of `key=value` (or bare `key`); `mode=keep|delete` is interpreted, the
//! rest is kept for the caller.

mod password;
pub mod sasl;

pub use password::{Scheme, StoredPassword, hash_password};

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::session::Mode;
use sasl::SaslCredentials;

/// Longest device suffix accepted in a `user+device` login.
const MAX_DEVICE_LEN: usize = 64;

/// One user of the users file.
#[derive(Clone, Debug)]
pub struct UserEntry {
    /// The login name as written in the file (may contain `@domain`).
    pub name: String,
    /// `None` when the password field is empty: the user cannot log in with a password.
    pub password: Option<StoredPassword>,
    /// `None` when the field is empty or absent.
    pub uid: Option<u32>,
    /// `None` when the field is empty or absent.
    pub gid: Option<u32>,
    /// `None` when the field is empty or absent.
    pub home: Option<PathBuf>,
    /// The `mode=` extra field, overriding the server's default mode for this user.
    pub mode: Option<Mode>,
    /// The other extra fields in file order; a bare key has an empty value.
    pub extra: Vec<(String, String)>,
}

/// The users of a users file, by login name.
#[derive(Clone, Debug, Default)]
pub struct Users {
    by_name: HashMap<String, UserEntry>,
}

/// A login name resolved to its user and, for `user+device` logins, the device.
#[derive(Clone, Debug)]
pub struct Resolved<'a> {
    /// The user the login belongs to.
    pub entry: &'a UserEntry,
    /// The device named after `+`, so each device of one user can keep its own state.
    pub device: Option<String>,
}

/// Why the users file or a password could not be used.
#[derive(Debug)]
pub enum AuthError {
    /// The users file could not be read.
    Read {
        /// The file that was read.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A line of the users file is invalid.
    Line {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: LineProblem,
    },
    /// A scheme name that is not one of the supported Dovecot schemes.
    UnknownScheme(String),
    /// `hash_password` refused the password because the users file could not hold it.
    UnsuitablePassword(&'static str),
    /// Hashing failed (random salt unavailable or a hashing library error).
    Hashing(String),
}

/// What is wrong with one line of the users file. Never carries password or hash text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineProblem {
    /// Fewer than the two mandatory fields `user:password`.
    MissingPassword,
    /// The user field is empty.
    EmptyUser,
    /// `{NAME}` is not a supported scheme; the name is kept only when it looks like one.
    UnknownScheme(Option<String>),
    /// `{SCHEME}` followed by nothing.
    EmptyHash(String),
    /// The password is not a hash this server recognises; holds the `{SCHEME}`, if any.
    UnrecognisedHash(Option<String>),
    /// The hash is of another family than the declared scheme, which Dovecot would reject too.
    SchemeMismatch {
        /// The scheme written in braces.
        declared: Scheme,
        /// The scheme the hash itself names.
        found: Scheme,
    },
    /// A `{SCRAM-SHA-256}` password that is not `iterations,salt,StoredKey,ServerKey`.
    InvalidScram(&'static str),
    /// The uid field is not a number.
    InvalidUid(String),
    /// The gid field is not a number.
    InvalidGid(String),
    /// The `mode=` extra field is neither `keep` nor `delete`.
    InvalidMode(String),
    /// The user was already defined on an earlier line.
    DuplicateUser(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Read { path, source } => {
                write!(f, "users file {}: {source}", path.display())
            }
            AuthError::Line {
                path: Some(path),
                line,
                problem,
            } => write!(f, "users file {} line {line}: {problem}", path.display()),
            AuthError::Line {
                path: None,
                line,
                problem,
            } => write!(f, "users file line {line}: {problem}"),
            AuthError::UnknownScheme(name) => write!(f, "unknown password scheme {name:?}"),
            AuthError::UnsuitablePassword(why) => write!(f, "unsuitable password: {why}"),
            AuthError::Hashing(why) => write!(f, "password hashing failed: {why}"),
        }
    }
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineProblem::MissingPassword => {
                f.write_str("expected at least user:password (fields are separated by ':')")
            }
            LineProblem::EmptyUser => f.write_str("empty user name"),
            LineProblem::UnknownScheme(Some(name)) => {
                write!(f, "unknown password scheme {{{name}}}")
            }
            LineProblem::UnknownScheme(None) => f.write_str("unknown password scheme"),
            LineProblem::EmptyHash(scheme) => write!(f, "nothing after {{{scheme}}}"),
            LineProblem::UnrecognisedHash(Some(scheme)) => {
                write!(f, "the {{{scheme}}} password is not a recognised hash")
            }
            LineProblem::UnrecognisedHash(None) => {
                f.write_str("password has no {SCHEME} prefix and is not a recognised crypt hash")
            }
            LineProblem::SchemeMismatch { declared, found } => {
                write!(f, "{{{declared}}} password holds a {found} hash")
            }
            LineProblem::InvalidScram(why) => {
                write!(f, "invalid {{SCRAM-SHA-256}} password: {why}")
            }
            LineProblem::InvalidUid(uid) => write!(f, "uid {uid:?} is not a number"),
            LineProblem::InvalidGid(gid) => write!(f, "gid {gid:?} is not a number"),
            LineProblem::InvalidMode(mode) => {
                write!(f, "mode {mode:?} is not valid (expected keep or delete)")
            }
            LineProblem::DuplicateUser(name) => write!(f, "user {name:?} is already defined"),
        }
    }
}

impl Users {
    /// Reads and parses a users file; errors name the file and line.
    pub fn load(path: &Path) -> Result<Users, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        Users::parse(&text).map_err(|err| match err {
            AuthError::Line { line, problem, .. } => AuthError::Line {
                path: Some(path.to_owned()),
                line,
                problem,
            },
            other => other,
        })
    }

    /// Parses the text of a users file.
    pub fn parse(text: &str) -> Result<Users, AuthError> {
        let mut by_name = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let line_error = |problem| AuthError::Line {
                path: None,
                line: index + 1,
                problem,
            };
            let entry = parse_line(line).map_err(line_error)?;
            if by_name.contains_key(&entry.name) {
                return Err(line_error(LineProblem::DuplicateUser(entry.name)));
            }
            by_name.insert(entry.name.clone(), entry);
        }
        Ok(Users { by_name })
    }

    /// The user with exactly this name.
    pub fn get(&self, name: &str) -> Option<&UserEntry> {
        self.by_name.get(name)
    }

    /// Resolves a login name: an exact user name always wins; otherwise `user+device` and
    /// `user+device@domain` name the device of user `user` / `user@domain`. Only the first
    /// `+` splits, and an invalid device name resolves to nothing.
    pub fn resolve(&self, login: &str) -> Option<Resolved<'_>> {
        if let Some(entry) = self.get(login) {
            return Some(Resolved {
                entry,
                device: None,
            });
        }
        let (user, device) = split_device(login)?;
        let entry = self.get(&user)?;
        Some(Resolved {
            entry,
            device: Some(device.to_owned()),
        })
    }

    /// What AUTH SCRAM-SHA-256 or CRAM-MD5 checks `login` against. An unknown login, or a user
    /// whose stored secret cannot serve the mechanism, gets stand-in credentials that fail
    /// only at the proof, keyed on the user name the login would belong to: `bob` and
    /// `bob+phone` then look alike whether or not bob exists, as they do for a real user.
    /// Cheap; the cost is in `Exchange::credentials`.
    pub fn sasl_credentials(&self, login: &str) -> SaslCredentials {
        match self.resolve(login) {
            Some(resolved) => {
                SaslCredentials::new(&resolved.entry.name, resolved.entry.password.as_ref())
            }
            None => match split_device(login) {
                Some((user, _)) => SaslCredentials::new(&user, None),
                None => SaslCredentials::new(login, None),
            },
        }
    }

    /// Number of users.
    /// Every user, in no particular order (for `pop3d check`).
    pub fn iter(&self) -> impl Iterator<Item = &UserEntry> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when the file defined no users.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Splits `user+device` / `user+device@domain` into `user` / `user@domain` and the device.
/// Only the first `+` splits, and an invalid device name splits nothing.
fn split_device(login: &str) -> Option<(String, &str)> {
    let (local, rest) = login.split_once('+')?;
    let (device, domain) = rest.split_at(rest.find('@').unwrap_or(rest.len()));
    is_valid_device(device).then(|| (format!("{local}{domain}"), device))
}

/// Device names end up in file names, so they are kept to a safe, short alphabet.
fn is_valid_device(device: &str) -> bool {
    !device.is_empty()
        && device.len() <= MAX_DEVICE_LEN
        && !device.starts_with('.')
        && device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_line(line: &str) -> Result<UserEntry, LineProblem> {
    // Like Dovecot, everything after the shell field is extra fields, colons included.
    let mut fields = line.splitn(8, ':');
    let name = fields.next().unwrap_or_default();
    let password = fields.next().ok_or(LineProblem::MissingPassword)?;
    let [uid, gid, _gecos, home, _shell, extra] =
        std::array::from_fn(|_| fields.next().unwrap_or_default());

    if name.is_empty() {
        return Err(LineProblem::EmptyUser);
    }
    let password = if password.is_empty() {
        None
    } else {
        Some(StoredPassword::parse(password)?)
    };
    let uid = parse_id(uid, LineProblem::InvalidUid)?;
    let gid = parse_id(gid, LineProblem::InvalidGid)?;
    let home = (!home.is_empty()).then(|| PathBuf::from(home));

    let mut mode = None;
    let mut extra_fields = Vec::new();
    for field in extra.split_ascii_whitespace() {
        let (key, value) = field.split_once('=').unwrap_or((field, ""));
        if key == "mode" {
            let parsed = value
                .parse()
                .map_err(|_| LineProblem::InvalidMode(value.to_owned()))?;
            mode = Some(parsed);
        } else {
            extra_fields.push((key.to_owned(), value.to_owned()));
        }
    }

    Ok(UserEntry {
        name: name.to_owned(),
        password,
        uid,
        gid,
        home,
        mode,
        extra: extra_fields,
    })
}

fn parse_id(field: &str, invalid: fn(String) -> LineProblem) -> Result<Option<u32>, LineProblem> {
    if field.is_empty() {
        return Ok(None);
    }
    field
        .parse()
        .map(Some)
        .map_err(|_| invalid(field.to_owned()))
}

/// Checks a USER/PASS password. An unknown user (`None`) or one without a password costs the
/// same as a wrong password for the default scheme, so response time does not reveal which
/// users exist.
pub fn verify_password(entry: Option<&UserEntry>, password: &[u8]) -> bool {
    let Some((entry, stored)) = entry.and_then(|e| e.password.as_ref().map(|p| (e, p))) else {
        password::spend_dummy_verification(password);
        return false;
    };
    stored
        .matches(password)
        .unwrap_or_else(|password::Malformed| {
            log::warn!(
                "user {:?}: stored {} password hash is malformed",
                entry.name,
                stored.scheme()
            );
            false
        })
}

/// Whether APOP can work for this user: it needs the plaintext secret (PLAIN/CLEAR).
pub fn supports_apop(entry: Option<&UserEntry>) -> bool {
    plaintext_of(entry).is_some()
}

/// Checks an APOP digest (RFC 1939 section 7): hex MD5 of the greeting's timestamp banner
/// followed by the plaintext secret. Always false for users whose secret is hashed.
pub fn verify_apop(entry: Option<&UserEntry>, banner: &str, digest_hex: &str) -> bool {
    password::apop_matches(plaintext_of(entry), banner, digest_hex)
}

fn plaintext_of(entry: Option<&UserEntry>) -> Option<&str> {
    entry?.password.as_ref()?.plaintext()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "alice:{PLAIN}secret:1000:1000:Alice A.:/home/alice:/bin/false:mode=keep userdb_quota_rule=*:storage=1G nopassword";

    fn line_problem(text: &str) -> (usize, LineProblem) {
        match Users::parse(text) {
            Err(AuthError::Line { line, problem, .. }) => (line, problem),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn parses_all_fields() {
        let users = Users::parse(ALICE).expect("valid file");
        let alice = users.get("alice").expect("alice");
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.uid, Some(1000));
        assert_eq!(alice.gid, Some(1000));
        assert_eq!(alice.home, Some(PathBuf::from("/home/alice")));
        assert_eq!(alice.mode, Some(Mode::Keep));
        assert_eq!(
            alice.extra,
            vec![
                ("userdb_quota_rule".to_owned(), "*:storage=1G".to_owned()),
                ("nopassword".to_owned(), String::new()),
            ]
        );
        let stored = alice.password.as_ref().expect("password");
        assert_eq!(stored.scheme(), Scheme::Plain);
        assert!(verify_password(Some(alice), b"secret"));
    }

    #[test]
    fn parses_few_fields_comments_and_blank_lines() {
        let text = "# users\n\n   \n  # indented comment\r\nbob:{CLEAR}pw\r\ncarol::::::\ndave:{PLAIN}x::::/srv/dave\n";
        let users = Users::parse(text).expect("valid file");
        assert_eq!(users.len(), 3);
        let bob = users.get("bob").expect("bob");
        assert_eq!(
            (bob.uid, bob.gid, &bob.home, bob.mode),
            (None, None, &None, None)
        );
        assert!(bob.extra.is_empty());
        assert!(
            verify_password(Some(bob), b"pw"),
            "CRLF must not end up in the password"
        );
        assert!(users.get("carol").expect("carol").password.is_none());
        assert_eq!(
            users.get("dave").expect("dave").home,
            Some(PathBuf::from("/srv/dave"))
        );
        assert!(Users::parse("").expect("empty file").is_empty());
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let dir = std::env::temp_dir().join(format!("pop3d-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let good = dir.join("good");
        std::fs::write(&good, "alice:{PLAIN}a\n").expect("write");
        assert_eq!(Users::load(&good).expect("loads").len(), 1);

        let bad = dir.join("bad");
        std::fs::write(&bad, "alice:{PLAIN}a\n\n# x\n\n\n\nbob:{FOO}hunter2\n").expect("write");
        let message = Users::load(&bad).expect_err("bad scheme").to_string();
        assert_eq!(
            message,
            format!(
                "users file {} line 7: unknown password scheme {{FOO}}",
                bad.display()
            )
        );
        assert!(!message.contains("hunter2"));

        let missing = Users::load(&dir.join("missing")).expect_err("missing file");
        assert!(matches!(missing, AuthError::Read { .. }));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn every_load_error_names_its_line() {
        let cases = [
            ("a:{FOO}x", LineProblem::UnknownScheme(Some("FOO".into()))),
            ("a:{my secret}x", LineProblem::UnknownScheme(None)),
            ("a:{PLAIN}", LineProblem::EmptyHash("PLAIN".into())),
            ("a:hunter2", LineProblem::UnrecognisedHash(None)),
            (
                "a:{CRYPT}$1$abc$def",
                LineProblem::UnrecognisedHash(Some("CRYPT".into())),
            ),
            (
                "a:{ARGON2I}$6$salt$hash",
                LineProblem::SchemeMismatch {
                    declared: Scheme::Argon2i,
                    found: Scheme::Sha512Crypt,
                },
            ),
            (
                "a:{SCRAM-SHA-256}4096,c2FsdA==,a2V5",
                LineProblem::InvalidScram("expected iterations,salt,StoredKey,ServerKey"),
            ),
            ("a:{PLAIN}x:10x", LineProblem::InvalidUid("10x".into())),
            ("a:{PLAIN}x:1:-1", LineProblem::InvalidGid("-1".into())),
            (
                "a:{PLAIN}x::::::mode=archive",
                LineProblem::InvalidMode("archive".into()),
            ),
            (
                "a:{PLAIN}x::::::mode",
                LineProblem::InvalidMode(String::new()),
            ),
            ("alice", LineProblem::MissingPassword),
            (":{PLAIN}x", LineProblem::EmptyUser),
        ];
        for (line, expected) in cases {
            let text = format!("# comment\nok:{{PLAIN}}y\n{line}\n");
            assert_eq!(line_problem(&text), (3, expected), "line {line:?}");
        }
        assert_eq!(
            line_problem("a:{PLAIN}x\nb:\na:{PLAIN}y"),
            (3, LineProblem::DuplicateUser("a".into()))
        );
    }

    #[test]
    fn errors_never_show_the_password() {
        for line in [
            "a:hunter2",
            "a:{CRYPT}hunter2",
            "a:{hunter2",
            "a:{ARGON2ID}$2y$hunter2",
            "a:{SCRAM-SHA-256}4096,hunter2,hunter2,hunter2",
        ] {
            let message = Users::parse(line).expect_err(line).to_string();
            assert!(!message.contains("hunter2"), "{message}");
            assert!(message.starts_with("users file line 1: "), "{message}");
        }
        let users = Users::parse("a:{PLAIN}hunter2").expect("valid");
        assert!(!format!("{users:?}").contains("hunter2"));
    }

    #[test]
    fn resolve_splits_device_suffixes() {
        let users =
            Users::parse("alice:{PLAIN}a\nalice@example.com:{PLAIN}b\na+b:{PLAIN}c\na:{PLAIN}d\n")
                .expect("valid");
        let resolve = |login: &str| {
            users
                .resolve(login)
                .map(|r| (r.entry.name.clone(), r.device))
        };
        let found =
            |name: &str, device: Option<&str>| Some((name.to_owned(), device.map(String::from)));

        assert_eq!(resolve("alice"), found("alice", None));
        assert_eq!(resolve("alice+laptop"), found("alice", Some("laptop")));
        assert_eq!(
            resolve("alice+laptop@example.com"),
            found("alice@example.com", Some("laptop"))
        );
        assert_eq!(
            resolve("alice+Pixel_7.work-2"),
            found("alice", Some("Pixel_7.work-2"))
        );
        assert_eq!(resolve("a+b"), found("a+b", None), "an exact entry wins");
        assert_eq!(resolve("a+c"), found("a", Some("c")));
        let longest = "d".repeat(MAX_DEVICE_LEN);
        assert_eq!(
            resolve(&format!("alice+{longest}")),
            found("alice", Some(&longest))
        );

        for login in [
            "alice+",
            "alice+@example.com",
            "alice+../x",
            "alice+.hidden",
            "alice+a/b",
            "alice+a b",
            "alice+lap+top",
            "alice+laptop@other.org",
            "bob+laptop",
            "+laptop",
            "Alice",
            &format!("alice+{longest}d"),
        ] {
            assert_eq!(resolve(login), None, "{login:?}");
        }
    }

    #[test]
    fn unknown_user_and_passwordless_user_never_verify() {
        let users = Users::parse("carol:\n").expect("valid");
        assert!(!verify_password(None, b""));
        assert!(!verify_password(None, b"anything"));
        assert!(!verify_password(users.get("carol"), b""));
        assert!(!supports_apop(None));
        assert!(!supports_apop(users.get("carol")));
    }

    #[test]
    fn apop_rfc1939_example() {
        let users = Users::parse("mrose:{PLAIN}tanstaaf\nhashed:{SHA256-CRYPT}$5$y/r94uo8vWGdUlsX$fc4dWJxZ9azC0UObRpIzQx0DB/72b/OxDaCdrO7t8f0\n").expect("valid");
        let mrose = users.get("mrose");
        let banner = "<1896.697170952@dbc.mtview.ca.us>";
        let digest = "c4c9334bac560ecc979e58001b3e22fb";
        assert!(supports_apop(mrose));
        assert!(verify_apop(mrose, banner, digest));
        assert!(verify_apop(mrose, banner, &digest.to_ascii_uppercase()));
        assert!(!verify_apop(
            mrose,
            "<1897.697170952@dbc.mtview.ca.us>",
            digest
        ));
        assert!(!verify_apop(
            mrose,
            banner,
            "c4c9334bac560ecc979e58001b3e22f"
        ));
        assert!(!verify_apop(
            mrose,
            banner,
            "c4c9334bac560ecc979e58001b3e22fbb"
        ));
        assert!(!verify_apop(
            mrose,
            banner,
            "c4c9334bac560ecc979e58001b3e22fб"
        ));
        assert!(!verify_apop(None, banner, digest));
        let hashed = users.get("hashed");
        assert!(!supports_apop(hashed));
        assert!(!verify_apop(hashed, banner, digest));
    }
}
