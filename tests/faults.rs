//! Crash and fault safety of the real daemon, with an exact model of what must be on disk:
//! SIGKILL at random points of many sessions (during RETR, between DELE and QUIT, inside
//! QUIT's update in both modes, during login's size caching), mail delivered while sessions
//! run, messages and folders vanishing mid-session, a full and a read-only file system under
//! keep mode's state writes, and many concurrent sessions of one mailbox.
//!
//! Every loop is bounded in count and in time. Randomness comes from a seeded xorshift: each
//! test prints its seed, and `POP3D_TEST_SEED=N` replays a run.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Client, Rng, Server, crlf, deliver, messages_on_disk, read_message};

const USERS: &str = "alice:{PLAIN}secret::::::\n\
                     bob:{PLAIN}pw::::::mode=keep\n\
                     carol:{PLAIN}pw::::::mode=keep\n";

// ---------------------------------------------------------------------------------------
// Randomness, bodies, the model
// ---------------------------------------------------------------------------------------

/// common's xorshift64: small, seeded, good enough to pick kill points and subsets.
impl Rng {
    /// A generator for one test: the run's seed (printed) mixed with the test's name.
    fn for_test(test: &str) -> Rng {
        let base = std::env::var("POP3D_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_2024_u64);
        println!("{test}: seed {base} (POP3D_TEST_SEED={base} replays it)");
        let mut h = base ^ 0xcbf2_9ce4_8422_2325;
        for b in test.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h | 1)
    }

    /// 0..n
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// lo..=hi
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// `k` distinct indices of 0..n, in random order.
    fn subset(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        let k = k.min(n);
        for i in 0..k {
            let j = i + self.below((n - i) as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }
}

/// A message body: LF or CRLF line ends, dot lines, the odd NUL and 8-bit byte, sometimes no
/// final line end, sometimes empty (an MDA may deliver an empty file; it must stay so).
fn random_body(rng: &mut Rng, n: u64) -> Vec<u8> {
    if rng.chance(3) {
        return Vec::new();
    }
    let eol: &[u8] = if rng.chance(50) { b"\r\n" } else { b"\n" };
    let mut body = Vec::new();
    for header in [
        &b"From: a@example.com"[..],
        format!("Subject: m{n}").as_bytes(),
        b"",
    ] {
        body.extend_from_slice(header);
        body.extend_from_slice(eol);
    }
    for _ in 0..rng.range(1, 30) {
        if rng.chance(15) {
            body.push(b'.');
        }
        for _ in 0..rng.below(90) {
            let c = match rng.below(200) {
                0 => 0u8,
                1 => 0xe9,
                _ => b' ' + rng.below(95) as u8,
            };
            body.push(c);
        }
        body.extend_from_slice(eol);
    }
    if rng.chance(5) {
        body.extend_from_slice(b"last line without an end");
    }
    body
}

/// A large message, so that a RETR takes long enough to be killed in the middle.
fn big_body(n: u64) -> Vec<u8> {
    let mut body = format!("Subject: big {n}\n\n").into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\n";
    while body.len() < 2 << 20 {
        body.extend_from_slice(line);
    }
    body
}

/// A delivered message: its bytes and the octets RETR sends for it (computed once: `crlf`
/// of a big message is slow in a debug build).
#[derive(PartialEq, Eq)]
struct Msg {
    bytes: Vec<u8>,
    wire: usize,
}

impl Msg {
    fn new(bytes: Vec<u8>) -> Msg {
        Msg {
            wire: crlf(&bytes).len(),
            bytes,
        }
    }
}

/// What must be in one Maildir: unique name → the message delivered.
struct Mbox {
    dir: PathBuf,
    msgs: BTreeMap<String, Msg>,
    /// The delivery second of the next message: increasing, so the listing order is the
    /// map's order (all times have ten digits).
    next_time: u64,
}

impl Mbox {
    fn new(dir: PathBuf) -> Mbox {
        Mbox {
            dir,
            msgs: BTreeMap::new(),
            next_time: 1_700_000_000,
        }
    }

    fn add(&mut self, body: Vec<u8>) -> String {
        let name = deliver(&self.dir, self.next_time, &body);
        self.next_time += 1;
        self.msgs.insert(name.clone(), Msg::new(body));
        name
    }

    fn fill(&mut self, rng: &mut Rng, n: usize) {
        for _ in 0..n {
            let body = random_body(rng, self.next_time);
            self.add(body);
        }
    }

    fn big_count(&self) -> usize {
        self.msgs
            .values()
            .filter(|m| m.bytes.len() > 1 << 20)
            .count()
    }
}

/// Every message file in new/ and cur/ by unique name, with its bytes. A unique name in
/// both folders, or a file in tmp/ (the daemon never writes there), fails the test.
fn disk(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    for sub in ["new", "cur"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let unique = name.split(':').next().unwrap().to_owned();
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                found.insert(unique.clone(), bytes).is_none(),
                "{unique} is in new/ and cur/ at once"
            );
        }
    }
    // tmp/ may only hold pop3d's own temporary state files (a kill between write and rename
    // leaves one there, where Maildir's tmp/ cleanup sweeps it); never a message.
    for entry in std::fs::read_dir(dir.join("tmp")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(name.starts_with("pop3d-"), "a stranger in tmp/: {name}");
    }
    found
}

/// Checks the files beside new/ cur/ tmp/: only pop3d's own, each state file whole (every
/// line parses; cached sizes of listed messages are right). Returns the number of stray
/// temporary state files (in tmp/, left by a kill between write and rename).
fn check_state_files(mbox: &Mbox) -> usize {
    let stray = temp_state_files(&mbox.dir).len();
    for entry in std::fs::read_dir(&mbox.dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        match name.as_str() {
            "new" | "cur" | "tmp" | "pop3d.lock" | "pop3d-state.lock" => {}
            "pop3d-sizes" => {
                let text = std::fs::read_to_string(mbox.dir.join(&name)).unwrap();
                for line in text.lines() {
                    let (id, size) = line
                        .rsplit_once(' ')
                        .unwrap_or_else(|| panic!("torn size cache line {line:?}"));
                    let size: usize = size
                        .parse()
                        .unwrap_or_else(|_| panic!("torn size cache line {line:?}"));
                    if let Some(m) = mbox.msgs.get(id) {
                        assert_eq!(size, m.wire, "cached size of {id}");
                    }
                }
            }
            _ if name.starts_with("pop3d-hidden") => {}
            _ => panic!("unexpected file {name} in {}", mbox.dir.display()),
        }
    }
    stray
}

