//! bench/run's closed loop on 100k customers, measured in rounds
//! (`round<k>-admit-max-distinct.json`, `round<k>-baseline-admit-max.json`, and
//! `round<k>-before-admit-max-distinct.json` with `--before`): one closed loop a side
//! moved the headline ratio to the baseline from 0.43 to 0.58 in three runs of one day,
//! so each round runs every side in turn and the run is represented by the round whose
//! paired ratio (drisc over the baseline, creates per server core-second) is the median.

use std::collections::BTreeMap;

use super::{Results, RunResult};

/// One round's creates per server core-second.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub k: u32,
    pub drisc: f64,
    pub baseline: f64,
    pub before: Option<f64>,
}

impl Round {
    pub fn ratio(&self) -> f64 {
        self.drisc / self.baseline
    }
}

fn name(k: u32, what: &str) -> String {
    format!("round{k}-{what}")
}

/// Every round with both drisc's and the baseline's figure, in round order.
pub fn of(r: &Results) -> Vec<Round> {
    let per_core = |name: String| r.metric(&name, "answered_per_core_s").filter(|v| *v > 0.0);
    (1..)
        .map_while(|k| {
            let drisc = per_core(name(k, "admit-max-distinct"));
            let baseline = per_core(name(k, "baseline-admit-max"));
            (drisc.is_some() || baseline.is_some()).then_some((k, drisc, baseline))
        })
        .filter_map(|(k, drisc, baseline)| {
            Some(Round {
                k,
                drisc: drisc?,
                baseline: baseline?,
                before: per_core(name(k, "before-admit-max-distinct")),
            })
        })
        .collect()
}

/// The round whose paired ratio is the median (the lower middle one of an even
/// count: a round that was measured, not an average of two).
pub fn median(rounds: &[Round]) -> Option<&Round> {
    let mut sorted: Vec<&Round> = rounds.iter().collect();
    sorted.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    sorted.get(rounds.len().checked_sub(1)? / 2).copied()
}

/// Gives the median round's results the plain names the tables and charts read
/// (unless a run without rounds wrote them).
pub fn stand_for_the_run(results: &mut BTreeMap<String, RunResult>) {
    let Some(k) = median(&of(&Results(results))).map(|round| round.k) else {
        return;
    };
    for what in ["admit-max-distinct", "before-admit-max-distinct", "baseline-admit-max"] {
        if let Some(result) = results.get(&name(k, what)).cloned() {
            results.entry(what.to_owned()).or_insert(result);
        }
    }
}

/// The sentence under the admission table that says which round the table shows.
pub fn sentence(rounds: &[Round]) -> Option<String> {
    let median = median(rounds)?;
    let each: Vec<String> = rounds
        .iter()
        .map(|round| {
            let before = round.before.map_or(String::new(), |b| {
                format!("; before {:.0}%", 100.0 * b / round.baseline)
            });
            format!(
                "round {}: {:.0}% ({:.0} vs {:.0}{before})",
                round.k,
                100.0 * round.ratio(),
                round.drisc,
                round.baseline
            )
        })
        .collect();
    Some(format!(
        "The closed loop on 100k customers ran in {} rounds, each server in turn (the baseline's server up beside \
         drisc's, each measured while the other idled with no session left to reap); the ratio to the baseline \
         per server core-second in each: {}. The table and the ratio above are round {}'s, the median.",
        rounds.len(),
        each.join(", "),
        median.k
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(per_core: f64) -> RunResult {
        let mut r = RunResult::default();
        r.metrics.insert("answered_per_core_s".into(), per_core);
        r
    }

    fn results(rounds: &[(f64, f64)]) -> BTreeMap<String, RunResult> {
        let mut map = BTreeMap::new();
        for (i, (drisc, base)) in rounds.iter().enumerate() {
            let k = i as u32 + 1;
            map.insert(name(k, "admit-max-distinct"), result(*drisc));
            map.insert(name(k, "baseline-admit-max"), result(*base));
        }
        map
    }

    #[test]
    fn the_round_with_the_median_paired_ratio_takes_the_plain_names() {
        // Ratios 0.5, 0.6, 0.4: the median is round 1's, though round 2 has the
        // median drisc figure and round 3 the median baseline.
        let mut map = results(&[(50.0, 100.0), (60.0, 100.0), (40.0, 100.0)]);
        map.get_mut("round2-baseline-admit-max")
            .unwrap()
            .metrics
            .insert("answered_per_core_s".into(), 100.0);
        let rounds = of(&Results(&map));
        assert_eq!(rounds.len(), 3);
        assert_eq!(median(&rounds).map(|r| r.k), Some(1));
        stand_for_the_run(&mut map);
        assert_eq!(
            Results(&map).metric("admit-max-distinct", "answered_per_core_s"),
            Some(50.0)
        );
        assert_eq!(
            Results(&map).metric("baseline-admit-max", "answered_per_core_s"),
            Some(100.0)
        );
        let sentence = sentence(&rounds).unwrap();
        assert!(
            sentence.contains("round 2: 60% (60 vs 100)") && sentence.ends_with("round 1's, the median."),
            "{sentence}"
        );
    }

    #[test]
    fn an_even_count_takes_the_lower_middle_and_a_plain_run_is_left_alone() {
        let map = results(&[(50.0, 100.0), (70.0, 100.0)]);
        assert_eq!(median(&of(&Results(&map))).map(|r| r.k), Some(1));
        // A run without rounds (bench/run --quick) keeps its own files.
        let mut plain = BTreeMap::new();
        plain.insert("admit-max-distinct".to_owned(), result(10.0));
        stand_for_the_run(&mut plain);
        assert_eq!(plain.len(), 1);
        assert!(of(&Results(&plain)).is_empty() && sentence(&[]).is_none());
    }

    #[test]
    fn a_round_missing_a_side_is_left_out_and_later_rounds_still_count() {
        let mut map = results(&[(50.0, 100.0), (60.0, 100.0)]);
        map.remove("round1-baseline-admit-max");
        map.insert(name(2, "before-admit-max-distinct"), result(45.0));
        let rounds = of(&Results(&map));
        assert_eq!(
            rounds,
            vec![Round {
                k: 2,
                drisc: 60.0,
                baseline: 100.0,
                before: Some(45.0)
            }]
        );
        assert!(sentence(&rounds).unwrap().contains("(60 vs 100; before 45%)"));
    }
}
