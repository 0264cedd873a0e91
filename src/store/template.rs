//! Where a user's Maildir is: the `--maildir` template, or the home in the users file.

use std::path::{Path, PathBuf};

/// Why no Maildir path could be made for a user.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// The name could climb out of the template (`/`, `..`, control characters...).
    UnsafeName,
    /// `~` or `%h` in the template but no home for this user.
    NoHome,
    /// No template and no home: nowhere to look.
    NoMaildir,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::UnsafeName => "user name not usable in a path",
            PathError::NoHome => "the Maildir template needs a home but the user has none",
            PathError::NoMaildir => "no Maildir template and no home for this user",
        })
    }
}

/// Whether a user name can go into a path without escaping the template.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.contains("..")
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| !c.is_control() && c != '/' && c != '\\')
}

/// Expands a template: `%u` user name, `%n` its local part, `%d` its domain, `%h` home,
/// `%%` a percent sign, and a leading `~/` the home. Without a template the Maildir is
/// `<home>/Maildir`, as Dovecot's `mail_location = maildir:~/Maildir`.
pub fn maildir_path(
    template: Option<&str>,
    user: &str,
    home: Option<&Path>,
) -> Result<PathBuf, PathError> {
    if !is_safe_name(user) {
        return Err(PathError::UnsafeName);
    }
    let Some(template) = template else {
        return home.map(|h| h.join("Maildir")).ok_or(PathError::NoMaildir);
    };
    let (local, domain) = user.split_once('@').unwrap_or((user, ""));
    let home_str = || {
        home.map(|h| h.to_string_lossy().into_owned())
            .ok_or(PathError::NoHome)
    };
    let mut path = String::with_capacity(template.len() + user.len());
    let mut rest = template;
    if let Some(after) = rest.strip_prefix("~/") {
        path.push_str(&home_str()?);
        path.push('/');
        rest = after;
    }
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            path.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => path.push_str(user),
            Some('n') => path.push_str(local),
            Some('d') => path.push_str(domain),
            Some('h') => path.push_str(&home_str()?),
            Some('%') => path.push('%'),
            Some(other) => {
                path.push('%');
                path.push(other);
            }
            None => path.push('%'),
        }
    }
    Ok(PathBuf::from(path))
}

/// Checks a template when the configuration is loaded, so typos fail at start, not at login.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('u' | 'n' | 'd' | 'h' | '%') => {}
                Some(other) => {
                    return Err(format!("unknown variable %{other} in Maildir template"));
                }
                None => return Err("Maildir template ends with a lone %".into()),
            }
        }
    }
    if !template.starts_with('/') && !template.starts_with("~/") && !template.starts_with("%h") {
        return Err("Maildir template must be an absolute path, or start with ~/ or %h".into());
    }
    if !template.contains("%u")
        && !template.contains("%n")
        && !template.contains('~')
        && !template.contains("%h")
    {
        return Err(
            "Maildir template must contain %u, %n, %h or ~ so users get separate Maildirs".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables() {
        let t = Some("/var/mail/%d/%n/Maildir");
        assert_eq!(
            maildir_path(t, "alice@example.com", None),
            Ok("/var/mail/example.com/alice/Maildir".into())
        );
        assert_eq!(
            maildir_path(t, "bob", None),
            Ok("/var/mail//bob/Maildir".into())
        );
        assert_eq!(
            maildir_path(Some("/m/%u/%%"), "a@b", None),
            Ok("/m/a@b/%".into())
        );
        let home = Path::new("/home/alice");
        assert_eq!(
            maildir_path(Some("~/Maildir"), "alice", Some(home)),
            Ok("/home/alice/Maildir".into())
        );
        assert_eq!(
            maildir_path(Some("%h/mail"), "alice", Some(home)),
            Ok("/home/alice/mail".into())
        );
        assert_eq!(
            maildir_path(None, "alice", Some(home)),
            Ok("/home/alice/Maildir".into())
        );
        assert_eq!(maildir_path(None, "alice", None), Err(PathError::NoMaildir));
        assert_eq!(
            maildir_path(Some("~/Maildir"), "alice", None),
            Err(PathError::NoHome)
        );
    }

    #[test]
    fn refuses_names_that_escape() {
        for bad in [
            "", "../root", "a/b", "..", ".", ".hidden", "a\0b", "a\nb", "a\\b", "x..y",
        ] {
            assert_eq!(
                maildir_path(Some("/var/mail/%u"), bad, None),
                Err(PathError::UnsafeName),
                "{bad:?}"
            );
        }
        assert!(is_safe_name("alice.smith@example.com"));
    }

    #[test]
    fn checks_templates() {
        assert!(check_template("/var/mail/%d/%n/Maildir").is_ok());
        assert!(check_template("~/Maildir").is_ok());
        assert!(check_template("/var/mail/%x").is_err());
        assert!(check_template("/var/mail/%").is_err());
        assert!(check_template("relative/%u").is_err());
        assert!(check_template("/var/mail/shared").is_err());
    }
}