/// The hidden set of a keep-mode login, as on disk.
fn hidden_on_disk(dir: &Path, login: &str) -> BTreeSet<String> {
    let file = match login.split_once('+') {
        Some((_, device)) => format!("pop3d-hidden.{device}"),
        None => "pop3d-hidden".to_owned(),
    };
    match std::fs::read_to_string(dir.join(file)) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => panic!("reading the hidden set of {login}: {e}"),
    }
}

/// The listing of a session: (number, unique name) from UIDL.
fn uidl(c: &mut Client) -> Vec<String> {
    c.ok("UIDL");
    c.multiline()
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let (n, id) = line.split_once(' ').expect("UIDL line");
            assert_eq!(n, (i + 1).to_string(), "{line}");
            id.to_owned()
        })
        .collect()
}

/// Logs in and checks the listing is exactly `visible` (in delivery order), with the sizes
/// RETR sends; retrieves a few messages byte for byte; quits without changing anything.
/// A login refused with [IN-USE] here means a lock outlived its process.
fn check_listing(
    server: &Server,
    login: &str,
    pass: &str,
    visible: &BTreeMap<&String, &Msg>,
    rng: &mut Rng,
) {
    let mut c = server.connect();
    c.ok(&format!("USER {login}"));
    let reply = c.cmd(&format!("PASS {pass}"));
    assert!(
        reply.starts_with("+OK"),
        "login {login} after restart: {reply}"
    );
    let ids = uidl(&mut c);
    c.ok("LIST");
    let sizes = c.multiline();
    let expected: Vec<&String> = visible.keys().copied().collect();
    assert_eq!(
        ids.iter().collect::<Vec<_>>(),
        expected,
        "{login}: listing after restart"
    );
    for (i, line) in sizes.iter().enumerate() {
        let size: usize = line.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(size, visible[&ids[i]].wire, "{login}: LIST {line}");
    }
    let small: Vec<usize> = (0..ids.len())
        .filter(|&i| visible[&ids[i]].bytes.len() < 1 << 16)
        .collect();
    for _ in 0..2.min(small.len()) {
        let i = small[rng.below(small.len() as u64) as usize];
        let got = c.fetch(&format!("TOP {} 9999", i + 1));
        assert_eq!(
            got,
            crlf(&visible[&ids[i]].bytes),
            "{login}: message {}",
            ids[i]
        );
    }
    c.ok("QUIT");
}

/// Sends the commands in one write and checks each reply is +OK.
fn pipeline_ok(c: &mut Client, commands: &[String]) {
    let mut batch = String::new();
    for command in commands {
        batch.push_str(command);
        batch.push_str("\r\n");
    }
    c.send(batch.as_bytes());
    for command in commands {
        let reply = c.line();
        assert!(reply.starts_with("+OK"), "{command}: {reply}");
        if command.starts_with("RETR") || command.starts_with("TOP") {
            c.multiline();
        }
    }
}

/// Sleeps `micros` (nothing for 0): the random point where the daemon is killed.
fn pause_us(micros: u64) {
    if micros > 0 {
        std::thread::sleep(Duration::from_micros(micros));
    }
}

// ---------------------------------------------------------------------------------------
// 1. SIGKILL at random points
// ---------------------------------------------------------------------------------------

const KEEP_LOGINS: [&str; 4] = ["bob", "bob+d1", "bob+d2", "bob+d3"];
const MAX_KILLS: usize = 150;
const KILL_BUDGET: Duration = Duration::from_secs(16);
const MIN_KILLS: usize = 40;

#[derive(Default, Debug)]
struct KillStats {
    retr: usize,
    dele_no_quit: usize,
    login: usize,
    /// Delete-mode QUITs killed: update not started, partly applied, fully applied.
    delete_quit: [usize; 3],
    delete_quit_ok_seen: usize,
    /// Keep-mode QUITs killed: hidden set old, new.
    keep_quit: [usize; 2],
    keep_quit_ok_seen: usize,
    /// Temporary state files (`*.tmp.PID`) left by kills between write and rename, at the end.
    stray_tmp_left: usize,
}

/// QUIT, timed from sending it to its +OK: about how long the update takes, as the client
/// sees it. Used to spread the kill points over the update.
fn timed_quit(c: &mut Client) -> Duration {
    let start = Instant::now();
    c.ok("QUIT");
    start.elapsed()
}

/// Marks `count` random messages of the listing with pipelined DELEs; their unique names.
fn dele_random(c: &mut Client, rng: &mut Rng, ids: &[String], count: usize) -> BTreeSet<String> {
    let picks = rng.subset(ids.len(), count);
    let commands: Vec<String> = picks.iter().map(|i| format!("DELE {}", i + 1)).collect();
    pipeline_ok(c, &commands);
    picks.iter().map(|&i| ids[i].clone()).collect()
}

