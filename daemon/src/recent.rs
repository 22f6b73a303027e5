//! The last warnings and errors weftd logged, kept in memory for the
//! doctor (`GET /debug/errors` on the health address): the answer to "what
//! went wrong lately" without the pod's log at hand.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How many are kept (older ones are dropped, and counted).
pub const KEPT: usize = 20;

/// One logged warning or error.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub time: String,
    pub level: Level,
    /// The message, then `key=value` for each field.
    pub text: String,
}

#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<Entry>,
    /// Every warning and error since start, the dropped ones included.
    total: u64,
}

static RING: Mutex<Ring> = Mutex::new(Ring {
    entries: VecDeque::new(),
    total: 0,
});

fn ring() -> std::sync::MutexGuard<'static, Ring> {
    RING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps a WARN or ERROR.
pub fn keep(level: Level, text: String) {
    let time = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Millisecond)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut r = ring();
    r.total += 1;
    if r.entries.len() == KEPT {
        r.entries.pop_front();
    }
    r.entries.push_back(Entry { time, level, text });
}

/// The kept entries, oldest first, and how many there were in all.
pub fn snapshot() -> (Vec<Entry>, u64) {
    let r = ring();
    (r.entries.iter().cloned().collect(), r.total)
}

/// The text `/debug/errors` serves: a header line with the count, then
/// one line per entry, `TIME LEVEL TEXT`.
pub fn render() -> String {
    let (entries, total) = snapshot();
    let mut s = format!(
        "# {total} warnings and errors since start; the last {} follow\n",
        entries.len()
    );
    for e in entries {
        let _ = writeln!(s, "{} {} {}", e.time, e.level, e.text);
    }
    s
}

/// The text [`render`] made, read back (the doctor's side).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Logged {
    /// How many there were since start.
    pub total: u64,
    /// The kept ones, `TIME LEVEL TEXT`, oldest first.
    pub lines: Vec<String>,
}

/// Reads the text [`render`] made.
pub fn parse(text: &str) -> Logged {
    let mut lines = text.lines();
    let total = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .and_then(|h| h.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Logged {
        total,
        lines: lines.map(str::to_string).collect(),
    }
}

/// The tracing layer that keeps warnings and errors.
#[derive(Debug, Default)]
pub struct RecentLayer;

struct Text(String, String);

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.1, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.1, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RecentLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut t = Text(String::new(), String::new());
        event.record(&mut t);
        keep(level, format!("{}{}", t.0, t.1).replace('\n', " "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_ones_are_kept_and_read_back() {
        for i in 0..KEPT + 3 {
            keep(Level::WARN, format!("trouble {i} part=\"x\""));
        }
        let logged = parse(&render());
        assert!(logged.total >= (KEPT + 3) as u64);
        assert_eq!(logged.lines.len(), KEPT);
        let last = logged.lines.last().unwrap();
        let (_, rest) = last.split_once(' ').unwrap();
        assert_eq!(rest, format!("WARN trouble {} part=\"x\"", KEPT + 2));
    }
}
