//! `fusetrace top`: views rendered from a synthetic tracker state into
//! ratatui's TestBackend, key handling, and the real thing in a tmux pane
//! against the reference daemon.

mod common;

use std::{
    fs::File,
    os::unix::fs::FileExt,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use fusetrace::{
    pipeline::{
        lifecycle::RequestLifecycle,
        tracker::{Tracker, TrackerConfig},
    },
    tui::{
        buffer_text,
        state::{RunCounters, TopConfig, TopState, View},
        view,
    },
};
use fusetrace_common::{EventKind, FLAG_BACKGROUND, FLAG_HAS_HEADER, FuseEvent};
use ratatui::{
    Terminal,
    backend::TestBackend,
    buffer::Buffer,
    style::{Color, Modifier},
};

use common::{Daemon, STEP_TIMEOUT, bin, is_mounted, require_root};

const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
/// "Now" of the synthetic state.
const NOW: u64 = 1_000 * SEC;
const CONN: u32 = 40;
const READ: u32 = 15;
const WRITE: u32 = 16;
const GETATTR: u32 = 3;
const LOOKUP: u32 = 1;

fn comm(name: &str) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..name.len()].copy_from_slice(name.as_bytes());
    c
}

/// An event of a request made by `pid` (`name`), or of daemon thread 901.
fn ev(kind: EventKind, unique: u64, op: u32, ts: u64, pid: u32, name: &str) -> FuseEvent {
    let daemon_side = matches!(kind, EventKind::Taken | EventKind::Replied);
    FuseEvent {
        kind: kind as u8,
        flags: FLAG_HAS_HEADER,
        connection: CONN,
        unique,
        opcode: op,
        ts_ns: ts,
        nodeid: 100 + unique,
        tgid: if daemon_side { 900 } else { pid },
        tid: if daemon_side { 901 } else { pid },
        req_pid: pid,
        comm: comm(if daemon_side { "daemon" } else { name }),
        ..Default::default()
    }
}

/// A tracker with three requests in flight and some finished ones.
struct Synthetic {
    tracker: Tracker,
    finished: Vec<RequestLifecycle>,
}

impl Synthetic {
    fn new() -> Synthetic {
        let mut s = Synthetic {
            tracker: Tracker::new(TrackerConfig::default()),
            finished: Vec::new(),
        };
        // Finished: READs taking 1..20 ms, LOOKUPs of 50us, one failing.
        for i in 0..20u64 {
            let t = NOW - 5 * SEC + i * 100 * MS;
            s.finish(2 + 2 * i, READ, t, (i + 1) * MS, 0, 7000, "cat");
        }
        for i in 0..5u64 {
            let t = NOW - 3 * SEC + i * MS;
            let error = if i == 0 { -2 } else { 0 };
            s.finish(200 + 2 * i, LOOKUP, t, 50_000, error, 7001, "ls");
        }
        // In flight: a READ in the daemon for 2.5 s, a background WRITE
        // queued for 1.2 s, a GETATTR queued for 200 ms.
        s.feed(ev(
            EventKind::Sent,
            1000,
            READ,
            NOW - 2_500 * MS,
            4242,
            "reader",
        ));
        s.feed(ev(EventKind::Taken, 1000, READ, NOW - 2_400 * MS, 4242, ""));
        let mut write = ev(
            EventKind::Sent,
            1002,
            WRITE,
            NOW - 1_200 * MS,
            4243,
            "writer",
        );
        write.flags |= FLAG_BACKGROUND;
        s.feed(write);
        s.feed(ev(
            EventKind::Sent,
            1004,
            GETATTR,
            NOW - 200 * MS,
            4244,
            "stat",
        ));
        s
    }

    fn feed(&mut self, e: FuseEvent) {
        self.tracker.observe(&e, &mut self.finished);
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        unique: u64,
        op: u32,
        t: u64,
        daemon: u64,
        error: i32,
        pid: u32,
        name: &str,
    ) {
        self.feed(ev(EventKind::Sent, unique, op, t, pid, name));
        self.feed(ev(EventKind::Taken, unique, op, t + 10_000, pid, ""));
        let mut reply = ev(EventKind::Replied, unique, 0, t + 10_000 + daemon, pid, "");
        reply.error = error;
        self.feed(reply);
        let mut end = ev(EventKind::Ended, unique, op, t + 12_000 + daemon, pid, name);
        end.error = error;
        self.feed(end);
    }

