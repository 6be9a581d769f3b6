//! The per-opcode summary: rate, in flight, errors, and p50/p99 of each
//! stage over the sliding window; or (`b`) the same window per file or
//! per process: rate, errors, p50/p99/max and total time of each.

use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::{Style, Stylize},
    text::{Line, Text},
    widgets::{Cell, Paragraph, Row, Table, TableState},
};

use super::{
    groups::GroupBy,
    state::{SummaryColumn, TopState},
    style::{SELECTED, body_block, fmt_count, fmt_ns, fmt_rate, shorten_path, tail},
};
use crate::{pipeline::lifecycle::LatencyStage, pipeline::opcode, units::format_duration};

/// The mount column is shown from this width on (the header numbers the
/// mounts otherwise, and `m` selects one).
const MOUNT_COLUMN_FROM: u16 = 100;

pub fn draw(frame: &mut Frame, area: Rect, state: &TopState) {
    if state.group != GroupBy::Op {
        return draw_groups(frame, area, state);
    }
    let rows = state.visible_ops();
    let block = body_block(
        format!(
            "per opcode, last {}: {} of {}",
            format_duration(std::time::Duration::from_nanos(state.shown.window_ns)),
            rows.len(),
            state.shown.ops.len()
        ),
        state,
    );
    if rows.is_empty() {
        let text = if state.shown.ops.is_empty() {
            "no request in the window"
        } else {
            "no opcode matches the filter (Esc clears it)"
        };
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    let with_mount = area.width >= MOUNT_COLUMN_FROM;
    let sort = SummaryColumn::ALL[state.summary_sort.column];
    let head = |c: SummaryColumn, text: &'static str| {
        let style = if c == sort {
            Style::new().bold().underlined()
        } else {
            Style::new().bold()
        };
        Line::styled(text, style).right_aligned()
    };
    let mut header = vec![
        Cell::from(Text::from(vec![
            Line::raw(""),
            head(SummaryColumn::Op, "OP").left_aligned(),
        ])),
        Cell::from(Text::from(vec![
            Line::raw(""),
            head(SummaryColumn::Rate, "REQ/s"),
        ])),
        Cell::from(Text::from(vec![
            Line::raw(""),
            head(SummaryColumn::InFlight, "INFL"),
        ])),
        Cell::from(Text::from(vec![
            Line::raw(""),
            head(SummaryColumn::Errors, "ERR"),
        ])),
    ];
    for stage in LatencyStage::ALL {
        let short = stage.short();
        header.push(Cell::from(Text::from(vec![
            Line::styled(short, Style::new().bold()).right_aligned(),
            Line::styled("p50", Style::new().bold()).right_aligned(),
        ])));
        header.push(Cell::from(Text::from(vec![
            Line::raw(""),
            head(SummaryColumn::P99(stage), "p99"),
        ])));
    }
    if with_mount {
        header.push(Cell::from(Text::from(vec![
            Line::raw(""),
            head(SummaryColumn::Mount, "MOUNT").left_aligned(),
        ])));
    }
    let mount_width = area.width.saturating_sub(MOUNT_COLUMN_FROM - 20) as usize;
    let table_rows = rows.iter().map(|r| {
        let right = |s: String| Cell::from(Line::from(s).right_aligned());
        // Without the mount column, rows of several mounts carry the
        // mount's number from the header.
        let op = if !with_mount && state.shown.connections.len() > 1 {
            format!(
                "{}:{}",
                state.shown.mount_number(r.key.0),
                opcode::name(r.key.1)
            )
        } else {
            opcode::name(r.key.1)
        };
        let mut cells = vec![
            Cell::from(op),
            right(fmt_rate(r.rate)),
            right(fmt_count(r.in_flight as u64)),
            right(fmt_count(r.errors)),
        ];
        for s in &r.stages {
            let value = |ns| {
                if s.samples == 0 {
                    "-".to_string()
                } else {
                    fmt_ns(ns)
                }
            };
            cells.push(right(value(s.p50_ns)));
            cells.push(right(value(s.p99_ns)));
        }
        if with_mount {
            cells.push(Cell::from(tail(state.shown.mount(r.key.0), mount_width)));
        }
        Row::new(cells)
    });
    let mut widths = vec![
        Constraint::Length(12),
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(4),
    ];
    for _ in LatencyStage::ALL {
        widths.push(Constraint::Length(6));
        widths.push(Constraint::Length(5));
    }
    if with_mount {
        widths.push(Constraint::Fill(1));
    }
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).height(2))
        .block(block)
        .row_highlight_style(SELECTED);
    let mut table_state =
        TableState::default().with_selected(Some(state.summary_selected.min(rows.len() - 1)));
    frame.render_stateful_widget(table, area, &mut table_state);
}

