//! `--svg`: a picture of the run, written as text, with no browser or
//! library: the process tree on a time line with its opens, the
//! checkpoints highlighted, and under it the start-up each would skip as
//! a bar.
//!
//! Made to stay readable at a thousand opens: an open is a thin tick, so
//! many of them read as a shade; the user's files are dark, the rest
//! grey, failures red; matched opens get a mark above their tick
//! (`class="match"`, one per open) and checkpoints a diamond
//! (`class="checkpoint"`). Processes that opened nothing share one lane,
//! and past [`MAX_LANES`] the processes that opened least share another.
//! Every mark has a `<title>`, which a browser shows on hover.
use std::fmt::Write as _;

use super::analysis::{File, Origin, Possible, Process, Profile, Why, command_line};
use crate::output::escape;

const WIDTH: f64 = 1200.0;
/// The process labels' column.
const LABEL: f64 = 210.0;
const RIGHT: f64 = 30.0;
const PLOT: f64 = WIDTH - LABEL - RIGHT;
const LANE: f64 = 18.0;
/// The program's own lane: most opens are its.
const PROGRAM_LANE: f64 = 34.0;
/// The top of the program's lane, for exec names.
const EXEC_BAND: f64 = 11.0;
const MAX_LANES: usize = 24;
const BAR: f64 = 15.0;
/// Most rows of start-up bars.
const MAX_BARS: usize = 24;

const FONT: &str = "font-family=\"DejaVu Sans, Verdana, sans-serif\"";
const USER: &str = "#1f3a93";
const OTHER: &str = "#9aa0a6";
const FAILED: &str = "#e07a7a";
const MATCH: &str = "#f39c12";
const CHECKPOINT: &str = "#1e9e4a";
const SPAN: &str = "#dbe8f6";

/// XML text: the five special characters, and control characters shown
/// as forkmon shows them in the terminal (XML 1.0 cannot hold them).
fn text(s: &str) -> String {
    escape(s.as_bytes())
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// A lane: one process, or several sharing it.
struct Lane<'a> {
    label: String,
    processes: Vec<&'a Process>,
    height: f64,
    program: bool,
}

fn lanes(profile: &Profile) -> Vec<Lane<'_>> {
    let mut own: Vec<&Process> = Vec::new();
    let mut silent: Vec<&Process> = Vec::new();
    for process in &profile.processes {
        if process.program || process.opens > 0 {
            own.push(process);
        } else {
            silent.push(process);
        }
    }
    // Past the limit, the processes that opened least share a lane.
    let mut crowd: Vec<&Process> = Vec::new();
    if own.len() > MAX_LANES {
        let mut by_opens = own.clone();
        by_opens.sort_by_key(|p| (!p.program, std::cmp::Reverse(p.opens)));
        let keep: Vec<i32> = by_opens[..MAX_LANES - 1].iter().map(|p| p.pid).collect();
        own.retain(|p| {
            let kept = keep.contains(&p.pid);
            if !kept {
                crowd.push(p);
            }
            kept
        });
    }
    let mut lanes: Vec<Lane> = own
        .into_iter()
        .map(|p| Lane {
            label: format!("{} {}", p.pid, p.comm),
            processes: vec![p],
            height: if p.program { PROGRAM_LANE } else { LANE },
            program: p.program,
        })
        .collect();
    if !crowd.is_empty() {
        lanes.push(Lane {
            label: format!("{} more processes", crowd.len()),
            processes: crowd,
            height: LANE,
            program: false,
        });
    }
    if !silent.is_empty() {
        lanes.push(Lane {
            label: format!("{} without opens", silent.len()),
            processes: silent,
            height: LANE,
            program: false,
        });
    }
    lanes
}

/// Round steps for the time axis: 1, 2 or 5 × 10ⁿ ms, about ten ticks.
fn tick_step(duration_ms: f64) -> f64 {
    let rough = (duration_ms / 10.0).max(1e-3);
    let magnitude = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * magnitude)
}

/// The files drawn as start-up bars: possible checkpoints at the user's
/// files or the filter's, the largest savings, in the order of the run.
fn bars(profile: &Profile) -> (Vec<&File>, usize) {
    let mut bars: Vec<&File> = profile
        .files
        .iter()
        .filter(|f| f.checkpoint.possible != Possible::No)
        .filter(|f| f.origin == Origin::User || f.filter)
        .collect();
    let all = bars.len();
    bars.sort_by(|a, b| b.skips().total_cmp(&a.skips()));
    bars.truncate(MAX_BARS);
    bars.sort_by(|a, b| a.skips().total_cmp(&b.skips()));
    (bars, all)
}