    /// A state that has seen the finished requests and one tick at `NOW`.
    fn state(&mut self, counters: RunCounters) -> TopState {
        let mut state = TopState::new(TopConfig::default());
        // The window starts before the first finished request.
        state.tick(
            NOW - 6 * SEC,
            std::iter::empty(),
            RunCounters::default(),
            &mut name,
        );
        for r in self.finished.drain(..) {
            state.record(&r);
        }
        state.tick(NOW, self.tracker.in_flight(), counters, &mut name);
        state
    }
}

fn name(conn: u32) -> String {
    format!("/mnt/test{conn}")
}

fn render(state: &TopState, width: u16, height: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| view::draw(f, state)).unwrap();
    terminal.backend().buffer().clone()
}

fn lines(buffer: &Buffer) -> Vec<String> {
    buffer_text(buffer).lines().map(str::to_string).collect()
}

/// Row index and column of the first line containing `needle`.
fn find(buffer: &Buffer, needle: &str) -> Option<(u16, u16)> {
    lines(buffer).iter().enumerate().find_map(|(y, l)| {
        l.find(needle)
            .map(|byte| (y as u16, l[..byte].chars().count() as u16))
    })
}

/// Opcodes of the in-flight rows, top to bottom.
fn in_flight_ops(buffer: &Buffer) -> Vec<String> {
    lines(buffer)
        .iter()
        .filter(|l| l.contains("queued") || l.contains("in daemon") || l.contains("replying"))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect()
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn type_text(state: &mut TopState, text: &str) {
    for c in text.chars() {
        assert!(!state.handle_key(key(KeyCode::Char(c))));
    }
}

#[test]
fn in_flight_rows_oldest_first_stalled_highlighted_drops_shown() {
    let mut synth = Synthetic::new();
    let state = synth.state(RunCounters {
        ring_drops: 17,
        unmatched_ends: 3,
        ..RunCounters::default()
    });
    let buf = render(&state, 80, 24);
    let text = buffer_text(&buf);
    assert_eq!(in_flight_ops(&buf), ["READ", "WRITE", "GETATTR"], "{text}");

    let (y, _) = find(&buf, "READ").unwrap();
    let row = &lines(&buf)[y as usize];
    assert!(row.trim_start().starts_with("2.5s READ"), "{row}");
    assert!(
        row.contains("in daemon") && row.contains("4242") && row.contains("reader"),
        "{row}"
    );
    assert!(row.contains("901"), "daemon thread: {row}");
    let write = &lines(&buf)[find(&buf, "WRITE").unwrap().0 as usize];
    assert!(
        write.contains("1.2s") && write.contains("background-queued"),
        "{write}"
    );
    let getattr = &lines(&buf)[find(&buf, "GETATTR").unwrap().0 as usize];
    assert!(
        getattr.contains("200ms") && getattr.contains(" queued"),
        "{getattr}"
    );

    // Rows in flight for the stall threshold (1s) or more are red.
    for (op, stalled) in [("READ", true), ("WRITE", true), ("GETATTR", false)] {
        let (y, x) = find(&buf, op).unwrap();
        let fg = buf[(x, y)].fg;
        assert_eq!(fg == Color::Red, stalled, "{op} has colour {fg:?}\n{text}");
    }
    assert!(text.contains("stalled ≥1s 2"), "{text}");

    // Losses are shown plainly, in red when not zero.
    let (y, x) = find(&buf, "ring drops 17").unwrap();
    let digits = x + "ring drops ".len() as u16;
    assert_eq!(buf[(digits, y)].fg, Color::Red);
    assert!(text.contains("ends 3"), "{text}");
    assert!(text.contains("in flight 3"), "{text}");
    assert!(text.contains("1:/mnt/test40"), "mount selector: {text}");
}

#[test]
fn sort_keys_reorder_the_rows() {
    let mut state = Synthetic::new().state(RunCounters::default());
    // s: next column (opcode).
    state.handle_key(key(KeyCode::Char('s')));
    let buf = render(&state, 80, 24);
    assert_eq!(in_flight_ops(&buf), ["GETATTR", "READ", "WRITE"]);
    assert!(buffer_text(&buf).contains("sort: op"));
    // r: reversed.
    state.handle_key(key(KeyCode::Char('r')));
    assert_eq!(
        in_flight_ops(&render(&state, 80, 24)),
        ["WRITE", "READ", "GETATTR"]
    );
    // 4: by requester pid; 1: back to age, oldest first.
    state.handle_key(key(KeyCode::Char('4')));
    assert_eq!(
        in_flight_ops(&render(&state, 80, 24)),
        ["READ", "WRITE", "GETATTR"]
    );
    state.handle_key(key(KeyCode::Char('1')));
    assert_eq!(
        in_flight_ops(&render(&state, 80, 24)),
        ["READ", "WRITE", "GETATTR"]
    );
    // 1 again reverses: youngest first.
    state.handle_key(key(KeyCode::Char('1')));
    assert_eq!(
        in_flight_ops(&render(&state, 80, 24)),
        ["GETATTR", "WRITE", "READ"]
    );
}

#[test]
fn filter_keys_narrow_the_rows() {
    let mut state = Synthetic::new().state(RunCounters::default());
    state.handle_key(key(KeyCode::Char('/')));
    type_text(&mut state, "op:read");
    // While typing, the footer shows the filter and the rows are unchanged.
    let buf = render(&state, 80, 24);
    assert!(buffer_text(&buf).contains("filter: op:read"));
    assert_eq!(in_flight_ops(&buf).len(), 3);
    state.handle_key(key(KeyCode::Enter));
    let buf = render(&state, 80, 24);
    assert_eq!(in_flight_ops(&buf), ["READ"]);
    assert!(buffer_text(&buf).contains("in flight: 1 of 3"));

    // By pid, and by command (a bare word).
    for (filter, want) in [("pid:4244", "GETATTR"), ("writer", "WRITE")] {
        state.handle_key(key(KeyCode::Char('/')));
        for _ in 0..20 {
            state.handle_key(key(KeyCode::Backspace));
        }
        type_text(&mut state, filter);
        state.handle_key(key(KeyCode::Enter));
        assert_eq!(in_flight_ops(&render(&state, 80, 24)), [want], "{filter}");
    }
    // By mount: none matches, and the view says so.
    state.handle_key(key(KeyCode::Char('/')));
    for _ in 0..20 {
        state.handle_key(key(KeyCode::Backspace));
    }
    type_text(&mut state, "mount:/elsewhere");
    state.handle_key(key(KeyCode::Enter));
    assert!(buffer_text(&render(&state, 80, 24)).contains("matches the filter"));
    // Esc clears the filter.
    state.handle_key(key(KeyCode::Esc));
    assert_eq!(in_flight_ops(&render(&state, 80, 24)).len(), 3);
}

#[test]
fn pause_freezes_the_screen_until_resumed() {
    let mut synth = Synthetic::new();
    let mut state = synth.state(RunCounters::default());
    state.handle_key(key(KeyCode::Char('p')));
    let frozen = buffer_text(&render(&state, 80, 24));
    assert!(frozen.contains("PAUSED"));

    // A new request and a later tick change nothing on screen.
    synth.feed(ev(
        EventKind::Sent,
        1006,
        LOOKUP,
        NOW + 100 * MS,
        4245,
        "find",
    ));
    let later = NOW + 2 * SEC;
    state.tick(
        later,
        synth.tracker.in_flight(),
        RunCounters::default(),
        &mut name,
    );
    let buf = render(&state, 80, 24);
    assert_eq!(buffer_text(&buf), frozen);
    // Sorting still works on the frozen rows.
    state.handle_key(key(KeyCode::Char('s')));
    assert_eq!(
        in_flight_ops(&render(&state, 80, 24)),
        ["GETATTR", "READ", "WRITE"]
    );
    state.handle_key(key(KeyCode::Char('1')));

    state.handle_key(key(KeyCode::Char('p')));
    state.tick(
        later,
        synth.tracker.in_flight(),
        RunCounters::default(),
        &mut name,
    );
    let buf = render(&state, 80, 24);
    let text = buffer_text(&buf);
    assert!(!text.contains("PAUSED"));
    assert_eq!(in_flight_ops(&buf), ["READ", "WRITE", "GETATTR", "LOOKUP"]);
    assert!(text.contains("4.5s READ"), "ages moved on: {text}");
}

#[test]
fn summary_and_detail_views() {
    let mut state = Synthetic::new().state(RunCounters::default());
    state.handle_key(key(KeyCode::Tab));
    assert_eq!(state.view, View::Summary);
    let buf = render(&state, 80, 24);
    let text = buffer_text(&buf);
    // Sorted by rate: 20 READs, then 5 LOOKUPs, then the in-flight-only rows.
    let read = &lines(&buf)[find(&buf, "READ").unwrap().0 as usize];
    let lookup = &lines(&buf)[find(&buf, "LOOKUP").unwrap().0 as usize];
    assert!(
        find(&buf, "READ").unwrap().0 < find(&buf, "LOOKUP").unwrap().0,
        "{text}"
    );
    let cols: Vec<&str> = read.split_whitespace().collect();
    // OP REQ/s INFL ERR, then p50/p99 of queue, daemon, complete, total.
    assert_eq!(&cols[..4], ["READ", "3.3", "1", "0"], "{read}");
    assert_eq!(cols[6], "10ms", "daemon p50 of 1..20ms: {read}");
    assert_eq!(cols[7], "20ms", "daemon p99: {read}");
    let cols: Vec<&str> = lookup.split_whitespace().collect();
    assert_eq!(&cols[..4], ["LOOKUP", "0.8", "0", "1"], "{lookup}");
    assert!(text.contains("WRITE") && text.contains("GETATTR"), "{text}");

    // Enter on the selected (first) row: the READ detail.
    state.handle_key(key(KeyCode::Enter));
    assert_eq!(state.view, View::Detail);
    let buf = render(&state, 80, 24);
    let text = buffer_text(&buf);
    assert!(text.contains("READ on /mnt/test40"), "{text}");
    assert!(text.contains("20 finished"), "{text}");
    assert!(text.contains("requests per latency decade"), "{text}");
    assert!(text.contains("10ms"), "decade labels: {text}");
    // The slowest READ (unique 40, 20 ms in the daemon) comes first.
    let slow = lines(&buf)
        .iter()
        .position(|l| l.contains("SLOWEST"))
        .unwrap();
    let first = &lines(&buf)[slow + 1];
    assert!(first.contains(" 40 ") && first.contains("cat"), "{text}");

    // Esc goes back; Enter on an in-flight row shows that request.
    state.handle_key(key(KeyCode::Esc));
    assert_eq!(state.view, View::Summary);
    state.handle_key(key(KeyCode::BackTab));
    assert_eq!(state.view, View::InFlight);
    state.handle_key(key(KeyCode::Down));
    state.handle_key(key(KeyCode::Enter));
    let text = buffer_text(&render(&state, 80, 24));
    assert!(text.contains("WRITE on /mnt/test40"), "{text}");
    assert!(
        text.contains("request 1002") && text.contains("background-queued for 1.2s"),
        "{text}"
    );
}

#[test]
fn help_overlay_and_small_screens() {
    let mut state = Synthetic::new().state(RunCounters::default());
    state.handle_key(key(KeyCode::Char('?')));
    let text = buffer_text(&render(&state, 80, 24));
    assert!(
        text.contains("keys (any key closes)") && text.contains("pause"),
        "{text}"
    );
    assert!(!state.handle_key(key(KeyCode::Char('x'))));
    assert!(!state.help);
    // Every view draws at 80x24 and smaller without panicking.
    for _ in 0..3 {
        for (w, h) in [(80, 24), (40, 10), (20, 5), (200, 60)] {
            render(&state, w, h);
        }
        state.handle_key(key(KeyCode::Tab));
    }
    assert!(state.handle_key(key(KeyCode::Char('q'))));
    assert!(state.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)));
}

