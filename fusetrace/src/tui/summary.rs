//! The per-opcode summary: rate, in flight, errors, and p50/p99 of each
//! stage over the sliding window.

use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::Style,
    text::{Line, Text},
    widgets::{Cell, Paragraph, Row, Table, TableState},
};

use super::{
    inflight::body_block,
    state::{SummaryColumn, TopState},
    view::{SELECTED, fmt_ns, fmt_rate, tail},
};
use crate::{pipeline::lifecycle::LatencyStage, pipeline::opcode, units::format_duration};

/// The mount column is shown from this width on (the header numbers the
/// mounts otherwise, and `m` selects one).
const MOUNT_COLUMN_FROM: u16 = 100;

pub fn draw(frame: &mut Frame, area: Rect, state: &TopState) {
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
        let short = match stage {
            LatencyStage::Completion => "compl",
            s => s.name(),
        };
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
            right(r.in_flight.to_string()),
            right(r.errors.to_string()),
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