/// A path for a label: below the current directory relative, and cut
/// from the left to `max` characters.
fn short_path(profile: &Profile, file: &File, max: usize) -> String {
    let path = file
        .path
        .strip_prefix(&profile.cwd)
        .unwrap_or(&file.path)
        .to_string_lossy()
        .into_owned();
    let count = path.chars().count();
    if count <= max {
        path
    } else {
        let tail: String = path.chars().skip(count - (max - 1)).collect();
        format!("…{tail}")
    }
}

pub fn render(profile: &Profile) -> String {
    let duration = profile.summary.duration_ms.max(0.001);
    let x = |ms: f64| LABEL + (ms.clamp(0.0, duration) / duration) * PLOT;
    let lanes = lanes(profile);
    let (bars, bar_total) = bars(profile);

    let mut body = String::new();
    let mut y = 28.0;
    // Title and summary.
    let _ = writeln!(
        body,
        r#"<text x="12" y="{y}" font-size="17" font-weight="bold">forkmon profile: {}</text>"#,
        text(&command_line(&profile.command))
    );
    y += 20.0;
    let s = &profile.summary;
    let _ = writeln!(
        body,
        r##"<text x="12" y="{y}" font-size="12" fill="#333">{}</text>"##,
        text(&profile.headline())
    );
    y += 22.0;
    legend(&mut body, y);
    y += 26.0;

    // Time axis, with grid lines through the lanes.
    let lanes_height: f64 = lanes.iter().map(|l| l.height + 4.0).sum();
    let step = tick_step(duration);
    let axis_y = y;
    let _ = writeln!(
        body,
        r##"<line x1="{LABEL}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="#555"/>"##,
        LABEL + PLOT
    );
    let mut t = 0.0;
    while t <= duration + step * 1e-9 {
        let tx = x(t);
        let _ = writeln!(
            body,
            r##"<line x1="{tx:.1}" y1="{}" x2="{tx:.1}" y2="{}" stroke="#e3e3e3"/><text x="{tx:.1}" y="{}" font-size="10" text-anchor="middle" fill="#555">{}</text>"##,
            axis_y,
            axis_y + lanes_height + 6.0,
            axis_y - 5.0,
            format_ms(t, step)
        );
        t += step;
    }
    let _ = writeln!(
        body,
        r##"<text x="{}" y="{}" font-size="10" text-anchor="end" fill="#555">ms since start</text>"##,
        LABEL - 8.0,
        axis_y - 5.0
    );
    y += 6.0;

    // Lanes.
    let mut lane_of: std::collections::HashMap<i32, (f64, f64)> = Default::default();
    for lane in &lanes {
        let weight = if lane.program { "bold" } else { "normal" };
        let label = cut(&lane.label, 30);
        let _ = writeln!(
            body,
            r##"<text x="{}" y="{:.1}" font-size="11" text-anchor="end" font-weight="{weight}" fill="#222">{}</text>"##,
            LABEL - 8.0,
            y + lane.height / 2.0 + 4.0,
            text(&label)
        );
        for process in &lane.processes {
            let end = process.end_ms.unwrap_or(duration);
            let _ = writeln!(
                body,
                r##"<rect class="process" x="{:.1}" y="{y:.1}" width="{:.1}" height="{}" fill="{SPAN}" stroke="#8fb3de" stroke-width="0.5" fill-opacity="0.8"><title>{} {}: {:.1}–{:.1} ms, {} opens</title></rect>"##,
                x(process.start_ms),
                (x(end) - x(process.start_ms)).max(1.0),
                lane.height,
                process.pid,
                text(&process.comm),
                process.start_ms,
                end,
                process.opens
            );
            // The program's lane keeps a band at its top for the names
            // of what it exec'd.
            let band = if lane.program { EXEC_BAND } else { 0.0 };
            lane_of.insert(process.pid, (y + band, lane.height - band));
            if lane.program {
                execs(&mut body, process, y, lane.height, &x, end);
            }
        }
        y += lane.height + 4.0;
    }

    // Opens: grey and failed first, the user's on top, then the marks.
    let mut checkpoint_drawn = vec![false; profile.files.len()];
    let mut marks = String::new();
    let mut ticks = [String::new(), String::new(), String::new()];
    for open in &profile.opens {
        let Some(&(lane_y, height)) = lane_of.get(&open.pid) else {
            continue;
        };
        let file = &profile.files[open.file];
        let ox = x(open.ms);
        let users = file.origin == Origin::User && file.checkpoint.why != Some(Why::NotAFile);
        let (layer, color) = match (open.outcome == "ok", users) {
            (false, _) => (0, FAILED),
            (true, false) => (1, OTHER),
            (true, true) => (2, USER),
        };
        let title = format!(
            "{:.2} ms  {} {}  {}",
            open.ms,
            open.pid,
            file.path.to_string_lossy(),
            open.outcome
        );
        let _ = writeln!(
            ticks[layer],
            r#"<line x1="{ox:.2}" y1="{:.1}" x2="{ox:.2}" y2="{:.1}" stroke="{color}" stroke-width="1"><title>{}</title></line>"#,
            lane_y + 2.0,
            lane_y + height - 2.0,
            text(&title)
        );
        if file.filter {
            let _ = writeln!(
                marks,
                r##"<path class="match" d="M{ox:.2},{:.1} l-3.5,-6 h7 z" fill="{MATCH}" stroke="#a0600a" stroke-width="0.5"><title>matched: {}</title></path>"##,
                lane_y + 1.0,
                text(&title)
            );
        }
        let checkpoint = file.checkpoint.possible != Possible::No
            && (file.origin == Origin::User || file.filter)
            && file.checkpoint.skips_ms == Some(open.ms)
            && !std::mem::replace(&mut checkpoint_drawn[open.file], true);
        if checkpoint {
            let cy = lane_y + height / 2.0;
            let _ = writeln!(
                marks,
                r#"<path class="checkpoint" d="M{ox:.2},{:.1} l5,5 l-5,5 l-5,-5 z" fill="{CHECKPOINT}" stroke="white" stroke-width="1"><title>checkpoint possible: {}, skips {:.1} ms</title></path>"#,
                cy - 5.0,
                text(&file.path.to_string_lossy()),
                open.ms
            );
        }
    }
    for layer in &ticks {
        body.push_str(layer);
    }
    body.push_str(&marks);

    // The start-up each checkpoint skips.
    y += 26.0;
    let heading = if bars.is_empty() {
        format!(
            "No checkpoint at your files: {}.",
            s.no_checkpoint.as_deref().unwrap_or("none is possible")
        )
    } else if bar_total > bars.len() {
        format!(
            "Start-up each checkpoint skips on a resume ({} of {}, the largest):",
            bars.len(),
            bar_total
        )
    } else {
        "Start-up each checkpoint skips on a resume:".to_owned()
    };
    let _ = writeln!(
        body,
        r#"<text x="12" y="{y}" font-size="13" font-weight="bold">{}</text>"#,
        text(&heading)
    );
    y += 10.0;
    for file in &bars {
        let skips = file.skips();
        let width = x(skips) - LABEL;
        let color = if file.checkpoint.possible == Possible::Maybe {
            "#8fd19e"
        } else {
            CHECKPOINT
        };
        let matched = if file.filter { " (matched)" } else { "" };
        // What a resume runs again, from the checkpoint to the end, pale
        // behind the part it skips.
        let end = x(duration);
        let _ = writeln!(
            body,
            r##"<text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#222">{}</text><rect class="rerun" x="{:.1}" y="{y:.1}" width="{:.1}" height="{BAR}" fill="#edf0f2"><title>runs again on each resume: {:.1} ms</title></rect><rect class="skip" x="{LABEL}" y="{y:.1}" width="{:.1}" height="{BAR}" fill="{color}"><title>{}: a resume skips {skips:.1} ms{matched}</title></rect>"##,
            LABEL - 8.0,
            y + BAR / 2.0 + 4.0,
            text(&short_path(profile, file, 32)),
            LABEL + width,
            (end - LABEL - width).max(0.0),
            duration - skips,
            width.max(1.0),
            text(&file.path.to_string_lossy()),
        );
        // The value inside the bar's end, or after it when the bar is
        // too short to hold it.
        let maybe = if file.checkpoint.possible == Possible::Maybe {
            format!(
                ", if fork's handlers stop its {} threads",
                file.checkpoint.threads.unwrap_or(2)
            )
        } else {
            String::new()
        };
        let label = format!("skips {skips:.1} ms{matched}{maybe}");
        let room = label.len() as f64 * 5.6 + 8.0;
        let (tx, anchor, fill) = if width > room {
            // Dark on the pale green of a maybe.
            let ink = if maybe.is_empty() { "white" } else { "#14532d" };
            (LABEL + width - 4.0, "end", ink)
        } else {
            (LABEL + width + 4.0, "start", "#222")
        };
        let _ = writeln!(
            body,
            r#"<text x="{tx:.1}" y="{:.1}" font-size="10" text-anchor="{anchor}" fill="{fill}">{label}</text>"#,
            y + BAR / 2.0 + 3.5,
        );
        y += BAR + 3.0;
    }
    if let Some(suggestion) = &s.suggested_filter {
        y += 18.0;
        let _ = writeln!(
            body,
            r#"<text x="12" y="{y}" font-size="12">Suggested: <tspan font-family="DejaVu Sans Mono, monospace">{}</tspan></text>"#,
            text(&suggestion.command)
        );
    }
    y += 20.0;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{y:.0}" viewBox="0 0 {WIDTH} {y:.0}" {FONT}>"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{y:.0}" fill="white"/>"#
    );
    svg.push_str(&body);
    svg.push_str("</svg>\n");
    svg
}