/// A tmux server on its own socket, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tmux = Tmux {
            socket: format!(
                "fusetrace-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let status = tmux
            .cmd()
            .args(["new-session", "-d", "-x", "80", "-y", "24", command])
            .status()
            .expect("tmux (apt-get install tmux)");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-S", "-200"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the pane until `done` holds; panics with the screen at the deadline.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {what}; screen:\n{screen}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Tmux {
    /// Waits for `fusetrace top` to have exited (the pane runs
    /// `top ...; echo EXITED rc=$?; stty -a`) and checks the terminal is
    /// back to normal.
    fn assert_restored(&self) {
        let screen = self.wait_for("the shell after top", |s| s.contains("EXITED"));
        assert!(screen.contains("EXITED rc=0"), "{screen}");
        // The alternate screen is gone: the TUI's footer is not on the
        // screen, what was printed before it is.
        assert!(!screen.contains("Tab view"), "{screen}");
        assert!(screen.contains("fusetrace: tracing"), "{screen}");
        assert!(screen.contains("frames drawn"), "{screen}");
        // Raw mode is off: the terminal echoes and reads lines again.
        let stty: Vec<&str> = screen.split_whitespace().collect();
        assert!(
            stty.contains(&"icanon") && stty.contains(&"echo"),
            "{screen}"
        );
    }

    /// Pid of the pane's first command's child (`fusetrace top` under `sh -c`).
    fn child_pid(&self) -> i32 {
        let out = self
            .cmd()
            .args(["display-message", "-p", "#{pane_pid}"])
            .output()
            .unwrap();
        let sh: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let children = std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children")).unwrap();
        children
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("sh {sh} has no child"))
            .parse()
            .unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // The socket file outlives the server: remove it too.
        let socket = self
            .cmd()
            .args(["display-message", "-p", "#{socket_path}"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        let _ = self.cmd().arg("kill-server").status();
        if let Ok(path) = socket.as_deref()
            && !path.is_empty()
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The age of the first READ row in the "in daemon" stage, in seconds.
fn read_in_daemon_age(screen: &str) -> Option<f64> {
    screen.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        let age = words.next()?;
        (words.next()? == "READ" && l.contains("in daemon")).then_some(())?;
        let secs = age.strip_suffix('s')?;
        // ms, us and ns ages are under a second.
        secs.parse::<f64>().ok()
    })
}

#[test]
fn top_in_a_real_terminal_shows_a_blocked_read_and_restores_the_terminal() {
    require_root();
    let daemon = Daemon::start("top", &["--direct-io", "--latency", "READ=2s"]);
    let file = daemon.path().join("slow");
    std::fs::write(&file, b"data").unwrap();

    let tmux = Tmux::start(&format!(
        "sh -c '{} top --mount {}; echo EXITED rc=$?; stty -a; exec sleep 600'",
        bin(),
        daemon.path().display()
    ));
    tmux.wait_for("the live view", |s| s.contains("Tab view"));

    // A reader blocked in READs (2 s each) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        let f = File::open(&file).unwrap();
        thread::spawn(move || {
            let mut b = [0u8; 1];
            while !stop.load(Ordering::Relaxed) {
                f.read_at(&mut b, 0).unwrap();
            }
        })
    };
    let screen = tmux.wait_for("a READ in daemon for over a second", |s| {
        read_in_daemon_age(s).is_some_and(|age| age > 1.0)
    });
    assert!(screen.contains("1:"), "the mount is listed: {screen}");

    tmux.cmd().args(["send-keys", "q"]).status().unwrap();
    tmux.assert_restored();

    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let path = daemon.path().to_path_buf();
    daemon.stop();
    assert!(!is_mounted(&path));
    drop(tmux);
}