/// What reached the client after the kill (for QUIT: whether its +OK did).
fn after_kill(c: &mut Client) -> String {
    let _ = c.stream.set_read_timeout(Some(Duration::from_secs(5)));
    String::from_utf8_lossy(&c.read_to_end()).into_owned()
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_never_locks_out() {
    let started = Instant::now();
    let mut rng = Rng::for_test("sigkill");
    let mut server = Server::start(USERS, &[]);
    let mut alice = Mbox::new(server.maildir("alice"));
    let mut bob = Mbox::new(server.maildir("bob"));
    alice.fill(&mut rng, 300);
    let n = alice.next_time;
    alice.add(big_body(n));
    bob.fill(&mut rng, 700);
    let n = bob.next_time;
    bob.add(big_body(n));
    let mut hidden: HashMap<&str, BTreeSet<String>> =
        KEEP_LOGINS.iter().map(|l| (*l, BTreeSet::new())).collect();

    // Calibration, without kills: how long a big update takes in each mode, so kill points
    // spread over it (the machine may be slow or busy; the windows follow).
    let mut c = server.login("alice", "secret");
    let ids = uidl(&mut c);
    let marked = dele_random(&mut c, &mut rng, &ids, 250);
    let delete_window = timed_quit(&mut c);
    for id in &marked {
        alice.msgs.remove(id);
    }
    let mut c = server.login("bob+d3", "pw");
    let ids = uidl(&mut c);
    let marked = dele_random(&mut c, &mut rng, &ids, 300);
    let keep_window = timed_quit(&mut c);
    hidden.get_mut("bob+d3").unwrap().extend(marked);
    assert_eq!(hidden_on_disk(&bob.dir, "bob+d3"), hidden["bob+d3"]);
    alice.fill(&mut rng, 60);
    let start = Instant::now();
    server.login("alice", "secret").ok("QUIT");
    let login_window = start.elapsed();
    // Kill points are uniform in a window that adapts: it shrinks when kills land after the
    // update and grows when they land before, so many land inside it.
    let window_us = |d: Duration| (d.as_micros() as u64).max(300) as f64;
    let (mut delete_us, mut keep_us, login_us) = (
        window_us(delete_window),
        window_us(keep_window),
        window_us(login_window) as u64,
    );
    println!(
        "sigkill: update windows: delete (250 DELE) {delete_window:?}, keep (300 DELE) \
         {keep_window:?}, login (60 sizes to cache) {login_window:?}"
    );

    let mut stats = KillStats::default();
    let mut kills = 0;
    while kills < MAX_KILLS && started.elapsed() < KILL_BUDGET {
        // Keep enough mail for long updates.
        if alice.msgs.len() < 280 {
            let missing = 340 - alice.msgs.len();
            alice.fill(&mut rng, missing);
        }
        if alice.big_count() == 0 {
            let n = alice.next_time;
            alice.add(big_body(n));
        }
        let kind = rng.below(100);
        // The keep-mode login of this round, the marks whose QUIT is in flight when the
        // daemon dies (deletions for alice, hides for bob), and whether QUIT was sent.
        let keep_login = KEEP_LOGINS[rng.below(4) as usize];
        let mut in_flight: BTreeSet<String> = BTreeSet::new();
        let mut quit_sent = false;
        let mut c;
        let what;
        if kind < 15 {
            // During RETR: a big message and a few small ones, pipelined, unread.
            what = "retr";
            let (login, pass) = if rng.chance(50) {
                ("alice", "secret")
            } else {
                (keep_login, "pw")
            };
            c = server.login(login, pass);
            let ids = uidl(&mut c);
            let mbox = if login == "alice" { &alice } else { &bob };
            let mut batch = String::new();
            for _ in 0..rng.range(1, 6) {
                let i = rng.below(ids.len() as u64) as usize;
                batch.push_str(&format!("RETR {}\r\n", i + 1));
            }
            if let Some(big) = ids
                .iter()
                .position(|id| mbox.msgs[id].bytes.len() > 1 << 20)
            {
                batch.push_str(&format!("RETR {}\r\n", big + 1));
            }
            c.send(batch.as_bytes());
            pause_us(rng.below(30_000));
            stats.retr += 1;
        } else if kind < 25 {
            // Between DELE and QUIT: nothing may be applied.
            what = "dele-no-quit";
            c = server.login("alice", "secret");
            let ids = uidl(&mut c);
            let count = rng.range(1, ids.len() as u64 / 2) as usize;
            dele_random(&mut c, &mut rng, &ids, count);
            pause_us(rng.below(3_000));
            stats.dele_no_quit += 1;
        } else if kind < 60 {
            // Inside delete mode's update.
            what = "delete-quit";
            c = server.login("alice", "secret");
            let ids = uidl(&mut c);
            // A few RETRs first, so the update also sets Seen flags (renames).
            let retrs: Vec<String> = (0..rng.below(4))
                .map(|_| rng.below(ids.len() as u64) + 1)
                .filter(|&n| alice.msgs[&ids[n as usize - 1]].bytes.len() < 1 << 20)
                .map(|n| format!("RETR {n}"))
                .collect();
            pipeline_ok(&mut c, &retrs);
            let count = rng.range(150, 300).min(ids.len() as u64) as usize;
            in_flight = dele_random(&mut c, &mut rng, &ids, count);
            c.send(b"QUIT\r\n");
            quit_sent = true;
            pause_us(rng.below(delete_us as u64));
        } else if kind < 90 {
            // Inside keep mode's update: Seen renames, a merge with a big hidden set, the
            // atomic write.
            what = "keep-quit";
            c = server.login(keep_login, "pw");
            let ids = uidl(&mut c);
            let count = rng.range(100, 300).min(ids.len() as u64) as usize;
            in_flight = dele_random(&mut c, &mut rng, &ids, count);
            c.send(b"QUIT\r\n");
            quit_sent = true;
            pause_us(rng.below(keep_us as u64));
        } else {
            // During login, while the sizes of new mail are computed and cached.
            what = "login";
            if rng.chance(50) {
                alice.fill(&mut rng, 60);
                c = server.connect();
                c.send(b"USER alice\r\nPASS secret\r\n");
            } else {
                bob.fill(&mut rng, 60);
                c = server.connect();
                c.send(format!("USER {keep_login}\r\nPASS pw\r\n").as_bytes());
            }
            pause_us(rng.below(login_us));
            stats.login += 1;
        }

        server.crash_and_restart();
        kills += 1;
        let rest = after_kill(&mut c);
        let quit_ok = quit_sent && rest.contains("+OK Logging out");
        drop(c);

        // Alice: nothing vanished but in-flight deletions; those that did are gone for good.
        let on_disk = disk(&alice.dir);
        for (id, bytes) in &on_disk {
            let want = alice
                .msgs
                .get(id)
                .unwrap_or_else(|| panic!("kill {kills} ({what}): unknown file {id}"));
            assert!(
                *bytes == want.bytes,
                "kill {kills} ({what}): {id} changed on disk ({} bytes, delivered {})",
                bytes.len(),
                want.bytes.len()
            );
        }
        let missing: BTreeSet<String> = alice
            .msgs
            .keys()
            .filter(|id| !on_disk.contains_key(*id))
            .cloned()
            .collect();
        let wrongly_gone: Vec<&String> = missing.difference(&in_flight).collect();
        assert!(
            wrongly_gone.is_empty(),
            "kill {kills} ({what}): messages lost that no QUIT deleted: {wrongly_gone:?}"
        );
        if what == "delete-quit" {
            let applied = missing.len();
            if quit_ok {
                assert_eq!(
                    applied,
                    in_flight.len(),
                    "kill {kills}: QUIT said +OK but not all deletions are applied"
                );
                stats.delete_quit_ok_seen += 1;
            }
            let slot = match applied {
                0 => 0,
                n if n == in_flight.len() => 2,
                _ => 1,
            };
            stats.delete_quit[slot] += 1;
            delete_us = (delete_us * [1.2, 1.0, 0.85][slot]).clamp(200.0, 200_000.0);
        }
        for id in &missing {
            alice.msgs.remove(id);
        }

        // Bob (keep mode): nothing ever leaves the disk, and a hidden set is the old one or
        // the old one plus this QUIT's marks, never anything torn or in between.
        let on_disk = disk(&bob.dir);
        assert!(
            on_disk.len() == bob.msgs.len()
                && on_disk
                    .iter()
                    .zip(&bob.msgs)
                    .all(|((a, x), (b, m))| a == b && *x == m.bytes),
            "kill {kills} ({what}): keep-mode Maildir changed: {} files, {} delivered",
            on_disk.len(),
            bob.msgs.len()
        );
        for login in KEEP_LOGINS {
            let now = hidden_on_disk(&bob.dir, login);
            let old = &hidden[login];
            if what == "keep-quit" && login == keep_login {
                let new: BTreeSet<String> = old.union(&in_flight).cloned().collect();
                if now == new {
                    stats.keep_quit[1] += 1;
                    keep_us = (keep_us * 0.85).max(200.0);
                } else {
                    keep_us = (keep_us * 1.2).min(200_000.0);
                    assert!(
                        now == *old,
                        "kill {kills}: hidden set of {login} is neither old nor new"
                    );
                    assert!(
                        !quit_ok,
                        "kill {kills}: QUIT said +OK, hidden set not written"
                    );
                    stats.keep_quit[0] += 1;
                }
                if quit_ok {
                    stats.keep_quit_ok_seen += 1;
                }
                hidden.insert(login, now);
            } else {
                assert!(now == *old, "kill {kills} ({what}): hidden set of {login}");
            }
        }
        stats.stray_tmp_left = check_state_files(&alice) + check_state_files(&bob);

        // The next logins work (the locks died with the process) and list exactly the model.
        let all: BTreeMap<&String, &Msg> = alice.msgs.iter().collect();
        check_listing(&server, "alice", "secret", &all, &mut rng);
        for login in [keep_login, KEEP_LOGINS[rng.below(4) as usize]] {
            let visible: BTreeMap<&String, &Msg> = bob
                .msgs
                .iter()
                .filter(|(id, _)| !hidden[login].contains(*id))
                .collect();
            check_listing(&server, login, "pw", &visible, &mut rng);
            // A device that has hidden most of the mailbox starts over (no session is in).
            if visible.len() < 300 {
                let file = match login.split_once('+') {
                    Some((_, d)) => format!("pop3d-hidden.{d}"),
                    None => "pop3d-hidden".into(),
                };
                let _ = std::fs::remove_file(bob.dir.join(file));
                hidden.insert(login, BTreeSet::new());
            }
        }
    }
    println!(
        "sigkill: survived {kills} kill -9 in {:?}: {stats:?} (delete_quit = [update not \
         started, partly applied, fully applied], keep_quit = [old hidden set, new one])",
        started.elapsed()
    );
    assert!(kills >= MIN_KILLS, "only {kills} kills in the time budget");
    let delete_quits: usize = stats.delete_quit.iter().sum();
    assert!(
        delete_quits < 20 || stats.delete_quit[1] > 0,
        "no kill landed inside a delete-mode update: {stats:?}"
    );
    assert!(server.is_running());
}

// ---------------------------------------------------------------------------------------
// 2. Delivery while sessions run
// ---------------------------------------------------------------------------------------

/// A Maildir's messages as a concurrent test knows them: every message an MDA has started to
/// deliver (recorded before it appears in new/), and those whose delivery has finished.
#[derive(Default)]
struct Shared {
    known: BTreeMap<String, Msg>,
    arrived: BTreeSet<String>,
}

/// Delivers as an MDA does (tmp/, then rename into new/), telling `model` first, so no
/// session can list a message the model lacks; marks it arrived once it is in new/.
fn deliver_recorded(dir: &Path, time: u64, body: Vec<u8>, model: &Mutex<Shared>) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("{time}.M{n}P{}.faults", std::process::id());
    let tmp = dir.join("tmp").join(&name);
    std::fs::write(&tmp, &body).unwrap();
    model
        .lock()
        .unwrap()
        .known
        .insert(name.clone(), Msg::new(body));
    std::fs::rename(&tmp, dir.join("new").join(&name)).unwrap();
    model.lock().unwrap().arrived.insert(name.clone());
    name
}

