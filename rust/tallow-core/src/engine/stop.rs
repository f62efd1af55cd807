//! Stop strings: text that ends generation and is never emitted, not even in part.
//!
//! Text is held back while its tail could still grow into a stop string, so a stop string
//! split across several tokens is caught before any of it reaches the caller.

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released: it may be the start of a stop string.
    pending: String,
}

/// What to do with the text pushed so far.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Release this text (possibly empty) and continue.
    Emit(String),
    /// A stop string matched: release this text (the part before the stop) and finish.
    Stop(String),
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.pending.push_str(text);
        if self.stops.is_empty() {
            return StopOutcome::Emit(std::mem::take(&mut self.pending));
        }
        // Earliest full match of any stop string.
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let before = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutcome::Stop(before);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopOutcome::Emit(out)
    }

    /// Releases held-back text at the end of generation (no stop string completed).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopOutcome::Emit(t) => out.push_str(&t),
                StopOutcome::Stop(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_is_never_emitted() {
        assert_eq!(run(&["\nUser:"], &["Hi", " there\n", "Us", "er:", " more"]), ("Hi there".into(), true));
    }

    #[test]
    fn partial_match_that_diverges_is_released() {
        assert_eq!(run(&["END"], &["E", "N", "x", "y"]), ("ENxy".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["bb", "a"], &["xxbba"]), ("xx".into(), true));
    }

    #[test]
    fn multibyte_stop_strings() {
        assert_eq!(run(&["。"], &["你好", "。再见"]), ("你好".into(), true));
        assert_eq!(run(&["日本"], &["日", "本"]), ("".into(), true));
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }
}
