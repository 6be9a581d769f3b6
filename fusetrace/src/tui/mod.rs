//! `fusetrace top`: a live view of every FUSE request in flight.
//!
//! By default it reads the kernel's own tables ([`kernel_view`]): the
//! in-flight slots, the histogram cells, and only the slow requests one by
//! one. With `--events` (and for the files and processes views, which need
//! every request's path and requester) it runs the event pipeline instead:
//! [`TopSink`] is then a [`Sink`] of the tracing session, finished requests
//! go into the [`state::TopState`], and on every session tick it reads the
//! keys (never blocking), takes the requests still in flight and, about
//! ten times a second, draws the [`view`]. Both draw through [`TopSink`].
//! Headless mode renders into an in-memory buffer instead of a terminal,
//! for benchmarks and tests.

pub mod detail;
pub mod groups;
pub mod inflight;
pub mod kernel_view;
pub mod state;
pub mod style;
pub mod summary;
pub mod view;
pub mod window;

use std::{
    io::{IsTerminal, Stdout},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use crossterm::event::{self, Event};
use ratatui::{
    Terminal,
    backend::{CrosstermBackend, TestBackend},
    buffer::Buffer,
};

use crate::{
    kernel::probes::Probes,
    pipeline::connections::ConnectionTable,
    pipeline::lifecycle::RequestLifecycle,
    pipeline::session::{self, StopWhen},
    pipeline::sink::Sink,
    pipeline::{filter::Filter, sink::LiveView, summary::RunSummary},
    units::parse_duration,
};
pub use state::StartView;
use state::{RunCounters, TopConfig, TopState};

/// Time between two frames.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(100);
/// The session's tick: keys are read this often.
const INPUT_INTERVAL: Duration = Duration::from_millis(25);
/// Size of the headless screen.
pub const HEADLESS_SIZE: (u16, u16) = (120, 40);

/// How `fusetrace top` runs.
#[derive(Debug, Clone, Copy)]
pub struct TopOptions {
    pub config: TopConfig,
    /// Render into memory instead of a terminal; no keys.
    pub headless: bool,
    /// The view shown first.
    pub view: StartView,
    /// Every request through the event pipeline (`--events`, or a view
    /// that needs it).
    pub events: bool,
}

/// `fusetrace top`'s own options (the filters are `trace`'s).
#[derive(clap::Args, Debug, Clone)]
pub struct TopArgs {
    /// Highlight requests in flight for at least this long.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub stall: Duration,
    /// Length of the sliding window of the per-opcode and detail views.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub window: Duration,
    /// Draw into memory instead of a terminal (benchmarks, scripts): no
    /// keys; runs until Ctrl-C or --duration and prints the last frame.
    #[arg(long)]
    pub headless: bool,
    /// The view to start in (what --headless prints): in-flight, ops,
    /// files or processes; `Tab` and `b` switch views later. Files and
    /// processes run the event pipeline, as --events does.
    #[arg(long, value_enum, default_value = "in-flight")]
    pub view: StartView,
    /// Every request through the event pipeline: paths, the files and
    /// processes views; costs more. Without it top reads the kernel's
    /// counts and in-flight table, and takes only slow requests one by one.
    #[arg(long)]
    pub events: bool,
}

impl TopArgs {
    pub fn options(&self) -> TopOptions {
        TopOptions {
            config: TopConfig {
                stall_ns: self.stall.as_nanos() as u64,
                window_ns: (self.window.as_nanos() as u64).max(1_000_000),
            },
            headless: self.headless,
            view: self.view,
            events: self.events || matches!(self.view, StartView::Files | StartView::Processes),
        }
    }
}

/// Where frames go.
enum Screen {
    Terminal(Terminal<CrosstermBackend<Stdout>>),
    Headless(Terminal<TestBackend>),
}

/// Puts the terminal back (raw mode off, main screen) when dropped: on
/// exit and on error. Panics are covered by the hook `ratatui::try_init`
/// installs.
struct RestoreOnDrop;

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Fails with the fix when stdout is not a terminal.
pub fn require_terminal() -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!(
            "fusetrace top draws on a terminal and stdout is not one; run it in a terminal, or add --headless"
        );
    }
    Ok(())
}

