//! `pop3d demo`: a demo user and Maildir in a temporary folder, served on loopback, so a
//! newcomer can try a client in one command.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, TlsFiles};
use crate::server::tls;
use crate::session::Mode;

const SAMPLES: [&str; 3] = [
    "From: pop3d <postmaster@example.com>\nTo: demo@example.com\nSubject: Welcome to pop3d\n\
     Date: Thu, 26 Nov 2026 12:00:00 +0000\nMessage-ID: <welcome@example.com>\n\n\
     This mailbox is served by pop3d in keep mode: DELE hides a message from this\n\
     login only, and QUIT leaves it on the server for your other devices.\n",
    "From: Alice <alice@example.com>\nTo: demo@example.com\nSubject: Dots and lines\n\
     Date: Thu, 26 Nov 2026 12:01:00 +0000\nMessage-ID: <dots@example.com>\n\n\
     The next line is a single dot, which POP3 sends as two:\n.\nAnd this one starts with a dot: .hidden\n",
    "From: =?UTF-8?Q?J=C3=BCrgen?= <juergen@example.com>\nTo: demo@example.com\n\
     Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\nDate: Thu, 26 Nov 2026 12:02:00 +0000\n\
     Message-ID: <utf8@example.com>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\
     Content-Transfer-Encoding: 8bit\n\nViele Grüße aus dem Maildir!\n",
];

/// Creates the demo folder and serves it until the process is stopped.
pub fn run(listen: SocketAddr, listen_tls: SocketAddr) -> Result<(), String> {
    let root = std::env::temp_dir().join(format!("pop3d-demo-{}", std::process::id()));
    let users_file = root.join("users");
    let maildir = root.join("mail/demo/Maildir");
    let cert = root.join("cert.pem");
    let key = root.join("key.pem");
    populate(&users_file, &maildir, &cert, &key)
        .map_err(|e| format!("cannot create the demo in {}: {e}", root.display()))?;
    let config = Config {
        listen: vec![listen],
        listen_tls: vec![listen_tls],
        tls: Some(TlsFiles {
            cert: cert.clone(),
            key,
        }),
        users_file,
        maildir: Some(format!("{}/mail/%u/Maildir", root.display())),
        mode: Mode::Delete,
        allow_plaintext_auth: false,
        enable_apop: false,
        login_timeout: Duration::from_secs(60),
        login_time_limit: Duration::from_secs(180),
        idle_timeout: Duration::from_secs(600),
        auth_failure_delay: Duration::from_secs(2),
        max_connections: 100,
        max_connections_per_ip: 100,
        max_sessions_per_user_ip: 10,
        auth_failure_delay_max: Duration::from_secs(15),
        login_delay: None,
        // The demo serves only its own temporary folder, so root is fine here.
        allow_root: true,
        user: None,
        group: None,
        shutdown_grace: Duration::from_secs(1),
        metrics: None,
        listing_cache_messages: crate::store::DEFAULT_LISTING_CACHE,
        hostname: "localhost".into(),
    };
    let served = crate::server::run(config, None, |plain, implicit| {
        let (addr, tls) = (plain[0], implicit[0]);
        println!(
            "pop3d demo: user \"demo\", password \"demo\" (keep mode), mail in {}",
            maildir.display()
        );
        println!("Try it:");
        println!("  curl pop3://{addr}/ -u demo:demo          # list the messages");
        println!("  curl pop3://{addr}/1 -u demo:demo         # read message 1");
        println!(
            "  curl --cacert {} pop3s://localhost:{}/1 -u demo:demo   # over TLS",
            cert.display(),
            tls.port()
        );
        println!(
            "  openssl s_client -quiet -connect {tls}       # then USER demo, PASS demo, LIST, QUIT"
        );
        println!("  openssl s_client -quiet -starttls pop3 -connect {addr}");
        println!(
            "  telnet {} {}   then USER demo, PASS demo, LIST, RETR 1, QUIT",
            addr.ip(),
            addr.port()
        );
        println!(
            "Log in as demo+phone to see another device's view. Ctrl-C stops the demo and removes its folder."
        );
    });
    // Ctrl-C (SIGINT) or SIGTERM ends the demo: its folder goes with it.
    let _ = std::fs::remove_dir_all(&root);
    served
}

/// Writes the users file and a self-signed certificate, and delivers the sample messages as an MDA does (tmp/, then new/).
fn populate(users_file: &Path, maildir: &Path, cert: &Path, key: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(maildir)?;
    let (cert_pem, key_pem) =
        tls::self_signed(&["localhost", "127.0.0.1"]).map_err(std::io::Error::other)?;
    std::fs::write(cert, cert_pem)?;
    std::fs::write(key, key_pem)?;
    std::fs::write(users_file, "demo:{PLAIN}demo::::::mode=keep\n")?;
    let store = maildir::Maildir::from(maildir.to_path_buf());
    store.create_dirs()?;
    for sample in SAMPLES {
        store
            .store_new(sample.as_bytes())
            .map_err(std::io::Error::other)?;
        // Unique names start with the delivery second; a pause keeps the samples in order.
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
