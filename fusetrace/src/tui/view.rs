//! Drawing `fusetrace top`: the frame layout, the header, the footer and
//! the help overlay. The panels are in their own modules. Views read
//! [`TopState`] and never change it.

use ratatui::{
    Frame,
    layout::{Constraint, Flex, Layout, Rect},
    style::{Color, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph, Sparkline},
};

use super::{
    detail, inflight,
    state::{TopState, View},
    style::{LOSS, SELECTED, STALLED, tail},
    summary,
};
use crate::units::format_duration;

/// Rows of the header.
const HEADER_ROWS: u16 = 5;

/// Draws one frame.
pub fn draw(frame: &mut Frame, state: &TopState) {
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(HEADER_ROWS),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_header(frame, header, state);
    match state.view {
        View::InFlight => inflight::draw(frame, body, state),
        View::Summary => summary::draw(frame, body, state),
        View::Detail => detail::draw(frame, body, state),
    }
    draw_footer(frame, footer, state);
    if state.help {
        draw_help(frame, state);
    }
}

fn counter(label: &str, value: u64) -> Vec<Span<'static>> {
    let style = if value > 0 { LOSS } else { Style::new() };
    vec![
        Span::raw(format!("{label} ")),
        Span::styled(value.to_string(), style),
        Span::raw("  "),
    ]
}

fn draw_header(frame: &mut Frame, area: Rect, state: &TopState) {
    let shown = &state.shown;
    let c = &shown.counters;

    let mut mounts = vec![
        Span::styled("fusetrace top", Style::new().bold()),
        "  ".into(),
    ];
    if state.paused {
        mounts.push(Span::styled(
            " PAUSED ",
            Style::new().fg(Color::Black).bg(Color::Yellow).bold(),
        ));
        mounts.push("  ".into());
    }
    mounts.push("mounts (m): ".into());
    let pick = |selected: bool| if selected { SELECTED } else { Style::new() };
    mounts.push(Span::styled("all", pick(state.mount.is_none())));
    for (i, (conn, name)) in shown.connections.iter().enumerate() {
        mounts.push(" ".into());
        mounts.push(Span::styled(
            format!("{}:{}", i + 1, tail(name, 30)),
            pick(state.mount == Some(*conn)),
        ));
    }

    let stalled = state.stalled();
    let rates = Line::from(vec![
        Span::raw(format!(
            "requests {:.0}/s  {} {:.0}/s  in flight {}  stalled ≥{} ",
            shown.request_rate,
            // Kernel tables: the slow requests the kernel sent one by one.
            if c.in_kernel { "records" } else { "events" },
            shown.event_rate,
            shown.in_flight.len(),
            format_duration(std::time::Duration::from_nanos(state.config.stall_ns)),
        )),
        Span::styled(
            stalled.to_string(),
            if stalled > 0 { STALLED } else { Style::new() },
        ),
        Span::raw(format!(
            "  window {}",
            format_duration(std::time::Duration::from_nanos(shown.window_ns))
        )),
    ]);

    let mut lost = vec![Span::raw("lost: ")];
    lost.extend(counter("ring drops", c.ring_drops));
    let mut unmatched = vec![Span::raw("unmatched: ")];
    if c.in_kernel {
        // What the kernel could not count (`stats`' summary says the same).
        lost.extend(counter("table full", c.table_full));
        lost.extend(counter("histogram full", c.histogram_full));
        lost.extend(counter("undecodable", c.undecodable));
        unmatched.extend(counter("ends", c.unmatched_ends));
        unmatched.extend(counter("stages missing", c.stages_missing));
    } else {
        lost.extend(counter("undecodable", c.undecodable));
        lost.extend(counter("unreadable headers", c.read_faults));
        unmatched.extend(counter("replies", c.unmatched_replies));
        unmatched.extend(counter("ends", c.unmatched_ends));
        unmatched.extend(counter("never ended", c.never_ended));
    }
    if c.splice_transfers > 0 {
        unmatched.push(Span::styled(
            format!("splice (not decoded) {}", c.splice_transfers),
            LOSS,
        ));
    }

    let [text, spark] =
        Layout::vertical([Constraint::Length(HEADER_ROWS - 1), Constraint::Length(1)]).areas(area);
    frame.render_widget(
        Paragraph::new(vec![
            Line::from(mounts),
            rates,
            Line::from(lost),
            Line::from(unmatched),
        ]),
        text,
    );
    let [label, line] =
        Layout::horizontal([Constraint::Length(11), Constraint::Min(1)]).areas(spark);
    frame.render_widget(Paragraph::new("throughput"), label);
    // The newest samples, right-aligned.
    let width = line.width as usize;
    let samples = &shown.throughput[shown.throughput.len().saturating_sub(width)..];
    frame.render_widget(
        Sparkline::default()
            .data(samples)
            .style(Style::new().fg(Color::Green)),
        line,
    );
}