#[test]
fn headless_top_renders_without_a_terminal() {
    require_root();
    let daemon = Daemon::start("top-headless", &["--direct-io", "--latency", "READ=1500ms"]);
    let file = daemon.path().join("slow");
    std::fs::write(&file, b"data").unwrap();
    let mut top = Command::new(bin())
        .args(["top", "--headless", "--stall", "500ms", "--mount"])
        .arg(daemon.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = top.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    // Attached once it says so (EOF first means it failed).
    let mut before = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("fusetrace: tracing") {
            break;
        }
        before.push(line);
    }
    assert!(
        top.try_wait().unwrap().is_none(),
        "top exited:\n{}",
        before.join("\n")
    );
    // One READ, blocked for 1.5 s, still in the daemon when top stops.
    let reader = thread::spawn(move || {
        let mut b = [0u8; 1];
        File::open(&file).unwrap().read_at(&mut b, 0).unwrap();
    });
    // Wait until the daemon holds the READ: the daemon counts it when it
    // takes it.
    let deadline = Instant::now() + STEP_TIMEOUT;
    while daemon.snapshot().get("READ").copied().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the daemon never got the READ");
    }
    common::signal(&top, libc::SIGINT);
    let out = top.wait_with_output().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(out.status.success(), "{}", rest.join("\n"));
    let frame = String::from_utf8_lossy(&out.stdout);
    let row = frame
        .lines()
        .find(|l| l.contains("READ") && l.contains("in daemon"))
        .unwrap_or_else(|| panic!("no READ in daemon in the last frame:\n{frame}"));
    assert!(
        row.trim_start().starts_with(|c: char| c.is_ascii_digit()),
        "age first: {row}"
    );
    // The file column: no path until names are traced, so its node.
    assert!(row.contains(" node "), "the file: {row}");
    assert!(
        rest.iter().any(|l| l.contains("frames drawn")),
        "{}",
        rest.join("\n")
    );
    // The last frame shows what the summary counts as in flight at exit.
    let summary = rest
        .iter()
        .find(|l| l.contains("in flight at exit"))
        .unwrap();
    let before = &summary[..summary.find(" in flight at exit").unwrap()];
    let at_exit: usize = before
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        frame.contains(&format!("in flight: {at_exit} of {at_exit}")),
        "{summary}\n{frame}"
    );
    reader.join().unwrap();
    daemon.stop();
}

