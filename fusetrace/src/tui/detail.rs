//! The detail view of one opcode (or one request and its opcode): each
//! stage's latency histogram over the window as a bar chart, and the
//! slowest recent requests.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Style, Stylize},
    text::{Line, Span},
    widgets::{Bar, BarChart, BarGroup, Block, Borders, Cell, Paragraph, Row, Table},
};

use super::{
    state::{DetailOf, InFlightRow, TopState},
    style::{fmt_ns, fmt_opt, fmt_opt_ns, shorten_path, stage_color},
    window::BAR_LABELS,
};
use crate::{pipeline::lifecycle::LatencyStage, pipeline::opcode, units::format_duration};

pub fn draw(frame: &mut Frame, area: Rect, state: &TopState) {
    let Some(detail) = state.detail else {
        frame.render_widget(
            Paragraph::new("nothing selected: Enter on a row of the other views")
                .block(Block::new().borders(Borders::TOP).title("detail".bold())),
            area,
        );
        return;
    };
    let (conn, op) = detail.key();
    let shown = &state.shown;
    let window = format_duration(std::time::Duration::from_nanos(shown.window_ns));
    let title = Line::from(vec![
        opcode::name(op).bold(),
        format!(" on {} · last {window}", shown.mount(conn)).into(),
    ]);
    let block = Block::new().borders(Borders::TOP).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);

    let mut info = Vec::new();
    if let DetailOf::Request { unique, .. } = detail {
        info.push(match state.detail_request() {
            Some(r) => request_line(r, shown.age_ns(r)),
            None => Line::raw(format!("request {unique} is no longer in flight")),
        });
    }
    let row = state.detail_op();
    info.push(Line::raw(match row {
        Some(r) => format!(
            "{} finished ({:.1}/s), {} errors, {} in flight",
            r.count, r.rate, r.errors, r.in_flight
        ),
        None => "no request of this opcode in the window".to_string(),
    }));
    let slowest = row.map_or(&[][..], |r| &r.slowest[..]);
    // The chart keeps 6 rows; the slowest list gets what is left, up to
    // all of it.
    let fixed = info.len() as u16 + 5 + 6;
    let slow_rows = (slowest.len() as u16 + 1).min(inner.height.saturating_sub(fixed).max(2));
    let [info_area, stages_area, chart_area, slow_area] = Layout::vertical([
        Constraint::Length(info.len() as u16),
        Constraint::Length(5),
        Constraint::Min(0),
        Constraint::Length(slow_rows),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(info), info_area);

    // Legend and percentiles, one row per stage, in the chart's colours.
    let stage_rows = LatencyStage::ALL.iter().map(|stage| {
        let s = row.map(|r| r.stage(*stage));
        let value = |f: fn(&super::state::StageRow) -> u64| match s {
            Some(s) if s.samples > 0 => fmt_ns(f(s)),
            _ => "-".to_string(),
        };
        Row::new(vec![
            Cell::from(Line::from(vec![
                Span::styled("■ ", Style::new().fg(stage_color(*stage))),
                Span::raw(stage.name()),
            ])),
            Cell::from(Line::from(s.map_or(0, |s| s.samples).to_string()).right_aligned()),
            Cell::from(Line::from(value(|s| s.p50_ns)).right_aligned()),
            Cell::from(Line::from(value(|s| s.p99_ns)).right_aligned()),
            Cell::from(Line::from(value(|s| s.max_ns)).right_aligned()),
        ])
    });
    let right = |t: &'static str| Cell::from(Line::from(t).right_aligned());
    frame.render_widget(
        Table::new(
            stage_rows,
            [
                Constraint::Length(11),
                Constraint::Length(8),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(6),
            ],
        )
        .header(
            Row::new(vec![
                Cell::from("STAGE"),
                right("SAMPLES"),
                right("p50"),
                right("p99"),
                right("max"),
            ])
            .bold(),
        ),
        stages_area,
    );

    draw_chart(frame, chart_area, row.map(|r| &r.stages));
    draw_slowest(frame, slow_area, slowest, state.record_min_ns);
}