/// The program's lane cut where it exec'd, each part named after what
/// it ran (a shim, then the interpreter), where the name fits.
fn execs(
    body: &mut String,
    process: &Process,
    y: f64,
    height: f64,
    x: &dyn Fn(f64) -> f64,
    end: f64,
) {
    // Where the last name drawn ends: names never overlap.
    let mut free_from = 0.0;
    for (i, exec) in process.execs.iter().enumerate() {
        let from = x(exec.ms);
        if i > 0 {
            let _ = writeln!(
                body,
                r##"<line class="exec" x1="{from:.1}" y1="{y:.1}" x2="{from:.1}" y2="{:.1}" stroke="#34495e" stroke-width="1" stroke-dasharray="3,2"><title>exec {} at {:.1} ms</title></line>"##,
                y + height,
                text(&exec.comm),
                exec.ms
            );
        }
        let label = format!("exec {}", exec.comm);
        let width = label.chars().count() as f64 * 5.0 + 6.0;
        // A name may run over the short parts after it (a shim's execs
        // follow each other closely), never over another name.
        if from >= free_from && x(end) - from > width {
            let _ = writeln!(
                body,
                r##"<text x="{:.1}" y="{:.1}" font-size="9" fill="#34495e">{}</text>"##,
                from + 3.0,
                y + 8.5,
                text(&label)
            );
            free_from = from + width;
        }
    }
}

