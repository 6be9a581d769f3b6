//! The in-flight table: one row per request not yet ended.

use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::Style,
    text::Line,
    widgets::{Cell, Paragraph, Row, Table, TableState},
};

use super::{
    state::{InFlightColumn, TopState},
    style::{SELECTED, STALLED, body_block, fmt_ns, fmt_opt, shorten_path, tail},
};
use crate::pipeline::opcode;

/// Widths of the columns but the file's and the mount's (in
/// [`InFlightColumn::ALL`] order, without those two), which share the
/// rest: two thirds for the file, a third for the mount.
const WIDTHS: [u16; 6] = [6, 11, 7, 12, 7, 17];

pub fn draw(frame: &mut Frame, area: Rect, state: &TopState) {
    let rows = state.visible_in_flight();
    let block = body_block(
        format!(
            "in flight: {} of {}",
            rows.len(),
            state.shown.in_flight.len()
        ),
        state,
    );
    if rows.is_empty() {
        let text = if state.shown.in_flight.is_empty() {
            "no request in flight"
        } else {
            "no request in flight matches the filter (Esc clears it)"
        };
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    let used: u16 = WIDTHS.iter().sum::<u16>() + WIDTHS.len() as u16 + 1;
    let rest = area.width.saturating_sub(used);
    let file_width = rest - rest / 3;
    let mount_width = (rest / 3) as usize;
    let shown = &state.shown;
    let sort = InFlightColumn::ALL[state.in_flight_sort.column];
    let header = Row::new(InFlightColumn::ALL.map(|c| {
        let cell = Cell::from(c.title());
        if c == sort {
            cell.style(Style::new().bold().underlined())
        } else {
            cell.style(Style::new().bold())
        }
    }));
    // Only the rows that fit are built (thousands may be in flight); they
    // scroll when the selection would leave the screen.
    let height = (area.height.saturating_sub(2) as usize).max(1);
    let selected = state.in_flight_selected.min(rows.len() - 1);
    let offset = state
        .in_flight_scroll
        .get()
        .min(selected)
        .max((selected + 1).saturating_sub(height))
        .min(rows.len().saturating_sub(height));
    state.in_flight_scroll.set(offset);
    let table_rows = rows.iter().skip(offset).take(height).map(|r| {
        let mut op = opcode::name(r.opcode);
        if r.interrupted {
            op.push('!');
        }
        let mount = shown.mount(r.connection);
        let mount = if mount_width < 12 {
            shown.mount_number(r.connection).to_string()
        } else {
            tail(mount, mount_width)
        };
        let row = Row::new(vec![
            Cell::from(Line::from(fmt_ns(shown.age_ns(r))).right_aligned()),
            Cell::from(op),
            Cell::from(shorten_path(&r.file(), file_width as usize)),
            Cell::from(Line::from(fmt_opt(r.requester_pid.or(r.requester_tid))).right_aligned()),
            Cell::from(r.requester_comm.as_deref().unwrap_or("-").to_string()),
            Cell::from(Line::from(fmt_opt(r.daemon_tid)).right_aligned()),
            Cell::from(r.current_stage()),
            Cell::from(mount),
        ]);
        if state.is_stalled(r) {
            row.style(STALLED)
        } else {
            row
        }
    });
    let w = |i: usize| Constraint::Length(WIDTHS[i]);
    let widths = [
        w(0),
        w(1),
        Constraint::Length(file_width),
        w(2),
        w(3),
        w(4),
        w(5),
        Constraint::Fill(1),
    ];
    let table = Table::new(table_rows, widths)
        .header(header)
        .block(block)
        .row_highlight_style(SELECTED);
    let mut table_state = TableState::default().with_selected(Some(selected - offset));
    frame.render_stateful_widget(table, area, &mut table_state);
}
