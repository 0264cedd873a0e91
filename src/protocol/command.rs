//! Parsing one POP3 command line (without its line end) into a typed command.

use std::fmt;

/// A 1-based message number as the client wrote it, already checked to be a number.
pub type MsgNum = u64;

/// A parsed command. Arguments borrow from the line they came from.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    User(&'a str),
    Pass(&'a str),
    Apop {
        user: &'a str,
        digest: &'a str,
    },
    Quit,
    Stat,
    List(Option<MsgNum>),
    Retr(MsgNum),
    Dele(MsgNum),
    Noop,
    Rset,
    Top {
        msg: MsgNum,
        lines: u64,
    },
    Uidl(Option<MsgNum>),
    Capa,
    /// RFC 2595 §4: start TLS on a plain connection.
    Stls,
    /// RFC 5034: `AUTH` alone lists the mechanisms; `AUTH MECH [initial-response]` starts one.
    Auth(Option<(&'a str, Option<&'a str>)>),
}

/// Why a line is not a command we can run; its `Display` is the `-ERR` text.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    Empty,
    NulByte,
    StrayCarriageReturn,
    NotUtf8,
    Unknown(String),
    MissingArgument(&'static str),
    TooManyArguments(&'static str),
    BadNumber(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => f.write_str("Empty command line"),
            ParseError::NulByte => f.write_str("NUL byte in command line"),
            ParseError::StrayCarriageReturn => f.write_str("Bare CR in command line"),
            ParseError::NotUtf8 => f.write_str("Command line is not valid UTF-8"),
            ParseError::Unknown(word) => write!(f, "Unknown command: {word}"),
            ParseError::MissingArgument(what) => write!(f, "Missing argument: {what}"),
            ParseError::TooManyArguments(cmd) => write!(f, "Too many arguments for {cmd}"),
            ParseError::BadNumber(arg) => write!(f, "Invalid number: {arg}"),
        }
    }
}

/// The longest keyword we echo back in an "unknown command" reply, so replies stay short.
const ECHO_LIMIT: usize = 16;

/// Parses a command line. Keywords are case-insensitive (RFC 1939 §3); USER and PASS take the
/// rest of the line as their argument, so a password may contain spaces.
pub fn parse(line: &[u8]) -> Result<Command<'_>, ParseError> {
    if line.contains(&0) {
        return Err(ParseError::NulByte);
    }
    if line.contains(&b'\r') {
        return Err(ParseError::StrayCarriageReturn);
    }
    let line = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
    let (keyword, rest) = match line.split_once(' ') {
        Some((k, r)) => (k, r),
        None => (line, ""),
    };
    if keyword.is_empty() {
        return Err(ParseError::Empty);
    }
    let upper = keyword.to_ascii_uppercase();
    let mut args = rest.split_ascii_whitespace();
    let command = match upper.as_str() {
        "USER" => Command::User(whole_rest(rest, "user name")?),
        "PASS" => Command::Pass(whole_rest(rest, "password")?),
        "APOP" => {
            let user = args
                .next()
                .ok_or(ParseError::MissingArgument("user name"))?;
            let digest = args.next().ok_or(ParseError::MissingArgument("digest"))?;
            no_more(args, "APOP")?;
            Command::Apop { user, digest }
        }
        "QUIT" => no_more(args, "QUIT").map(|_| Command::Quit)?,
        "STAT" => no_more(args, "STAT").map(|_| Command::Stat)?,
        "NOOP" => no_more(args, "NOOP").map(|_| Command::Noop)?,
        "RSET" => no_more(args, "RSET").map(|_| Command::Rset)?,
        "CAPA" => no_more(args, "CAPA").map(|_| Command::Capa)?,
        "STLS" => no_more(args, "STLS").map(|_| Command::Stls)?,
        "AUTH" => match args.next() {
            None => Command::Auth(None),
            Some(mechanism) => {
                let initial = args.next();
                no_more(args, "AUTH")?;
                Command::Auth(Some((mechanism, initial)))
            }
        },
        "LIST" => Command::List(optional_number(args, "LIST")?),
        "UIDL" => Command::Uidl(optional_number(args, "UIDL")?),
        "RETR" => Command::Retr(one_number(args, "RETR")?),
        "DELE" => Command::Dele(one_number(args, "DELE")?),
        "TOP" => {
            let msg = number(
                args.next()
                    .ok_or(ParseError::MissingArgument("message number"))?,
            )?;
            let lines = args
                .next()
                .ok_or(ParseError::MissingArgument("line count"))?;
            // A line count past u64 is no different from "all of it".
            let lines = match number(lines) {
                Ok(n) => n,
                Err(_) if is_decimal(lines) => u64::MAX,
                Err(e) => return Err(e),
            };
            no_more(args, "TOP")?;
            Command::Top { msg, lines }
        }
        _ => {
            return Err(ParseError::Unknown(
                keyword.chars().take(ECHO_LIMIT).collect(),
            ));
        }
    };
    Ok(command)
}

fn whole_rest<'a>(rest: &'a str, what: &'static str) -> Result<&'a str, ParseError> {
    if rest.is_empty() {
        Err(ParseError::MissingArgument(what))
    } else {
        Ok(rest)
    }
}

fn no_more<'a>(
    mut args: impl Iterator<Item = &'a str>,
    command: &'static str,
) -> Result<(), ParseError> {
    match args.next() {
        Some(_) => Err(ParseError::TooManyArguments(command)),
        None => Ok(()),
    }
}