#[test]
fn selection_scrolls_through_more_rows_than_fit() {
    let mut synth = Synthetic::new();
    for i in 0..50u64 {
        let pid = 5000 + i as u32;
        synth.feed(ev(
            EventKind::Sent,
            2000 + 2 * i,
            GETATTR,
            NOW - 100 * MS + i * MS,
            pid,
            "many",
        ));
    }
    let mut state = synth.state(RunCounters::default());
    let buf = render(&state, 80, 24);
    assert!(buffer_text(&buf).contains("in flight: 53 of 53"));
    assert!(
        !buffer_text(&buf).contains("5049"),
        "the youngest is off screen at first"
    );
    // End: the youngest row (pid 5049) is shown and selected.
    state.handle_key(key(KeyCode::End));
    let buf = render(&state, 80, 24);
    let (y, x) = find(&buf, "5049").unwrap_or_else(|| panic!("{}", buffer_text(&buf)));
    assert!(buf[(x, y)].modifier.contains(Modifier::REVERSED));
    // Up moves the selection to the row above it.
    state.handle_key(key(KeyCode::Up));
    let buf = render(&state, 80, 24);
    let (y2, x2) = find(&buf, "5048").unwrap();
    assert!(buf[(x2, y2)].modifier.contains(Modifier::REVERSED));
    assert!(!buf[(x, y)].modifier.contains(Modifier::REVERSED));
}