/// Widths of the number columns of the per-file and per-process tables.
const GROUP_NUMBERS: [(&str, u16); 6] = [
    ("REQ/s", 6),
    ("ERR", 5),
    ("p50", 6),
    ("p99", 6),
    ("max", 6),
    ("TIME", 6),
];

/// Hot files or processes: the key columns first (a file's path takes
/// what the numbers leave, shortened keeping its name), largest total
/// time first, and the `(other)` row of keys over the cap last.
fn draw_groups(frame: &mut Frame, area: Rect, state: &TopState) {
    let (rows, other) = state.visible_groups();
    let all = match state.group {
        GroupBy::Process => state.shown.processes.0.len(),
        _ => state.shown.files.0.len(),
    };
    let block = body_block(
        format!(
            "{}, last {}: {} of {}",
            state.group.title(),
            format_duration(std::time::Duration::from_nanos(state.shown.window_ns)),
            rows.len(),
            all
        ),
        state,
    );
    if rows.is_empty() && other.is_none() {
        let text = if all == 0 {
            "no request in the window"
        } else {
            "no row matches the filter (Esc clears it)"
        };
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    let numbers: u16 = GROUP_NUMBERS.iter().map(|(_, w)| w + 1).sum();
    let keys: Vec<(&str, u16)> = match state.group {
        GroupBy::Process => vec![("PID", 8), ("COMMAND", 16)],
        _ => vec![("FILE", area.width.saturating_sub(numbers + 1).max(8))],
    };
    let right = |s: String| Cell::from(Line::from(s).right_aligned());
    let covered = state.shown.covered_ns.max(100_000_000);
    let row = |r: &crate::output::by::GroupRow| {
        let mut cells: Vec<Cell> = keys
            .iter()
            .zip(&r.keys)
            .map(|((_, w), text)| Cell::from(shorten_path(text, *w as usize)))
            .collect();
        let time = |ns: u64| if r.count == 0 { "-".into() } else { fmt_ns(ns) };
        cells.extend([
            right(fmt_rate(r.count as f64 * 1e9 / covered as f64)),
            right(r.errors.to_string()),
            right(time(r.p50_ns)),
            right(time(r.p99_ns)),
            right(time(r.max_ns)),
            right(time(r.total_ns)),
        ]);
        Row::new(cells)
    };
    let table_rows: Vec<Row> = rows.iter().map(|r| row(r)).chain(other.map(row)).collect();
    let header = Row::new(
        keys.iter()
            .map(|(t, _)| Cell::from(*t))
            .chain(GROUP_NUMBERS.iter().map(|(t, _)| right(t.to_string()))),
    )
    .bold();
    let widths: Vec<Constraint> = keys
        .iter()
        .chain(&GROUP_NUMBERS)
        .map(|(_, w)| Constraint::Length(*w))
        .collect();
    let selected = state
        .summary_selected
        .min(table_rows.len().saturating_sub(1));
    let table = Table::new(table_rows, widths)
        .header(header)
        .block(block)
        .row_highlight_style(SELECTED);
    let mut table_state = TableState::default().with_selected(Some(selected));
    frame.render_stateful_widget(table, area, &mut table_state);
}