/// Frame timing, reported at the end of headless runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameStats {
    pub frames: u64,
    pub total_draw: Duration,
    pub max_draw: Duration,
}

/// The live view as a sink of the tracing session.
pub struct TopSink {
    pub state: TopState,
    screen: Screen,
    /// Set to stop the session (`q`).
    quit: Arc<AtomicBool>,
    /// When the next frame is due (frames keep a fixed schedule).
    next_frame: Option<Instant>,
    pub frame_stats: FrameStats,
    // Dropped after `screen`.
    _restore: Option<RestoreOnDrop>,
}

impl TopSink {
    /// Takes over the terminal (alternate screen, raw mode).
    pub fn terminal(config: TopConfig, quit: Arc<AtomicBool>) -> Result<TopSink> {
        require_terminal()?;
        let terminal = ratatui::try_init().context("cannot set up the terminal")?;
        Ok(TopSink {
            state: TopState::new(config),
            screen: Screen::Terminal(terminal),
            quit,
            next_frame: None,
            frame_stats: FrameStats::default(),
            _restore: Some(RestoreOnDrop),
        })
    }

    /// Renders into memory, `width` x `height`.
    pub fn headless(config: TopConfig, quit: Arc<AtomicBool>, size: (u16, u16)) -> TopSink {
        TopSink {
            state: TopState::new(config),
            screen: Screen::Headless(
                Terminal::new(TestBackend::new(size.0, size.1)).expect("in-memory terminal"),
            ),
            quit,
            next_frame: None,
            frame_stats: FrameStats::default(),
            _restore: None,
        }
    }

    /// One turn of the loop: applies the keys typed; when a frame is due
    /// (or `last`), lets `update` bring the state up to date first; draws
    /// when either asks for it.
    pub fn frame(
        &mut self,
        last: bool,
        update: impl FnOnce(&mut TopState) -> Result<()>,
    ) -> Result<()> {
        let keys = self.read_keys()?;
        let now = Instant::now();
        let due = last || self.next_frame.is_none_or(|t| now >= t);
        if due {
            update(&mut self.state)?;
            // On schedule, unless a frame was missed: then from now.
            let next = self.next_frame.map_or(now, |t| t + FRAME_INTERVAL);
            self.next_frame = Some(if next <= now {
                now + FRAME_INTERVAL
            } else {
                next
            });
        }
        if due || keys {
            self.draw()?;
        }
        Ok(())
    }

    /// The last frame drawn, when headless.
    pub fn buffer(&self) -> Option<&Buffer> {
        match &self.screen {
            Screen::Headless(t) => Some(t.backend().buffer()),
            Screen::Terminal(_) => None,
        }
    }

    fn draw(&mut self) -> Result<()> {
        let started = Instant::now();
        let state = &self.state;
        match &mut self.screen {
            Screen::Terminal(t) => {
                t.draw(|f| view::draw(f, state))?;
            }
            Screen::Headless(t) => {
                t.draw(|f| view::draw(f, state)).expect("in-memory draw");
            }
        }
        let took = started.elapsed();
        self.frame_stats.frames += 1;
        self.frame_stats.total_draw += took;
        self.frame_stats.max_draw = self.frame_stats.max_draw.max(took);
        Ok(())
    }

    /// Applies every key already typed; never waits. Returns whether any
    /// event asks for a redraw.
    fn read_keys(&mut self) -> Result<bool> {
        if !matches!(self.screen, Screen::Terminal(_)) {
            return Ok(false);
        }
        let mut changed = false;
        while event::poll(Duration::ZERO)? {
            match event::read()? {
                Event::Key(key) => {
                    changed = true;
                    if self.state.handle_key(key) {
                        self.quit.store(true, Ordering::Relaxed);
                    }
                }
                Event::Resize(..) => changed = true,
                _ => {}
            }
        }
        Ok(changed)
    }
}

impl Sink for TopSink {
    fn request(&mut self, rec: &RequestLifecycle, _mounts: &mut ConnectionTable) -> Result<()> {
        self.state.record(rec);
        Ok(())
    }

