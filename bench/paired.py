"""The figures of an alternating bench's slices (bench/alternating.sh), from the
load generator's JSON of each one (RESULTS/SIDE-ROUND.json), for the summaries of
bench/admission-alternating and bench/webhooks-alternating:

    rounds = paired.Rounds(results, n, sides)
    print(rounds.side_line("drisc"))
    print(rounds.pair_line("drisc", "baseline"))

A side's figure per slice is creates answered per server core-second (drisc-load's
own: the server's CPU over the window). A pair's figure is the ratio of its two
sides within each round, printed as the median and range of those ratios, and as
the ratio of the totals (all creates over all server CPU).
"""

import json
import os
import statistics


class Rounds:
    def __init__(self, results, rounds, sides):
        self.sides = sides
        self.per = {s: [] for s in sides}  # creates per server core-second, a slice each
        self.slices = {s: [] for s in sides}  # (creates, server CPU seconds), a slice each
        for r in range(1, rounds + 1):
            for s in sides:
                m = json.load(open(os.path.join(results, f"{s}-{r}.json")))["metrics"]
                rate = m["answered_per_core_s"]
                creates = m["answered_per_s"] * m["window_s"]
                self.per[s].append(rate)
                self.slices[s].append((creates, creates / rate if rate else 0))

    def whole(self, side):
        """All creates over all server CPU."""
        creates = sum(c for c, _ in self.slices[side])
        cpu = sum(t for _, t in self.slices[side])
        return creates / cpu if cpu else 0

    def side_line(self, side):
        v = self.per[side]
        mid = statistics.median(v)
        return (f"  {side:>10}: median {mid:,.0f} creates per server core-second ({min(v):,.0f}-{max(v):,.0f}), "
                f"{1e6 / mid if mid else 0:.2f} µs a create; all slices {self.whole(side):,.0f}")

    def pair_line(self, a, b):
        ratios = ratio_list(self.per[a], self.per[b])
        whole = self.whole(a) / self.whole(b) if self.whole(b) else 0
        return f"  {a} / {b}: paired median {spread(ratios)}, all slices {whole:.3f}; per round " + per_round(ratios)


def ratio_list(xs, ys):
    """Each round's x / y (a round whose y is 0 is left out)."""
    return [x / y for x, y in zip(xs, ys) if y]


def spread(ratios):
    return f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"


def per_round(ratios):
    return ", ".join(f"{x:.3f}" for x in ratios)