fn request_line(r: &InFlightRow, age_ns: u64) -> Line<'static> {
    let mut parts = vec![format!("request {}", r.unique)];
    parts.push(r.file());
    parts.push(format!(
        "pid {} ({})",
        fmt_opt(r.requester_pid.or(r.requester_tid)),
        r.requester_comm.as_deref().unwrap_or("-")
    ));
    if let Some(d) = r.daemon_tid {
        parts.push(format!("daemon thread {d}"));
    }
    match (r.transport, r.ring_queue) {
        (Some(t), Some(q)) => parts.push(format!("via {} queue {q}", t.name())),
        (Some(t), None) => parts.push(format!("via {}", t.name())),
        _ => {}
    }
    parts.push(format!("{} for {}", r.current_stage(), {
        // How long it has been in its current stage.
        fmt_ns(age_ns.saturating_sub(r.stage_since_ns.saturating_sub(r.first_seen_ns())))
    }));
    if let Some(q) = r.queue_wait_ns {
        parts.push(format!("queued {}", fmt_ns(q)));
    }
    Line::from(vec![Span::styled(parts.join(" · "), Style::new().bold())])
}

fn draw_chart(frame: &mut Frame, area: Rect, stages: Option<&[super::state::StageRow; 4]>) {
    let Some(stages) = stages else {
        return;
    };
    // Groups are latency decades; in each, one bar per stage.
    // The widest bars that fit, with a gap between them when there is room
    // (the gaps also leave room for the decade labels).
    let groups = BAR_LABELS.len() as u16;
    let (bar_width, bar_gap) = (1..=8u16)
        .rev()
        .flat_map(|w| [(w, 1u16), (w, 0)])
        .find(|(w, g)| groups * (4 * w + 3 * g) + groups - 1 <= area.width)
        .unwrap_or((1, 0));
    let chart = BAR_LABELS
        .iter()
        .enumerate()
        .fold(BarChart::default(), |chart, (i, label)| {
            let bars: Vec<Bar> = LatencyStage::ALL
                .iter()
                .zip(stages.iter())
                .map(|(stage, s)| {
                    Bar::default()
                        .value(s.bars[i])
                        .style(Style::new().fg(stage_color(*stage)))
                })
                .collect();
            chart.data(BarGroup::default().label(Line::from(*label)).bars(&bars))
        })
        .bar_width(bar_width)
        .bar_gap(bar_gap)
        .group_gap(1)
        .block(Block::new().title("requests per latency decade (all stages)"));
    frame.render_widget(chart, area);
}

/// `record_min_ns`: the kernel counts the requests and sent only those
/// at least this slow one by one (the list holds only those).
fn draw_slowest(
    frame: &mut Frame,
    area: Rect,
    slowest: &[super::window::SlowRequest],
    record_min_ns: Option<u64>,
) {
    if slowest.is_empty() {
        let text = match record_min_ns {
            Some(ns) if ns > 0 => format!(
                "slowest: none of at least {} finished in the window (the kernel sends only those)",
                fmt_ns(ns)
            ),
            _ => "slowest: none finished in the window".to_string(),
        };
        frame.render_widget(Paragraph::new(text), area);
        return;
    }
    let right = |s: String| Cell::from(Line::from(s).right_aligned());
    // The file takes what the other columns leave.
    let file_width = area.width.saturating_sub(6 * 4 + 9 + 7 + 15 + 5 + 9) as usize;
    let rows = slowest.iter().map(|s| {
        let file = match &s.path {
            Some(p) => p.to_string(),
            None => format!("node {}", fmt_opt(s.nodeid)),
        };
        Row::new(vec![
            right(fmt_opt_ns(s.stages[3])),
            right(fmt_opt_ns(s.stages[0])),
            right(fmt_opt_ns(s.stages[1])),
            right(fmt_opt_ns(s.stages[2])),
            right(s.unique.to_string()),
            right(fmt_opt(s.pid)),
            Cell::from(s.comm.clone().unwrap_or_else(|| "-".into())),
            right(fmt_opt(s.error)),
            Cell::from(shorten_path(&file, file_width)),
        ])
    });
    let head = |t: &'static str| Cell::from(Line::from(t).right_aligned());
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(9),
                Constraint::Length(7),
                Constraint::Length(15),
                Constraint::Length(5),
                Constraint::Fill(1),
            ],
        )
        .header(
            Row::new(vec![
                head("TOTAL"),
                head("QUEUE"),
                head("DAEMON"),
                head("COMPL"),
                head("UNIQUE"),
                head("PID"),
                Cell::from("SLOWEST"),
                head("ERR"),
                Cell::from("FILE"),
            ])
            .bold(),
        ),
        area,
    );
}