fn legend(body: &mut String, y: f64) {
    let items: [(&str, String); 6] = [
        (
            "process",
            format!(
                r##"<rect x="0" y="-9" width="18" height="11" fill="{SPAN}" stroke="#8fb3de"/>"##
            ),
        ),
        (
            "open of your file",
            format!(r#"<line x1="9" y1="-10" x2="9" y2="3" stroke="{USER}" stroke-width="2"/>"#),
        ),
        (
            "other open",
            format!(r#"<line x1="9" y1="-10" x2="9" y2="3" stroke="{OTHER}" stroke-width="2"/>"#),
        ),
        (
            "failed open",
            format!(r#"<line x1="9" y1="-10" x2="9" y2="3" stroke="{FAILED}" stroke-width="2"/>"#),
        ),
        (
            "matched by the filter",
            format!(r#"<path d="M9,2 l-4,-8 h8 z" fill="{MATCH}"/>"#),
        ),
        (
            "checkpoint possible",
            format!(r#"<path d="M9,-9 l5,5 l-5,5 l-5,-5 z" fill="{CHECKPOINT}"/>"#),
        ),
    ];
    let mut lx = 12.0;
    for (label, symbol) in items {
        let _ = writeln!(
            body,
            r##"<g transform="translate({lx},{y})">{symbol}<text x="24" y="0" font-size="11" fill="#333">{label}</text></g>"##
        );
        lx += 34.0 + label.len() as f64 * 6.2;
    }
}

/// A tick label: as many decimals as the step needs.
fn format_ms(t: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{t:.decimals$}")
}

fn cut(label: &str, max: usize) -> String {
    if label.chars().count() <= max {
        label.to_owned()
    } else {
        let head: String = label.chars().take(max - 1).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::analysis::tests::{analyze_in, open, run_of};

    #[test]
    fn one_mark_per_matched_open_and_a_bar_per_checkpoint() {
        let run = run_of(vec![
            open(0, 100, "/etc/ld.so.cache"),
            open(2, 100, "/w/a.lua"),
            open(3, 100, "/w/a.lua"),
            open(9, 100, "/w/b.lua"),
            open(55, 200, "/w/c.lua"),
        ]);
        let profile = analyze_in("/w", &run, &["*.lua"]);
        let svg = render(&profile);
        assert_eq!(svg.matches(r#"class="match""#).count(), 4);
        assert_eq!(svg.matches(r#"class="checkpoint""#).count(), 2);
        assert_eq!(svg.matches(r#"class="skip""#).count(), 2);
        assert_eq!(svg.matches(r#"class="process""#).count(), 2);
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
    }

    #[test]
    fn names_are_escaped_for_xml() {
        assert_eq!(text("a<b>&\"c'\x1b"), "a&lt;b&gt;&amp;&quot;c&apos;\\x1b");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(170.0), 20.0);
        assert_eq!(tick_step(1000.0), 100.0);
        assert_eq!(tick_step(3.0), 0.5);
        assert_eq!(format_ms(0.5, 0.5), "0.5");
        assert_eq!(format_ms(40.0, 20.0), "40");
    }
}