fn optional_number<'a>(
    mut args: impl Iterator<Item = &'a str>,
    command: &'static str,
) -> Result<Option<MsgNum>, ParseError> {
    let Some(arg) = args.next() else {
        return Ok(None);
    };
    let n = number(arg)?;
    no_more(args, command)?;
    Ok(Some(n))
}

fn one_number<'a>(
    mut args: impl Iterator<Item = &'a str>,
    command: &'static str,
) -> Result<MsgNum, ParseError> {
    let arg = args
        .next()
        .ok_or(ParseError::MissingArgument("message number"))?;
    let n = number(arg)?;
    no_more(args, command)?;
    Ok(n)
}

fn is_decimal(arg: &str) -> bool {
    !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit())
}

/// Decimal digits only: `u64::from_str` would also take a leading '+'.
fn number(arg: &str) -> Result<u64, ParseError> {
    let bad = || ParseError::BadNumber(arg.chars().take(ECHO_LIMIT).collect());
    if !is_decimal(arg) {
        return Err(bad());
    }
    arg.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(parse(b"stat"), Ok(Command::Stat));
        assert_eq!(parse(b"StAt"), Ok(Command::Stat));
        assert_eq!(parse(b"capa"), Ok(Command::Capa));
        assert_eq!(parse(b"quit"), Ok(Command::Quit));
        assert_eq!(parse(b"NOOP"), Ok(Command::Noop));
        assert_eq!(parse(b"rset"), Ok(Command::Rset));
        assert_eq!(parse(b"stls"), Ok(Command::Stls));
        assert_eq!(parse(b"STLS x"), Err(ParseError::TooManyArguments("STLS")));
        assert_eq!(parse(b"auth"), Ok(Command::Auth(None)));
        assert_eq!(
            parse(b"AUTH PLAIN"),
            Ok(Command::Auth(Some(("PLAIN", None))))
        );
        assert_eq!(
            parse(b"AUTH PLAIN AGFsaWNl"),
            Ok(Command::Auth(Some(("PLAIN", Some("AGFsaWNl")))))
        );
        assert_eq!(
            parse(b"AUTH PLAIN a b"),
            Err(ParseError::TooManyArguments("AUTH"))
        );
    }

    #[test]
    fn user_and_pass_take_the_rest_of_the_line() {
        assert_eq!(parse(b"USER alice"), Ok(Command::User("alice")));
        assert_eq!(parse(b"PASS two words "), Ok(Command::Pass("two words ")));
        assert_eq!(parse(b"PASS"), Err(ParseError::MissingArgument("password")));
        assert_eq!(
            parse(b"USER "),
            Err(ParseError::MissingArgument("user name"))
        );
    }

    #[test]
    fn message_numbers() {
        assert_eq!(parse(b"RETR 1"), Ok(Command::Retr(1)));
        assert_eq!(parse(b"LIST"), Ok(Command::List(None)));
        assert_eq!(parse(b"list 7"), Ok(Command::List(Some(7))));
        assert_eq!(parse(b"UIDL 0"), Ok(Command::Uidl(Some(0))));
        assert_eq!(
            parse(b"RETR"),
            Err(ParseError::MissingArgument("message number"))
        );
        assert_eq!(parse(b"RETR x"), Err(ParseError::BadNumber("x".into())));
        assert_eq!(parse(b"RETR -1"), Err(ParseError::BadNumber("-1".into())));
        assert_eq!(parse(b"RETR +1"), Err(ParseError::BadNumber("+1".into())));
        assert_eq!(
            parse(b"DELE 99999999999999999999999"),
            Err(ParseError::BadNumber("9999999999999999".into()))
        );
        assert_eq!(
            parse(b"DELE 1 2"),
            Err(ParseError::TooManyArguments("DELE"))
        );
    }

    #[test]
    fn top_takes_a_message_and_a_line_count() {
        assert_eq!(parse(b"TOP 2 10"), Ok(Command::Top { msg: 2, lines: 10 }));
        assert_eq!(
            parse(b"TOP 2 999999999999999999999999"),
            Ok(Command::Top {
                msg: 2,
                lines: u64::MAX
            })
        );
        assert_eq!(
            parse(b"TOP 2"),
            Err(ParseError::MissingArgument("line count"))
        );
        assert_eq!(parse(b"TOP 2 -1"), Err(ParseError::BadNumber("-1".into())));
    }

    #[test]
    fn apop_needs_two_arguments() {
        assert_eq!(
            parse(b"APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
            Ok(Command::Apop {
                user: "mrose",
                digest: "c4c9334bac560ecc979e58001b3e22fb"
            })
        );
        assert_eq!(
            parse(b"APOP mrose"),
            Err(ParseError::MissingArgument("digest"))
        );
    }

    #[test]
    fn bad_lines_are_errors_not_panics() {
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b" STAT"), Err(ParseError::Empty));
        assert_eq!(parse(b"ST\0AT"), Err(ParseError::NulByte));
        assert_eq!(parse(b"STAT\rX"), Err(ParseError::StrayCarriageReturn));
        assert_eq!(parse(b"\xff\xfe"), Err(ParseError::NotUtf8));
        assert_eq!(parse(b"HELO x"), Err(ParseError::Unknown("HELO".into())));
        let long = "X".repeat(200);
        assert_eq!(
            parse(long.as_bytes()),
            Err(ParseError::Unknown("X".repeat(16)))
        );
        assert_eq!(
            parse("ÄÖÜ".as_bytes()),
            Err(ParseError::Unknown("ÄÖÜ".into()))
        );
    }
}