fn make_maildir(dir: &Path) {
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
}

const DELIVERY_TIME: Duration = Duration::from_secs(3);
const MAX_DELIVERIES: usize = 600;
const MAX_SESSIONS_PER_THREAD: usize = 300;

/// One login's loop of sessions while mail arrives: each listing holds every message that
/// had arrived before the login and is neither deleted nor hidden from this login, and
/// nothing else the model does not know; some listed messages are retrieved and compared;
/// about a third are marked with DELE; QUIT must succeed. Returns (sessions, marked per
/// login).
fn session_loop(
    server: &Server,
    logins: &[&str],
    pass: &str,
    model: &Mutex<Shared>,
    deadline: Instant,
    mut rng: Rng,
) -> (usize, HashMap<String, BTreeSet<String>>) {
    let mut marked: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut sessions = 0;
    while sessions < MAX_SESSIONS_PER_THREAD && Instant::now() < deadline {
        let login = logins[rng.below(logins.len() as u64) as usize];
        let gone = marked.entry(login.to_owned()).or_default().clone();
        let arrived_before = model.lock().unwrap().arrived.clone();
        let mut c = server.login(login, pass);
        let ids = uidl(&mut c);
        let listed: BTreeSet<&String> = ids.iter().collect();
        {
            let model = model.lock().unwrap();
            for id in &ids {
                assert!(model.known.contains_key(id), "{login} lists unknown {id}");
                assert!(!gone.contains(id), "{login} lists {id}, which it deleted");
            }
        }
        for id in arrived_before.difference(&gone) {
            assert!(listed.contains(id), "{login}: delivered {id} is not listed");
        }
        for _ in 0..2.min(ids.len()) {
            let i = rng.below(ids.len() as u64) as usize;
            let want = crlf(&model.lock().unwrap().known[&ids[i]].bytes);
            assert_eq!(
                c.fetch(&format!("RETR {}", i + 1)),
                want,
                "{login}: {}",
                ids[i]
            );
        }
        let picks: Vec<usize> = (0..ids.len()).filter(|_| rng.chance(30)).collect();
        let commands: Vec<String> = picks.iter().map(|i| format!("DELE {}", i + 1)).collect();
        pipeline_ok(&mut c, &commands);
        let reply = c.ok("QUIT");
        assert!(
            picks.is_empty() || reply.contains(&format!(" {} messages ", picks.len())),
            "{login}: {reply}"
        );
        marked
            .get_mut(login)
            .unwrap()
            .extend(picks.iter().map(|&i| ids[i].clone()));
        sessions += 1;
    }
    (sessions, marked)
}