fn draw_footer(frame: &mut Frame, area: Rect, state: &TopState) {
    if let Some(text) = &state.input {
        let line = Line::from(vec![
            Span::styled("filter: ", Style::new().bold()),
            Span::raw(text.clone()),
            Span::styled(" ", SELECTED),
            Span::raw("  Enter apply · Esc cancel · op: pid: comm: mount:"),
        ]);
        frame.render_widget(Paragraph::new(line), area);
        return;
    }
    if let Some(notice) = state.notice {
        let line = Line::styled(notice, Style::new().fg(Color::Yellow).bold());
        frame.render_widget(Paragraph::new(line), area);
        return;
    }
    let mut spans = Vec::new();
    for v in View::ALL {
        let style = if v == state.view {
            SELECTED
        } else {
            Style::new()
        };
        spans.push(Span::styled(format!(" {} ", state.view_title(v)), style));
    }
    spans.push(Span::raw(
        "  Tab view · b by op/file/process · s sort · / filter · p pause · ? help · q quit",
    ));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The keys, in the overlay `?` opens.
pub const HELP: &[(&str, &str)] = &[
    ("↑/↓ j/k", "move the selection (PgUp/PgDn, g/G)"),
    ("Tab", "next view: in flight, per opcode, detail"),
    ("b", "per opcode, per file, per process (2nd view)"),
    ("Enter", "detail of the selected request or opcode"),
    ("Esc", "back from the detail; clear the filter"),
    ("s", "sort by the next column"),
    ("1-9", "sort by column N (again: reverse)"),
    ("r", "reverse the sort"),
    ("/", "filter: op:READ pid:42 comm:cat mount:/mnt"),
    ("", "(bare words match any of them)"),
    ("m", "next mount (all, 1, 2, ...)"),
    ("p", "pause: freeze the screen (data is kept)"),
    ("?", "this help"),
    ("q", "quit"),
];

fn draw_help(frame: &mut Frame, state: &TopState) {
    let lines: Vec<Line> =
        HELP.iter()
            .map(|(k, what)| {
                Line::from(vec![
                    Span::styled(format!("{k:>8}  "), Style::new().bold()),
                    Span::raw(*what),
                ])
            })
            .chain([
                Line::raw(""),
                Line::raw(format!(
                    "Rows in flight for {} or more are red. Files whose",
                    format_duration(std::time::Duration::from_nanos(state.config.stall_ns))
                )),
                Line::raw("name was not seen (looked up earlier) show as node N."),
            ])
            .chain(state.kernel_tables.then(|| {
                Line::raw("Counted in the kernel: no paths, files or processes (--events).")
            }))
            .collect();
    let height = (lines.len() as u16 + 2).min(frame.area().height);
    let [area] = Layout::vertical([Constraint::Length(height)])
        .flex(Flex::Center)
        .areas(frame.area());
    let [area] = Layout::horizontal([Constraint::Length(62)])
        .flex(Flex::Center)
        .areas(area);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::ALL)
                .title(" keys (any key closes) "),
        ),
        area,
    );
}
