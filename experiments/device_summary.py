"""Condense the logs of experiments/device_check.sh into one results file.

    python experiments/device_summary.py LOG.txt [SUMMARY.txt ...] --out experiments/results/gpu_check.json

LOG files are device_check.sh's log.txt (several runs: later ones win per step); SUMMARY files its
summary.txt (step exit codes and seconds, last metrics/timing line of each run). The output keeps, per
step: exit code, seconds, and the headline figures (bench JSON; eval means with 95% CIs; run throughput).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from metarl.eval.result import GRADIENT_STEPS, INNER_STEPS, curve_of, upgrade_report

STEP = re.compile(r"^=== (\w+): (.*)$", re.M)


def _headline(report: dict) -> dict:
    """Eval JSON -> {method: mean [ci_low, ci_high]} (per inner step for MAML / few-shot)."""
    out = {}
    report = upgrade_report(report) if "results" in report else report
    for method, r in report.get("results", {}).items():
        c = curve_of(r)
        if c is not None and c.x == INNER_STEPS:
            out[method] = {str(v["x"]): [round(v["mean"], 4), round(v["ci_low"], 4), round(v["ci_high"], 4)]
                           for v in c.points}
        elif c is not None and c.x == GRADIENT_STEPS:
            out[method] = [[round(v["mean"], 3), round(v["ci_low"], 3), round(v["ci_high"], 3)] for v in c.points]
        else:
            t = r["total"]
            out[method] = [round(t["mean"], 3), round(t["ci_low"], 3), round(t["ci_high"], 3)]
    return {"metric": report.get("metric"), "tasks": report.get("tasks"), "results": out}


def parse_log(text: str) -> dict:
    # A step whose output lacks a final newline (pytest cut by its timeout) runs into the next marker.
    text = re.sub(r"(?<=[^\n])=== (\w+): ", r"\n=== \1: ", text)
    steps = {}
    marks = list(STEP.finditer(text))
    for i, m in enumerate(marks):
        body = text[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip()
        entry = {"command": m.group(2)}
        start = body.find("{")
        if start >= 0:
            try:
                obj, _ = json.JSONDecoder().raw_decode(body[start:])
                entry["figures"] = obj["figures"] if "figures" in obj else _headline(obj)
            except (json.JSONDecodeError, KeyError, TypeError):
                pass
        if "figures" not in entry and body:
            entry["output_tail"] = body[-300:]
        steps[m.group(1)] = entry
    return steps


def parse_summary(text: str, steps: dict) -> None:
    run = None
    for line in text.splitlines():
        m = re.match(r"^(\w+) rc=(\d+) ([\d.]+)s$", line)
        if m and m.group(1) in steps:
            steps[m.group(1)].update(rc=int(m.group(2)), seconds=float(m.group(3)))
        elif line.startswith("run "):
            run, _, rest = line[4:].partition(": ")
            steps.setdefault("runs", {})[run] = {"last_metrics": _json_or_text(rest)}
        elif line.strip().startswith("timing: ") and run:
            steps["runs"][run]["last_timing"] = _json_or_text(line.strip()[len("timing: "):])


def _json_or_text(text: str):
    """A JSON line, or the text itself where device_check.sh cut a long line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="log.txt and summary.txt files, in run order")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="", help="the machine, in words")
    ap.add_argument("--commit", default="", help="commit the check ran at")
    args = ap.parse_args()
    steps: dict = {}
    for f in args.files:
        text = f.read_text()
        if STEP.search(text):
            steps.update(parse_log(text))
    for f in args.files:
        text = f.read_text()
        if not STEP.search(text):
            parse_summary(text, steps)
    out = {"command": "OUT=DIR bash experiments/device_check.sh",
           "device": args.device, "commit": args.commit, "steps": steps}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}: {sum(1 for k in steps if k != 'runs')} steps")


if __name__ == "__main__":
    main()