    fn live(&mut self, live: &LiveView, mounts: &mut ConnectionTable) -> Result<()> {
        self.frame(live.last, |state| {
            let t = live.tracker.counters();
            let counters = RunCounters {
                events: t.events,
                ring_drops: live.kernel.ring_drops,
                read_faults: live.kernel.read_faults,
                undecodable: live.undecodable,
                unmatched_replies: t.unmatched_replies,
                unmatched_ends: t.unmatched_ends,
                never_ended: t.never_ended,
                splice_transfers: live.kernel.splice_transfers,
                ..RunCounters::default()
            };
            state.tick(
                session::monotonic_ns(),
                live.in_flight(),
                counters,
                &mut |c| mounts.name(c),
            );
            Ok(())
        })
    }

    fn finish(&mut self, _summary: &RunSummary, _mounts: &mut ConnectionTable) -> Result<()> {
        // The terminal is restored when the sink is dropped, before the
        // caller prints the summary.
        Ok(())
    }
}

/// Buffer contents as text, one line per row (trailing blanks trimmed).
pub fn buffer_text(buffer: &Buffer) -> String {
    let area = buffer.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        for x in area.left()..area.right() {
            line.push_str(buffer[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Runs the live view until `q`, Ctrl-C, SIGTERM or `stop.after`, then
/// restores the terminal and prints the run's summary line: on the kernel's
/// tables unless `opts.events` (the probes were attached for that).
pub fn run(
    probes: &mut Probes,
    filter: &Filter,
    stop: &StopWhen,
    opts: &TopOptions,
) -> Result<RunSummary> {
    with_screen(stop, opts, |sink| {
        if opts.events {
            session::run(probes, filter, sink, stop, INPUT_INTERVAL)
        } else {
            run_on_kernel_tables(probes, filter, sink, stop)
        }
    })
}

/// The view on the kernel's tables ([`kernel_view`]) until `stop` (`q`
/// sets it too): keys every [`INPUT_INTERVAL`] (the ring buffer's slow
/// requests taken meanwhile), about ten frames a second.
fn run_on_kernel_tables(
    probes: &mut Probes,
    filter: &Filter,
    sink: &mut TopSink,
    stop: &StopWhen,
) -> Result<RunSummary> {
    let mut mounts = ConnectionTable::load_with(&filter.mounts);
    let mut reader = kernel_view::KernelReader::new(filter, sink.state.config.stall_ns);
    let started = Instant::now();
    loop {
        let stopping = stop.due(started, || kernel_view::in_flight(probes));
        reader.take_records(probes, &mut sink.state, INPUT_INTERVAL)?;
        sink.frame(stopping, |state| reader.frame(probes, state, &mut mounts))?;
        if stopping {
            break;
        }
    }
    Ok(reader.summary(probes))
}

/// Runs `body` with the screen (terminal or headless) set up for
/// `opts`, then restores the terminal and prints the last frame
/// (headless), the frame timing and the summary.
fn with_screen(
    stop: &StopWhen,
    opts: &TopOptions,
    body: impl FnOnce(&mut TopSink) -> Result<RunSummary>,
) -> Result<RunSummary> {
    let quit = Arc::clone(&stop.flag);
    let state = |sink: &mut TopSink| {
        if !opts.events {
            sink.state = TopState::new(opts.config).with_kernel_tables();
        }
        sink.state.start_in(opts.view);
    };
    let (summary, frames, last) = if opts.headless {
        let mut sink = TopSink::headless(opts.config, quit, HEADLESS_SIZE);
        state(&mut sink);
        let summary = body(&mut sink)?;
        let last = sink.buffer().map(buffer_text);
        (summary, sink.frame_stats, last)
    } else {
        let mut sink = TopSink::terminal(opts.config, quit)?;
        state(&mut sink);
        let summary = body(&mut sink);
        let frames = sink.frame_stats;
        // Restores the terminal before anything is printed.
        drop(sink);
        (summary?, frames, None)
    };
    if let Some(last) = last {
        // The last frame, for scripts and benchmarks.
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        write!(out, "{last}")?;
        out.flush()?;
    }
    let mean = if frames.frames > 0 {
        frames.total_draw / frames.frames as u32
    } else {
        Duration::ZERO
    };
    log::info!(
        "top: {} frames drawn, draw time mean {:.2} ms, max {:.2} ms",
        frames.frames,
        mean.as_secs_f64() * 1e3,
        frames.max_draw.as_secs_f64() * 1e3
    );
    summary.tell();
    Ok(summary)
}
