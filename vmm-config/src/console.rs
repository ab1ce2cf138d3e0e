//! The guest's serial console: copied to our stdout and a log file, and scanned for
//! the lines the guest's /init prints (render node ready, exit code).

use std::io::{Read, Write};
use std::sync::mpsc::Sender;
use std::time::Instant;

/// Something the guest said that the launcher acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `gpuvisor-guest: render node ready ...`
    RenderReady,
    /// `gpuvisor-guest: exit <rc>`: the guest's command finished with rc.
    GuestExit(i32),
}

const EXIT_MARKER: &str = "gpuvisor-guest: exit ";
const READY_MARKER: &str = "gpuvisor-guest: render node ready";

/// Reads one console line (without its line ending) for an event.
pub fn event_of(line: &str) -> Option<Event> {
    if line.contains(READY_MARKER) {
        return Some(Event::RenderReady);
    }
    let at = line.find(EXIT_MARKER)?;
    line[at + EXIT_MARKER.len()..].trim().parse().ok().map(Event::GuestExit)
}

/// Splits a byte stream into lines across read boundaries.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; calls `line` for each completed line ('\n' and a trailing '\r' cut).
    pub fn feed(&mut self, bytes: &[u8], mut line: impl FnMut(&[u8])) {
        for &b in bytes {
            if b == b'\n' {
                let l = self.partial.strip_suffix(b"\r").unwrap_or(&self.partial);
                line(l);
                self.partial.clear();
            } else if self.partial.len() < 64 * 1024 {
                self.partial.push(b);
            }
        }
    }

    /// The unfinished last line, if any.
    pub fn rest(&self) -> &[u8] {
        &self.partial
    }
}

/// Copies `input` (QEMU's stdout) to `out` and `log` until EOF, sending events with
/// the time they were seen. With a prefix, output is written a line at a time.
pub fn pump(
    mut input: impl Read,
    mut out: impl Write,
    mut log: impl Write,
    prefix: Option<&str>,
    events: Sender<(Event, Instant)>,
) {
    let mut splitter = LineSplitter::default();
    let mut buf = [0u8; 8192];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        // Logging and the terminal are best effort: a closed stdout must not stop
        // the scan for the exit line.
        let _ = log.write_all(chunk);
        if prefix.is_none() {
            let _ = out.write_all(chunk);
            let _ = out.flush();
        }
        splitter.feed(chunk, |line| {
            if let Some(p) = prefix {
                write_line(&mut out, p, line);
            }
            if let Some(ev) = event_of(&String::from_utf8_lossy(line)) {
                let _ = events.send((ev, Instant::now()));
            }
        });
        if prefix.is_some() {
            let _ = out.flush();
        }
    }
    if let Some(p) = prefix {
        if !splitter.rest().is_empty() {
            write_line(&mut out, p, splitter.rest());
        }
    }
    let _ = log.flush();
    let _ = out.flush();
}

/// Writes `prefix`, `line` and a newline in one write, so that lines of several
/// VMs sharing our stdout never mix within a line.
pub fn write_line(mut out: impl Write, prefix: &str, line: &[u8]) {
    let mut buf = Vec::with_capacity(prefix.len() + line.len() + 1);
    buf.extend_from_slice(prefix.as_bytes());
    buf.extend_from_slice(line);
    buf.push(b'\n');
    let _ = out.write_all(&buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_line_gives_rc() {
        assert_eq!(event_of("gpuvisor-guest: exit 0"), Some(Event::GuestExit(0)));
        assert_eq!(event_of("[  3.1] foo gpuvisor-guest: exit 17 "), Some(Event::GuestExit(17)));
        assert_eq!(event_of("gpuvisor-guest: exit soon"), None);
        assert_eq!(event_of("gpuvisor-guest: test a rc=3"), None);
    }

    #[test]
    fn ready_line_is_seen() {
        assert_eq!(
            event_of("gpuvisor-guest: render node ready after 490 ms (uptime 2.16 s)"),
            Some(Event::RenderReady)
        );
        assert_eq!(event_of("gpuvisor-guest: FAILED: no /dev/dri/renderD128 after 30 s"), None);
    }

    #[test]
    fn lines_split_across_reads_and_crlf() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        s.feed(b"gpuvisor-guest: ex", |l| got.push(l.to_vec()));
        s.feed(b"it 3\r\nnext", |l| got.push(l.to_vec()));
        assert_eq!(got, vec![b"gpuvisor-guest: exit 3".to_vec()]);
        assert_eq!(s.rest(), b"next");
    }

    #[test]
    fn pump_copies_everything_and_reports_exit() {
        let (tx, rx) = std::sync::mpsc::channel();
        let input: &[u8] = b"boot\r\ngpuvisor-guest: exit 5\r\n[ 2.2] reboot: Power down\r\n";
        let mut out = Vec::new();
        let mut log = Vec::new();
        pump(input, &mut out, &mut log, None, tx);
        assert_eq!(out, input);
        assert_eq!(log, input);
        assert_eq!(rx.try_iter().map(|(e, _)| e).collect::<Vec<_>>(), vec![Event::GuestExit(5)]);
    }

    #[test]
    fn pump_prefixes_lines() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let mut out = Vec::new();
        pump(&b"a\nb"[..], &mut out, std::io::sink(), Some("[vm] "), tx);
        assert_eq!(out, b"[vm] a\n[vm] b\n");
    }
}