#[test]
fn mail_delivered_while_sessions_run_is_never_lost_nor_deleted_unlisted() {
    let started = Instant::now();
    let mut rng = Rng::for_test("delivery");
    let server = Server::start(USERS, &[]);
    let dirs = [server.maildir("alice"), server.maildir("bob")];
    let models = [Mutex::new(Shared::default()), Mutex::new(Shared::default())];
    for (dir, model) in dirs.iter().zip(&models) {
        make_maildir(dir);
        for i in 0..30 {
            deliver_recorded(dir, 1_700_000_000 + i, random_body(&mut rng, i), model);
        }
    }
    let deadline = Instant::now() + DELIVERY_TIME;
    let (mda_rng, alice_rng, bob_rng) = (
        Rng(rng.next() | 1),
        Rng(rng.next() | 1),
        Rng(rng.next() | 1),
    );
    let keep_logins = ["bob", "bob+d1", "bob+d2"];
    let (deliveries, (alice_sessions, alice_marked), (bob_sessions, bob_marked)) =
        std::thread::scope(|s| {
            let mda = s.spawn(|| {
                let mut rng = mda_rng;
                let mut count = [0usize; 2];
                while count.iter().sum::<usize>() < MAX_DELIVERIES && Instant::now() < deadline {
                    let which = rng.below(2) as usize;
                    // Any delivery second, so new mail sorts anywhere in later listings and
                    // shifts the numbers of messages already there.
                    let time = rng.range(1_600_000_000, 1_800_000_000);
                    let body = random_body(&mut rng, time);
                    deliver_recorded(&dirs[which], time, body, &models[which]);
                    count[which] += 1;
                    pause_us(rng.below(4_000));
                }
                count
            });
            let alice = s.spawn(|| {
                session_loop(
                    &server,
                    &["alice"],
                    "secret",
                    &models[0],
                    deadline,
                    alice_rng,
                )
            });
            let bob = s
                .spawn(|| session_loop(&server, &keep_logins, "pw", &models[1], deadline, bob_rng));
            (
                mda.join().unwrap(),
                alice.join().unwrap(),
                bob.join().unwrap(),
            )
        });

    // Delete mode: exactly the messages some session listed and deleted are gone.
    let deleted = &alice_marked["alice"];
    let model = models[0].lock().unwrap();
    let on_disk = disk(&dirs[0]);
    let lost: Vec<&String> = model
        .known
        .keys()
        .filter(|id| !deleted.contains(*id) && !on_disk.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    for (id, bytes) in &on_disk {
        assert!(
            !deleted.contains(id),
            "{id} deleted at QUIT but still there"
        );
        assert!(*bytes == model.known[id].bytes, "{id} changed on disk");
    }
    // Keep mode: nothing leaves the disk; each login hides exactly what it deleted.
    let model = models[1].lock().unwrap();
    let on_disk = disk(&dirs[1]);
    assert_eq!(
        on_disk.len(),
        model.known.len(),
        "keep-mode Maildir changed"
    );
    for (id, bytes) in &on_disk {
        assert!(*bytes == model.known[id].bytes, "{id} changed on disk");
    }
    let mut hidden_total = 0;
    for login in keep_logins {
        let hidden = bob_marked.get(login).cloned().unwrap_or_default();
        hidden_total += hidden.len();
        let mut c = server.login(login, "pw");
        let ids: BTreeSet<String> = uidl(&mut c).into_iter().collect();
        let want: BTreeSet<String> = model
            .known
            .keys()
            .filter(|id| !hidden.contains(*id))
            .cloned()
            .collect();
        assert!(ids == want, "{login}: final listing differs from the model");
    }
    println!(
        "delivery: {} deliveries (alice {}, bob {}) during {alice_sessions} delete sessions \
         ({} deleted) and {bob_sessions} keep sessions ({hidden_total} hidden), {:?}",
        deliveries[0] + deliveries[1],
        deliveries[0],
        deliveries[1],
        deleted.len(),
        started.elapsed()
    );
    assert!(alice_sessions > 10 && bob_sessions > 10 && deliveries[0] + deliveries[1] > 50);
}

// ---------------------------------------------------------------------------------------
// 3. Messages and folders vanishing mid-session
// ---------------------------------------------------------------------------------------

/// Replaces a folder by a plain file (or puts it back), as a broken disk or a careless admin
/// would: even root cannot list or open through it.
fn swap_for_file(dir: &Path, broken: bool) {
    let away = dir.with_extension("away");
    if broken {
        std::fs::rename(dir, &away).unwrap();
        std::fs::write(dir, b"not a directory").unwrap();
    } else {
        std::fs::remove_file(dir).unwrap();
        std::fs::rename(&away, dir).unwrap();
    }
}

/// Breaks or repairs a Maildir.
type Breaker = fn(&Path);

#[test]
fn vanished_messages_and_broken_folders_get_err_and_the_session_goes_on() {
    let server = Server::start(USERS, &[]);
    let dir = server.maildir("alice");
    let bodies: Vec<Vec<u8>> = (0..6)
        .map(|i| format!("Subject: v{i}\n\n.body {i}\n").into_bytes())
        .collect();
    let names: Vec<String> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| deliver(&dir, 1_700_000_000 + i as u64, b))
        .collect();

    // Messages removed by another client (an IMAP EXPUNGE) during the session.
    let mut c = server.login("alice", "secret");
    assert_eq!(c.fetch("RETR 1"), crlf(&bodies[0]));
    std::fs::remove_file(dir.join("new").join(&names[1])).unwrap();
    for command in ["RETR 2", "TOP 2 0", "TOP 2 5"] {
        let reply = c.err(command);
        assert_eq!(
            reply, "-ERR Message 2 was removed by another client",
            "{command}"
        );
    }
    assert_eq!(c.fetch("TOP 3 0"), b"Subject: v2\r\n\r\n");
    assert!(
        c.ok("LIST 2").starts_with("+OK 2 "),
        "the listing is the session's"
    );
    c.ok("DELE 2");
    c.ok("DELE 4");
    // Message 4 goes after its DELE, before QUIT: deleting it is done by someone else.
    std::fs::remove_file(dir.join("new").join(&names[3])).unwrap();
    c.ok("DELE 5");
    assert!(c.ok("QUIT").contains("3 messages deleted"));
    let mut left = vec![names[0].clone(), names[2].clone(), names[5].clone()];
    left.sort();
    assert_eq!(messages_on_disk(&dir), left);

    // cur/ replaced by a file mid-session: that message gets -ERR [SYS/TEMP], others work.
    // Listing now: 1 = names[0] (in cur/ since its RETR), 2 = names[2], 3 = names[5].
    let mut c = server.login("alice", "secret");
    swap_for_file(&dir.join("cur"), true);
    for command in ["RETR 1", "TOP 1 0"] {
        let reply = c.err(command);
        assert_eq!(reply, "-ERR [SYS/TEMP] Cannot read message 1", "{command}");
    }
    assert_eq!(c.fetch("RETR 2"), crlf(&bodies[2]));
    c.ok("NOOP");
    assert!(c.ok("STAT").starts_with("+OK 3 "));
    swap_for_file(&dir.join("cur"), false);
    assert_eq!(
        c.fetch("RETR 1"),
        crlf(&bodies[0]),
        "served again once repaired"
    );
    // The whole Maildir moved away and back.
    let away = dir.with_file_name("Maildir.away");
    std::fs::rename(&dir, &away).unwrap();
    assert!(c.err("RETR 3").starts_with("-ERR [SYS/TEMP]"));
    c.ok("NOOP");
    std::fs::rename(&away, &dir).unwrap();
    assert_eq!(c.fetch("RETR 3"), crlf(&bodies[5]));
    // A deletion QUIT cannot apply is reported, and nothing is lost.
    c.ok("DELE 1");
    swap_for_file(&dir.join("cur"), true);
    let reply = c.err("QUIT");
    assert!(
        reply.starts_with("-ERR [SYS/TEMP] 1 of 1 marked messages could not be removed"),
        "{reply}"
    );
    swap_for_file(&dir.join("cur"), false);
    assert_eq!(messages_on_disk(&dir), left);
    for (i, name) in [(0, &names[0]), (2, &names[2]), (5, &names[5])] {
        assert_eq!(read_message(&dir, name).unwrap(), bodies[i]);
    }

    // Broken at login: a temporary error, never an empty mailbox; fine again once repaired.
    let broken: [(&str, Breaker, Breaker); 3] = [
        (
            "new/ is a file",
            |d| swap_for_file(&d.join("new"), true),
            |d| swap_for_file(&d.join("new"), false),
        ),
        (
            "cur/ is a symlink loop",
            |d| {
                std::fs::rename(d.join("cur"), d.join("cur.away")).unwrap();
                std::os::unix::fs::symlink("cur", d.join("cur")).unwrap();
            },
            |d| {
                std::fs::remove_file(d.join("cur")).unwrap();
                std::fs::rename(d.join("cur.away"), d.join("cur")).unwrap();
            },
        ),
        (
            "the Maildir is a file",
            |d| swap_for_file(d, true),
            |d| swap_for_file(d, false),
        ),
    ];
    for (what, break_it, repair) in broken {
        break_it(&dir);
        let mut c = server.connect();
        c.ok("USER alice");
        let reply = c.err("PASS secret");
        assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{what}: {reply}");
        repair(&dir);
        let mut c = server.login("alice", "secret");
        assert!(c.ok("STAT").starts_with("+OK 3 "), "{what}: after repair");
        c.ok("QUIT");
    }
    assert_eq!(messages_on_disk(&dir), left);
}

