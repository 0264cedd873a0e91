//! Dropping root once the listeners are bound, before any mailbox or client byte is touched.

use nix::unistd::{Gid, Group, Uid, User, getegid, geteuid, setgid, setgroups, setuid};

/// Switches to `user` (and `group`, else the user's primary group) if running as root, and
/// refuses to go on as root unless `allow_root`.
pub fn drop_privileges(
    user: Option<&str>,
    group: Option<&str>,
    allow_root: bool,
) -> Result<(), String> {
    if let Some(name) = user {
        let account = User::from_name(name)
            .map_err(|e| format!("cannot look up user {name}: {e}"))?
            .ok_or_else(|| format!("no such user: {name}"))?;
        let gid = match group {
            Some(group_name) => {
                Group::from_name(group_name)
                    .map_err(|e| format!("cannot look up group {group_name}: {e}"))?
                    .ok_or_else(|| format!("no such group: {group_name}"))?
                    .gid
            }
            None => account.gid,
        };
        if geteuid().is_root() {
            // Supplementary groups first, while we may still change them; then the group,
            // then the user, after which none of this can be undone.
            setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
            setgid(gid).map_err(|e| format!("setgid {gid}: {e}"))?;
            setuid(account.uid).map_err(|e| format!("setuid {}: {e}", account.uid))?;
        } else if geteuid() != account.uid || getegid() != gid {
            return Err(format!(
                "--user {name} needs root to switch to; running as uid {}",
                geteuid()
            ));
        }
        if Uid::current() != account.uid || Gid::current() != gid {
            return Err(format!("could not switch to user {name}"));
        }
        log::info!("running as user {name} (uid {}, gid {gid})", account.uid);
    } else if group.is_some() {
        return Err("--group needs --user".into());
    }
    if geteuid().is_root() && !allow_root {
        return Err(
            "refusing to serve mail as root: pass --user USER (the owner of the Maildirs) to \
             switch after binding the ports, or --allow-root"
                .into(),
        );
    }
    Ok(())
}
