//! Pull progress as Docker's CLI shows it: one line per layer (short digest, state, bytes of
//! total, rate), redrawn in place on a terminal; on anything else (a log, a pipe) one plain line
//! per step, so the output stays readable and greppable. Fed by the agent's streamed
//! [`PullEvent`]s.

use std::{
    io::{IsTerminal as _, Write as _},
    time::Instant,
};

use crate::model::PullEvent;

/// One layer's line.
struct Layer {
    digest: String,
    state: &'static str,
    current: u64,
    total: u64,
    started: Option<Instant>,
}

/// The progress display of one pull, on stderr.
pub struct Display {
    reference: String,
    tty: bool,
    layers: Vec<Layer>,
    drawn: usize,
}

impl Display {
    pub fn new(reference: &str) -> Self {
        Self {
            reference: reference.to_owned(),
            tty: std::io::stderr().is_terminal(),
            layers: Vec::new(),
            drawn: 0,
        }
    }

    /// Takes one event into the display.
    pub fn event(&mut self, event: &PullEvent) {
        match event {
            PullEvent::Resolved {
                manifest, layers, ..
            } => self.plain(format!(
                "{}: manifest {manifest}, {layers} layer(s)",
                self.reference
            )),
            PullEvent::LayerExists { digest } => self.update(digest, "Already exists", None),
            PullEvent::Downloading {
                digest,
                current,
                total,
            } => self.update(digest, "Downloading", Some((*current, *total))),
            PullEvent::LayerDone { digest, total } => {
                self.update(digest, "Pull complete", Some((*total, *total)))
            }
            PullEvent::Pulled { .. } | PullEvent::Error { .. } => {}
        }
    }

    fn plain(&mut self, line: String) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
        // A line printed above the layer block would be overdrawn: start the block anew.
        self.drawn = 0;
        if self.tty {
            self.layers.clear();
        }
    }

    fn update(&mut self, digest: &str, state: &'static str, bytes: Option<(u64, u64)>) {
        let i = match self.layers.iter().position(|l| l.digest == digest) {
            Some(i) => i,
            None => {
                self.layers.push(Layer {
                    digest: digest.to_owned(),
                    state,
                    current: 0,
                    total: 0,
                    started: None,
                });
                self.layers.len() - 1
            }
        };
        let layer = &mut self.layers[i];
        let changed = layer.state != state || layer.started.is_none();
        layer.state = state;
        if let Some((current, total)) = bytes {
            layer.started.get_or_insert_with(Instant::now);
            layer.current = current;
            layer.total = total;
        }
        if self.tty {
            self.redraw();
        } else if changed {
            // Plain mode: a line when a layer changes state (never one per chunk).
            let line = line(&self.layers[i]);
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }

    /// Moves the cursor up over the block drawn last and draws every layer's line again.
    fn redraw(&mut self) {
        let mut err = std::io::stderr().lock();
        if self.drawn > 0 {
            let _ = write!(err, "\x1b[{}A", self.drawn);
        }
        for layer in &self.layers {
            let _ = writeln!(err, "\x1b[2K{}", line(layer));
        }
        self.drawn = self.layers.len();
        let _ = err.flush();
    }
}

/// `a1b2c3d4e5f6: Downloading  1.2MB/24.0MB  3.1MB/s`.
fn line(l: &Layer) -> String {
    let id = l.digest.strip_prefix("sha256:").unwrap_or(&l.digest);
    let id = &id[..id.len().min(12)];
    match l.started {
        Some(started) if l.state != "Already exists" => {
            let secs = started.elapsed().as_secs_f64().max(0.001);
            format!(
                "{id}: {:<14} {}/{}  {}/s",
                l.state,
                mb(l.current),
                mb(l.total),
                mb((l.current as f64 / secs) as u64)
            )
        }
        _ => format!("{id}: {}", l.state),
    }
}

fn mb(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.1}MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1}kB", bytes as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_line_shows_its_short_digest_state_bytes_and_rate() {
        let l = Layer {
            digest: format!("sha256:{}", "ab".repeat(32)),
            state: "Downloading",
            current: 1_200_000,
            total: 24_000_000,
            started: Some(Instant::now()),
        };
        let s = line(&l);
        assert!(s.starts_with("abababababab: Downloading"), "{s}");
        assert!(s.contains("1.2MB/24.0MB") && s.ends_with("/s"), "{s}");
        let exists = Layer {
            state: "Already exists",
            started: None,
            ..l
        };
        assert_eq!(line(&exists), "abababababab: Already exists");
    }
}