// ---------------------------------------------------------------------------------------
// 4. Full and read-only file systems under keep mode's state writes
// ---------------------------------------------------------------------------------------

/// A file system mounted for one test, unmounted when dropped. Declare it after the
/// `Server`, so it goes before the server's temporary folder is removed.
struct Mount(PathBuf);

fn run_mount(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(dir).unwrap();
        let options = format!("size={size}");
        run_mount(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &options,
            "tmpfs",
            dir.to_str().unwrap(),
        ])?;
        Ok(Mount(dir.to_owned()))
    }

    /// `dir` itself, read-only, over its writable self (files opened before stay writable).
    fn bind_read_only(dir: &Path) -> Result<Mount, String> {
        let path = dir.to_str().unwrap();
        run_mount(&["mount", "--bind", path, path])?;
        let mount = Mount(dir.to_owned());
        run_mount(&["mount", "-o", "remount,bind,ro", path])?;
        Ok(mount)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let path = self.0.to_str().unwrap();
        if run_mount(&["umount", path]).is_err() {
            let _ = run_mount(&["umount", "-l", path]);
        }
    }
}

/// Fills the file system holding `dir` with one file, bounded; its path.
fn fill_up(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![b'x'; 4096];
    for _ in 0..4096 {
        if let Err(e) = file.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
            return filler;
        }
    }
    panic!("{} never filled up", dir.display());
}