#[test]
fn top_restores_the_terminal_on_sigterm() {
    require_root();
    let daemon = Daemon::start("top-sigterm", &[]);
    let tmux = Tmux::start(&format!(
        "sh -c '{} top --mount {}; echo EXITED rc=$?; stty -a; exec sleep 600'",
        bin(),
        daemon.path().display()
    ));
    tmux.wait_for("the live view", |s| s.contains("Tab view"));
    // SAFETY: plain kill(2) of a process this test started.
    assert_eq!(unsafe { libc::kill(tmux.child_pid(), libc::SIGTERM) }, 0);
    tmux.assert_restored();
    daemon.stop();
}

#[test]
fn top_without_a_terminal_names_the_fix() {
    let out = Command::new(bin())
        .arg("top")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--headless"), "{stderr}");
    assert!(
        !stderr.contains("tracing"),
        "failed before attaching: {stderr}"
    );
}

#[test]
fn mount_selector_shows_one_connection() {
    let mut synth = Synthetic::new();
    let mut other = ev(EventKind::Sent, 3000, READ, NOW - 300 * MS, 6000, "other");
    other.connection = CONN + 1;
    synth.feed(other);
    let mut state = synth.state(RunCounters::default());
    let text = buffer_text(&render(&state, 80, 24));
    assert!(text.contains("1:/mnt/test40 2:/mnt/test41"), "{text}");
    assert!(text.contains("in flight: 4 of 4"), "{text}");
    // m: the first mount only, then the second, then all again.
    state.handle_key(key(KeyCode::Char('m')));
    let buf = render(&state, 80, 24);
    assert_eq!(in_flight_ops(&buf), ["READ", "WRITE", "GETATTR"]);
    state.handle_key(key(KeyCode::Char('m')));
    let buf = render(&state, 80, 24);
    assert_eq!(in_flight_ops(&buf), ["READ"]);
    assert!(buffer_text(&buf).contains("other"));
    // The per-opcode view, too; rows carry the mount's number at 80 columns.
    state.handle_key(key(KeyCode::Tab));
    let text = buffer_text(&render(&state, 80, 24));
    assert!(
        text.contains("2:READ") && !text.contains("1:READ"),
        "{text}"
    );
    state.handle_key(key(KeyCode::Char('m')));
    let text = buffer_text(&render(&state, 80, 24));
    assert!(text.contains("1:READ") && text.contains("2:READ"), "{text}");
    // Wide screens have a mount column instead.
    let text = buffer_text(&render(&state, 120, 24));
    assert!(
        text.contains("MOUNT") && text.contains("/mnt/test41"),
        "{text}"
    );
}

/// `fusetrace top --headless ARGS --mount M` started and attached (its
/// stderr's lines, the first "tracing" one consumed).
fn headless_top(args: &[&str], mount: &std::path::Path) -> (std::process::Child, Receiver) {
    let mut top = Command::new(bin())
        .args(["top", "--headless"])
        .args(args)
        .arg("--mount")
        .arg(mount)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = common::line_channel(top.stderr.take().unwrap());
    common::wait_for_line_within(
        &stderr,
        "fusetrace: tracing",
        "fusetrace top",
        common::START_TIMEOUT,
    );
    (top, stderr)
}

type Receiver = std::sync::mpsc::Receiver<String>;

/// SIGINT, then the last frame and the rest of stderr.
fn stop_top(top: std::process::Child, stderr: Receiver) -> (String, String) {
    common::signal(&top, libc::SIGINT);
    let out = top.wait_with_output().unwrap();
    let rest: Vec<String> = stderr.iter().collect();
    assert!(out.status.success(), "{}", rest.join("\n"));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        rest.join("\n"),
    )
}

