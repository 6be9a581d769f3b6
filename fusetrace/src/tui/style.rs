//! How `fusetrace top` draws what its panels share: the styles, the
//! stages' colours, the body block's title, and the text helpers (times,
//! rates, paths cut to a column). The panels and the frame import these;
//! none of them imports another.

use ratatui::{
    style::{Color, Modifier, Style, Stylize},
    text::Line,
    widgets::{Block, Borders},
};

use super::state::TopState;
use crate::pipeline::lifecycle::LatencyStage;

/// How stalled in-flight rows are drawn.
pub const STALLED: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
/// How the selected row is drawn.
pub const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED);
/// How a non-zero loss counter is drawn.
pub const LOSS: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);

/// The colour of each stage in the detail view's chart and legend.
pub fn stage_color(stage: LatencyStage) -> Color {
    match stage {
        LatencyStage::QueueWait => Color::Yellow,
        LatencyStage::DaemonService => Color::Cyan,
        LatencyStage::Completion => Color::Green,
        LatencyStage::Total => Color::Magenta,
    }
}

/// A latency in at most 5 characters: `850ns`, `1.2us`, `340us`, `12ms`, `1.3s`.
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..10_000 => format!("{:.1}us", ns as f64 / 1e3),
        10_000..1_000_000 => format!("{}us", ns / 1_000),
        1_000_000..10_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        10_000_000..1_000_000_000 => format!("{}ms", ns / 1_000_000),
        1_000_000_000..100_000_000_000 => format!("{:.1}s", ns as f64 / 1e9),
        _ => format!("{}s", ns / 1_000_000_000),
    }
}

/// A rate per second in at most 5 characters: `0.8`, `42`, `9876`, `57k`, `1.2M`.
pub fn fmt_rate(per_second: f64) -> String {
    if per_second < 10.0 {
        format!("{per_second:.1}")
    } else if per_second < 10_000.0 {
        format!("{per_second:.0}")
    } else if per_second < 1e6 {
        format!("{:.0}k", per_second / 1e3)
    } else {
        format!("{:.1}M", per_second / 1e6)
    }
}

/// A count in at most 4 characters (the per-opcode table's in-flight and
/// error columns): `42`, `9876`, `10k`, `999k`, `1.2M`.
pub fn fmt_count(n: u64) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..1_000_000 => format!("{}k", n / 1_000),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// A latency that may be unknown (`-`).
pub fn fmt_opt_ns(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_string(), fmt_ns)
}

/// An optional number, `-` when unknown.
pub fn fmt_opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The tail of `text` in at most `width` characters (mount paths differ at
/// the end).
pub fn tail(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n <= width {
        text.to_string()
    } else if width == 0 {
        String::new()
    } else {
        let keep: String = text.chars().skip(n - width + 1).collect();
        format!("…{keep}")
    }
}

/// A path in at most `width` characters, keeping its file name: the
/// start of the directories, `…`, then the name (`/mnt/ref/a/…/file.txt`);
/// a name too long by itself keeps its tail, as [`tail`] does. What is not
/// a path (`node 42 (/mnt)`) keeps its start. Paths are already in display
/// form (escaped), so counting chars is counting cells.
pub fn shorten_path(path: &str, width: usize) -> String {
    let n = path.chars().count();
    if n <= width {
        return path.to_string();
    }
    if !path.starts_with('/') {
        let head: String = path.chars().take(width.saturating_sub(1)).collect();
        return if width == 0 {
            head
        } else {
            format!("{head}…")
        };
    }
    let name = path.rfind('/').map_or(path, |i| &path[i..]);
    let name_len = name.chars().count();
    if name_len + 2 > width {
        return tail(path, width);
    }
    let head: String = path.chars().take(width - name_len - 1).collect();
    format!("{head}…{name}")
}

/// The body block: title with counts, sort and filter.
pub fn body_block(title: String, state: &TopState) -> Block<'static> {
    let mut line = vec![title.bold(), format!(" · {}", state.sort_label()).into()];
    if !state.filter.is_empty() {
        line.push(format!(" · filter: {}", state.filter.text).into());
    }
    Block::new().borders(Borders::TOP).title(Line::from(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fit_four_characters() {
        for (n, text) in [
            (0, "0"),
            (9_999, "9999"),
            (10_769, "10k"),
            (999_999, "999k"),
            (1_250_000, "1.2M"),
        ] {
            assert_eq!(fmt_count(n), text);
        }
    }

    #[test]
    fn a_long_path_keeps_its_file_name() {
        let path = "/mnt/ref/projects/fusetrace/target/debug/deps/libfoo.rlib";
        assert_eq!(shorten_path(path, 80), path, "fits: unchanged");
        let short = shorten_path(path, 30);
        assert_eq!(short.chars().count(), 30);
        assert!(short.ends_with("/libfoo.rlib"), "{short}");
        assert!(short.starts_with("/mnt/ref/"), "{short}");
        assert_eq!(short, "/mnt/ref/projects…/libfoo.rlib");
        // A name wider than the column keeps its end.
        assert_eq!(
            shorten_path("/m/averyveryverylongname.txt", 10),
            "…gname.txt"
        );
        // Escaped bytes stay as they are (already display text).
        assert_eq!(shorten_path("/m/a\\nb", 20), "/m/a\\nb");
        assert_eq!(shorten_path("node 42 (/mnt/ref)", 8), "node 42…");
    }
}
