"""Shared by the benchmark summaries: a results.tsv read into medians over rounds."""

import csv
import statistics
from collections import defaultdict


def medians(path: str, key: tuple) -> dict:
    """{(row[k] for k in key): median of `value`} over every row (i.e. every round);
    rows whose value is not a number are skipped."""
    values = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            try:
                values[tuple(row[k] for k in key)].append(float(row["value"]))
            except ValueError:
                pass
    return {k: statistics.median(v) for k, v in values.items()}