#[test]
fn headless_top_on_kernel_tables_shows_the_requester_and_the_daemon_thread() {
    require_root();
    let daemon = Daemon::start("top-tables", &["--direct-io", "--latency", "READ=1500ms"]);
    let file = daemon.path().join("slow");
    std::fs::write(&file, b"data").unwrap();
    // The default mode: the kernel's tables.
    let (top, stderr) = headless_top(&["--stall", "500ms"], daemon.path());
    let mut cat = Command::new("cat")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The daemon counts the READ when it takes it.
    let deadline = Instant::now() + STEP_TIMEOUT;
    while daemon.snapshot().get("READ").copied().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the daemon never got the READ");
    }
    let (frame, rest) = stop_top(top, stderr);
    assert!(
        rest.contains("counted in the kernel (stages and total)"),
        "the kernel counted: {rest}"
    );
    assert!(frame.contains("records "), "kernel-table header: {frame}");
    let row = frame
        .lines()
        .find(|l| l.contains("READ") && l.contains("in daemon"))
        .unwrap_or_else(|| panic!("no READ in daemon in the last frame:\n{frame}"));
    // AGE OP FILE(node N) PID COMMAND DAEMON STAGE(in daemon) MOUNT
    let words: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&words[1..3], ["READ", "node"], "{row}");
    assert_eq!(words[4], cat.id().to_string(), "the requester: {row}");
    assert_eq!(words[5], "cat", "its command: {row}");
    let daemon_tid: u32 = words[6]
        .parse()
        .unwrap_or_else(|_| panic!("daemon thread: {row}"));
    assert!(
        std::path::Path::new(&format!("/proc/{}/task/{daemon_tid}", daemon.child.id())).exists(),
        "{daemon_tid} is a thread of the daemon: {row}"
    );
    // The last frame shows what the summary counts as in flight at exit.
    let summary = rest
        .lines()
        .find(|l| l.contains("in flight at exit"))
        .unwrap();
    let before = &summary[..summary.find(" in flight at exit").unwrap()];
    let at_exit = before.split_whitespace().last().unwrap();
    assert!(
        frame.contains(&format!("in flight: {at_exit} of {at_exit}")),
        "{summary}\n{frame}"
    );
    assert!(cat.wait().unwrap().success());
    daemon.stop();
}

