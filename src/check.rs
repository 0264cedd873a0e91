//! `pop3d check`: validates a configuration before it is put in service, with messages
//! precise enough to fix each problem.

use std::path::PathBuf;

use crate::auth::Users;
use crate::config::{ConfigSource, FileConfig};
use crate::server::tls;
use crate::store::template;

/// Checks everything that can be checked without binding ports or opening mailboxes, and
/// returns a summary, or every problem found.
pub fn run(config_file: PathBuf) -> Result<String, String> {
    let source = ConfigSource {
        file: Some(config_file.clone()),
        flags: FileConfig::default(),
    };
    let config = source.load()?;
    let mut problems = Vec::new();
    let mut summary = vec![format!("config {}: parsed", config_file.display())];
    match Users::load(&config.users_file) {
        Ok(users) => {
            let mut homeless = Vec::new();
            for entry in users.iter() {
                if let Err(e) = template::maildir_path(
                    config.maildir.as_deref(),
                    &entry.name,
                    entry.home.as_deref(),
                ) {
                    homeless.push(format!("{} ({e})", entry.name));
                }
            }
            homeless.sort();
            if homeless.is_empty() {
                summary.push(format!(
                    "users file {}: {} users",
                    config.users_file.display(),
                    users.len()
                ));
            } else {
                problems.push(format!(
                    "users without a usable Maildir: {}",
                    homeless.join(", ")
                ));
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    match &config.tls {
        Some(files) => match tls::Acceptor::load(&files.cert, &files.key) {
            Ok(_) => summary.push(format!(
                "certificate {}: loads and fits its key ({})",
                files.cert.display(),
                tls::BACKEND
            )),
            Err(e) => problems.push(e),
        },
        None => summary
            .push("TLS: off (no tls_cert/tls_key); plaintext logins only from loopback".into()),
    }
    if let Some(user) = &config.user {
        match nix::unistd::User::from_name(user) {
            Ok(Some(_)) => summary.push(format!("runs as user {user}")),
            Ok(None) => problems.push(format!("no such user: {user}")),
            Err(e) => problems.push(format!("cannot look up user {user}: {e}")),
        }
    }
    if let Some(group) = &config.group {
        match nix::unistd::Group::from_name(group) {
            Ok(Some(_)) => {}
            Ok(None) => problems.push(format!("no such group: {group}")),
            Err(e) => problems.push(format!("cannot look up group {group}: {e}")),
        }
    }
    if problems.is_empty() {
        summary.push("configuration OK".into());
        Ok(summary.join("\n"))
    } else {
        Err(problems.join("\n"))
    }
}
