//! What the timing benches share: their command line, and how they print rounds.
//! (A directory, so that Cargo does not take it for a bench of its own.)

/// `--bench [ITERATIONS] [ROUNDS]` times that many; without `--bench` (as `cargo
/// test --all-targets` runs a bench) one small round that times nothing.
pub struct Run {
    pub timed: bool,
    pub iterations: usize,
    pub rounds: usize,
}

impl Run {
    pub fn from_args(iterations: usize, rounds: usize) -> Run {
        let args: Vec<String> = std::env::args().collect();
        let timed = args.iter().any(|a| a == "--bench");
        let numbers: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
        if !timed {
            return Run {
                timed,
                iterations: 100,
                rounds: 1,
            };
        }
        Run {
            timed,
            iterations: numbers.first().copied().unwrap_or(iterations),
            rounds: numbers.get(1).copied().unwrap_or(rounds),
        }
    }

    /// Prints each side's median (the lower middle round: one that was measured)
    /// and range, in `unit`, and answers the medians.
    pub fn print(&self, unit: &str, names: &[&str], samples: Vec<Vec<f64>>) -> Vec<f64> {
        println!(
            "{unit}, median (range) of {} rounds of {}:",
            self.rounds, self.iterations
        );
        let mut medians = Vec::new();
        for (name, mut s) in names.iter().zip(samples) {
            s.sort_by(f64::total_cmp);
            let median = s[(s.len() - 1) / 2];
            medians.push(median);
            println!("  {name:<40} {median:>8.1}  ({:.1}-{:.1})", s[0], s[s.len() - 1]);
        }
        medians
    }
}