/// pop3d's temporary state files, which live in the Maildir's tmp/.
fn temp_state_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("pop3d-"))
        .collect()
}

fn five_messages(dir: &Path) -> Vec<(String, Vec<u8>)> {
    (0..5)
        .map(|i| {
            let body = format!("Subject: f{i}\n\n{}\n", "z".repeat(300 * i)).into_bytes();
            (deliver(dir, 1_700_000_000 + i as u64, &body), body)
        })
        .collect()
}

fn assert_intact(dir: &Path, messages: &[(String, Vec<u8>)]) {
    assert_eq!(messages_on_disk(dir).len(), messages.len());
    for (name, body) in messages {
        assert_eq!(read_message(dir, name).as_ref(), Some(body), "{name}");
    }
}

#[test]
fn a_full_file_system_under_keep_mode_state_writes_loses_nothing_and_is_reported() {
    let server = Server::start(USERS, &[]);
    let dir = server.maildir("bob");
    let _tmpfs = match Mount::tmpfs(&dir, "256k") {
        Ok(m) => m,
        Err(e) => {
            println!(
                "full disk: mount refused ({e}); covered instead by \
                 a_state_file_that_cannot_be_created_is_reported_and_loses_nothing"
            );
            return;
        }
    };
    println!("full disk: a 256 KB tmpfs mounted on {}", dir.display());
    let messages = five_messages(&dir);
    let filler = fill_up(&dir);

    // The size cache cannot be written: the login still works, with the right sizes.
    let mut c = server.login("bob", "pw");
    c.ok("LIST");
    let list = c.multiline();
    for (i, (_, body)) in messages.iter().enumerate() {
        assert_eq!(list[i], format!("{} {}", i + 1, crlf(body).len()));
    }
    assert!(server.wait_for_log("cannot write size cache"));
    for i in 1..=5 {
        c.ok(&format!("DELE {i}"));
    }
    let reply = c.err("QUIT");
    assert!(
        reply.starts_with("-ERR [SYS/TEMP] Cannot record the messages to hide"),
        "{reply}"
    );
    assert!(server.wait_for_log("cannot record hidden messages"));
    assert_intact(&dir, &messages);
    assert!(hidden_on_disk(&dir, "bob").is_empty());
    assert_eq!(temp_state_files(&dir), Vec::<String>::new());

    // Space again: everything is offered, and hiding works.
    std::fs::remove_file(filler).unwrap();
    let mut c = server.login("bob", "pw");
    assert!(c.ok("STAT").starts_with("+OK 5 "));
    c.ok("DELE 2");
    assert!(c.ok("QUIT").contains("1 messages kept"));
    let mut c = server.login("bob", "pw");
    assert!(c.ok("STAT").starts_with("+OK 4 "));
    c.ok("QUIT");
    assert_intact(&dir, &messages);
}

#[test]
fn a_read_only_file_system_under_keep_mode_state_writes_loses_nothing_and_is_reported() {
    let server = Server::start(USERS, &[]);
    let dir = server.maildir("carol");
    let messages = five_messages(&dir);
    let mut c = server.login("carol", "pw");
    assert!(c.ok("STAT").starts_with("+OK 5 "));
    c.ok("DELE 1");
    c.ok("DELE 4");
    let read_only = match Mount::bind_read_only(&dir) {
        Ok(m) => m,
        Err(e) => {
            println!(
                "read-only: bind mount refused ({e}); covered instead by \
                 a_state_file_that_cannot_be_created_is_reported_and_loses_nothing"
            );
            return;
        }
    };
    println!("read-only: {} bind-mounted read-only", dir.display());
    let reply = c.err("QUIT");
    assert!(
        reply.starts_with("-ERR [SYS/TEMP] Cannot record the messages to hide"),
        "{reply}"
    );
    assert!(server.wait_for_log("cannot record hidden messages"));
    drop(read_only);
    assert_intact(&dir, &messages);
    let mut c = server.login("carol", "pw");
    assert!(c.ok("STAT").starts_with("+OK 5 "), "nothing was hidden");
    c.ok("QUIT");
}

#[test]
fn a_state_file_that_cannot_be_created_is_reported_and_loses_nothing() {
    let server = Server::start(USERS, &[]);
    let dir = server.maildir("carol");
    let messages = five_messages(&dir);
    let mut c = server.login("carol+tab", "pw");
    c.ok("DELE 2");
    c.ok("DELE 3");
    // The hidden set's own name is taken by a directory: the rename into place fails.
    let blocker = dir.join("pop3d-hidden.tab");
    std::fs::create_dir(&blocker).unwrap();
    let reply = c.err("QUIT");
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    assert!(server.wait_for_log("cannot record hidden messages"));
    assert_intact(&dir, &messages);
    std::fs::remove_dir(&blocker).unwrap();
    let mut c = server.login("carol+tab", "pw");
    assert!(c.ok("STAT").starts_with("+OK 5 "), "nothing was hidden");
    c.ok("DELE 2");
    c.ok("QUIT");
    let mut c = server.login("carol+tab", "pw");
    assert!(c.ok("STAT").starts_with("+OK 4 "));
}

// ---------------------------------------------------------------------------------------
// 5. Concurrent sessions of one mailbox: the lock rules
// ---------------------------------------------------------------------------------------

const LOCK_TIME: Duration = Duration::from_secs(3);
const KEEP_DEVICES: usize = 4;

/// A session that got the lock. `inner` is surely inside the daemon's lock (from the +OK to
/// PASS, sent after locking, to sending QUIT, read before unlocking); `outer` surely
/// contains it (from sending PASS to the reply to QUIT, sent after unlocking).
struct Held {
    keep: bool,
    inner: (Instant, Instant),
    outer: (Instant, Instant),
}