/// Opcode names of the rows of the per-opcode view's frame.
fn op_rows(frame: &str) -> std::collections::BTreeSet<String> {
    frame
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("OP "))
        .skip(1)
        .take_while(|l| !l.contains("Tab view"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn headless_top_ops_view_on_kernel_tables_lists_the_opcodes_served() {
    require_root();
    let daemon = Daemon::start("top-tables-ops", &[]);
    let mount = daemon.path().to_str().unwrap().to_string();
    let mut served = Default::default();
    let frame = common::top_frame("ops", &mount, || {
        let before = daemon.snapshot();
        common::run_ok(Command::new(bin()).args([
            "load",
            &mount,
            "--workload",
            "metadata",
            "--ops",
            "300",
        ]));
        served = daemon.snapshot();
        for (op, n) in &before {
            *served.get_mut(op).unwrap() -= n;
        }
    });
    let served: std::collections::BTreeSet<String> = served
        .into_iter()
        .filter(|(op, n)| *n > 0 && !matches!(op.as_str(), "FORGET" | "BATCH_FORGET"))
        .map(|(op, _)| op)
        .collect();
    assert!(served.len() >= 3, "{served:?}");
    assert!(frame.contains("per opcode"), "{frame}");
    assert_eq!(op_rows(&frame), served, "{frame}");
    daemon.stop();
}

#[test]
fn kernel_tables_count_what_the_daemon_served_and_send_the_slow_ones() {
    use fusetrace::{
        kernel::probes::{KernelFilter, ProbeOptions, Probes},
        pipeline::{connections::ConnectionTable, filter::Filter, lifecycle::LatencyStage},
        tui::kernel_view::KernelReader,
    };
    let _alone = common::tracing_alone();
    let daemon = Daemon::start(
        "top-tables-exact",
        &["--direct-io", "--latency", "READ=300ms"],
    );
    let file = daemon.path().join("slow");
    std::fs::write(&file, b"data").unwrap();
    let conn = common::connection_of(daemon.path()) as u32;
    let mut probes = Probes::attach(&ProbeOptions {
        aggregate: Some(KernelFilter {
            connections: vec![conn],
            stages: true,
            records: true,
            ..KernelFilter::default()
        }),
        ..ProbeOptions::default()
    })
    .unwrap();
    let filter = Filter {
        connections: vec![conn],
        ..Filter::default()
    };
    // A window holding the whole test; the record threshold starts at
    // --stall, and is half of it (100 ms) after the first frame.
    let config = TopConfig {
        stall_ns: 200 * MS,
        window_ns: 600 * SEC,
    };
    let mut state = TopState::new(config).with_kernel_tables();
    let mut reader = KernelReader::new(&filter, config.stall_ns);
    let mut mounts = ConnectionTable::load_with(&[]);
    let counts = |state: &TopState| -> std::collections::BTreeMap<String, u64> {
        state
            .shown
            .ops
            .iter()
            .filter(|r| r.key.0 == conn)
            .map(|r| (fusetrace::pipeline::opcode::name(r.key.1), r.count))
            .collect()
    };
    // The daemon counts a request when it takes it, the kernel when it
    // ends: the two are read with nothing of the mount in flight (a
    // close's RELEASE is sent in the background and may still be).
    let quiet = |probes: &Probes| {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while probes
            .in_flight_sent()
            .unwrap()
            .iter()
            .any(|(s, _)| s.connection == conn)
        {
            assert!(Instant::now() < deadline, "requests stayed in flight");
            thread::yield_now();
        }
    };
    quiet(&probes);
    let before = daemon.snapshot();
    reader.frame(&mut probes, &mut state, &mut mounts).unwrap();
    let at_start = counts(&state);
    let mount = daemon.path().to_str().unwrap();
    common::run_ok(Command::new(bin()).args([
        "load",
        mount,
        "--workload",
        "metadata",
        "--ops",
        "500",
        "--jobs",
        "2",
    ]));
    // One READ of 300 ms, by a process that then waits with the file
    // open (no FLUSH or RELEASE yet, and its name still readable). Not
    // from this process: another test's child would inherit the file
    // and close it at its exec, a FLUSH at any time.
    let mut reader_process = Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys\n\
             f = os.open(sys.argv[1], os.O_RDONLY)\n\
             os.read(f, 1)\n\
             print('read', flush=True)\n\
             sys.stdin.read()",
        )
        .arg(&file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let said = common::line_channel(reader_process.stdout.take().unwrap());
    common::wait_for_line_within(&said, "read", "the reader", STEP_TIMEOUT);
    quiet(&probes);
    let served = daemon.snapshot();
    // Its record was written before the read returned.
    reader
        .take_records(&mut probes, &mut state, Duration::ZERO)
        .unwrap();
    reader.frame(&mut probes, &mut state, &mut mounts).unwrap();

    let mut got = counts(&state);
    for (op, n) in at_start {
        *got.get_mut(&op).unwrap() -= n;
    }
    got.retain(|_, n| *n > 0);
    let expected: std::collections::BTreeMap<String, u64> = served
        .iter()
        .map(|(op, n)| (op.clone(), n - before.get(op).copied().unwrap_or(0)))
        .filter(|(op, n)| *n > 0 && !matches!(op.as_str(), "FORGET" | "BATCH_FORGET"))
        .collect();
    let skipped = probes.counters().program_runs_skipped;
    common::assert_counts_equal(&got, &expected, 0, skipped, "top on the kernel's tables");
    assert!(expected.len() >= 3, "{expected:?}");

    // The slow READ came one by one, with its requester; the fast
    // requests did not.
    let slowest = state.windows().slowest((conn, READ), 10);
    assert_eq!(slowest.len(), 1, "{slowest:?}");
    let read = &slowest[0];
    assert_eq!(read.pid, Some(reader_process.id()));
    assert_eq!(read.comm.as_deref(), Some("python3"));
    assert!(read.stages[3].unwrap() >= 300 * MS, "{read:?}");
    let daemon_stage = read.stages[LatencyStage::ALL
        .iter()
        .position(|s| *s == LatencyStage::DaemonService)
        .unwrap()];
    assert!(daemon_stage.unwrap() >= 300 * MS, "{read:?}");
    let recorded: Vec<_> = state
        .shown
        .ops
        .iter()
        .flat_map(|r| state.windows().slowest(r.key, 100))
        .collect();
    assert_eq!(
        recorded.len(),
        1,
        "only the slow READ was sent whole: {recorded:?}"
    );
    // The window holds fewer requests than the budget: the threshold
    // comes down from --stall, by half a frame.
    assert_eq!(state.record_min_ns, Some(50 * MS));
    drop(reader_process.stdin.take());
    assert!(reader_process.wait().unwrap().success());
    drop(probes);
    daemon.stop();
}