/// A login refused with [IN-USE], from sending PASS to its reply.
struct Refused {
    keep: bool,
    at: (Instant, Instant),
}

fn overlap(a: (Instant, Instant), b: (Instant, Instant)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// One client's loop: log in, look, mark, hold a moment, QUIT; or be refused.
fn lock_worker(
    server: &Server,
    login: &str,
    keep: bool,
    deadline: Instant,
    mut rng: Rng,
    msgs: &BTreeMap<String, Msg>,
) -> (Vec<Held>, Vec<Refused>, BTreeSet<String>) {
    let (mut held, mut refused, mut marked) = (Vec::new(), Vec::new(), BTreeSet::new());
    while Instant::now() < deadline && held.len() + refused.len() < 3000 {
        let mut c = server.connect();
        c.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        c.ok(&format!("USER {login}"));
        let sent = Instant::now();
        let reply = c.cmd("PASS secret");
        let answered = Instant::now();
        if !reply.starts_with("+OK") {
            assert!(reply.starts_with("-ERR [IN-USE]"), "{login}: {reply}");
            refused.push(Refused {
                keep,
                at: (sent, answered),
            });
            pause_us(rng.below(if keep { 3_000 } else { 1_000 }));
            continue;
        }
        let ids = uidl(&mut c);
        if !ids.is_empty() {
            let i = rng.below(ids.len() as u64) as usize;
            let got = c.fetch(&format!("TOP {} 9999", i + 1));
            assert_eq!(got, crlf(&msgs[&ids[i]].bytes), "{login}: {}", ids[i]);
            if rng.chance(if keep { 20 } else { 70 }) {
                c.ok(&format!("DELE {}", i + 1));
                marked.insert(ids[i].clone());
            }
        }
        pause_us(rng.below(if keep { 12_000 } else { 20_000 }));
        let quit = Instant::now();
        let reply = c.cmd("QUIT");
        assert!(reply.starts_with("+OK"), "{login}: QUIT: {reply}");
        held.push(Held {
            keep,
            inner: (answered, quit),
            outer: (sent, Instant::now()),
        });
        pause_us(rng.below(if keep { 15_000 } else { 1_000 }));
    }
    (held, refused, marked)
}

#[test]
fn concurrent_keep_devices_and_a_delete_login_obey_the_lock_rules() {
    let started = Instant::now();
    let mut rng = Rng::for_test("locks");
    let server = Server::start(USERS, &["--max-sessions-per-user-ip", "100"]);
    let mut alice = Mbox::new(server.maildir("alice"));
    alice.fill(&mut rng, 150);
    let deadline = Instant::now() + LOCK_TIME;
    let logins: Vec<(String, bool)> = std::iter::once(("alice".to_owned(), false))
        .chain((1..=KEEP_DEVICES).map(|i| (format!("alice+dev{i}"), true)))
        .collect();
    let rngs: Vec<Rng> = logins.iter().map(|_| Rng(rng.next() | 1)).collect();
    let results: Vec<(Vec<Held>, Vec<Refused>, BTreeSet<String>)> = std::thread::scope(|s| {
        let workers: Vec<_> = logins
            .iter()
            .zip(rngs)
            .map(|((login, keep), rng)| {
                let (server, msgs) = (&server, &alice.msgs);
                s.spawn(move || lock_worker(server, login, *keep, deadline, rng, msgs))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let took = started.elapsed();
    assert!(
        took < LOCK_TIME + Duration::from_secs(15),
        "{took:?}: stuck"
    );

    let held: Vec<&Held> = results.iter().flat_map(|r| &r.0).collect();
    let refused: Vec<&Refused> = results.iter().flat_map(|r| &r.1).collect();
    let (delete_held, keep_held): (Vec<&Held>, Vec<&Held>) = held.iter().partition(|h| !h.keep);
    // Never a delete session and a keep session in at once.
    for d in &delete_held {
        for k in &keep_held {
            assert!(
                !overlap(d.inner, k.inner),
                "a delete session and a keep session held the mailbox at once"
            );
        }
    }
    // Every refusal is explained by a session of the other kind that may have been in.
    for r in &refused {
        let explained = held
            .iter()
            .any(|h| h.keep != r.keep && overlap(r.at, h.outer));
        assert!(
            explained,
            "[IN-USE] for a {} login while no {} session was in",
            if r.keep { "keep" } else { "delete" },
            if r.keep { "delete" } else { "keep" },
        );
    }
    let keep_refused = refused.iter().filter(|r| r.keep).count();
    let delete_refused = refused.len() - keep_refused;
    println!(
        "locks: {} delete sessions, {} keep sessions ({KEEP_DEVICES} devices), refused with \
         [IN-USE]: {delete_refused} delete logins, {keep_refused} keep logins, in {took:?}",
        delete_held.len(),
        keep_held.len(),
    );
    assert!(!delete_held.is_empty() && !keep_held.is_empty());
    assert!(delete_refused > 0 && keep_refused > 0);

    // The model: exactly what the delete login deleted is gone; each device hides its own.
    let deleted = &results[0].2;
    let on_disk = disk(&alice.dir);
    for (id, m) in &alice.msgs {
        match on_disk.get(id) {
            Some(bytes) => {
                assert!(
                    !deleted.contains(id),
                    "{id} deleted at QUIT but still there"
                );
                assert!(*bytes == m.bytes, "{id} changed on disk");
            }
            None => assert!(deleted.contains(id), "{id} lost"),
        }
    }
    assert!(on_disk.keys().all(|id| alice.msgs.contains_key(id)));
    for ((login, _), result) in logins.iter().zip(&results).skip(1) {
        let mut c = server.login(login, "secret");
        let ids: BTreeSet<String> = uidl(&mut c).into_iter().collect();
        let want: BTreeSet<String> = on_disk
            .keys()
            .filter(|id| !result.2.contains(*id))
            .cloned()
            .collect();
        assert!(ids == want, "{login}: final listing differs from the model");
    }
}
