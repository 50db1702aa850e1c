#!/usr/bin/env python3
"""Runs checkov on templates and fails on any finding not in infra/tests/checkov-skips.yaml.

Each skip names a check, the resources (TEMPLATE:LogicalId) it applies to, and a reason;
a skip without a reason fails, and (unless --allow-stale) so does a skip that matches no
finding, so the list stays honest. checkov runs offline (--skip-download).

Runs with the infrastructure tools' Python (checkov and PyYAML installed there):
  .venv/infra-tools/bin/python infra/tests/run_checkov.py [--allow-stale] TEMPLATE...
"""

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SKIPS = ROOT / "infra" / "tests" / "checkov-skips.yaml"


def main(argv):
    allow_stale = "--allow-stale" in argv
    templates = [a for a in argv if not a.startswith("--")]
    checkov = Path(sys.executable).with_name("checkov")
    command = [str(checkov), "--skip-download", "--framework", "cloudformation", "--quiet",
               "-o", "json"]
    for template in templates:
        command += ["-f", template]
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        reports = json.loads(run.stdout)
    except json.JSONDecodeError:
        print(f"FAIL checkov produced no report (exit {run.returncode}): {run.stderr.strip()[-500:]}")
        return 1
    if isinstance(reports, dict):
        reports = [reports]
    skips = yaml.safe_load(SKIPS.read_text(encoding="utf-8")) or []
    failed = 0
    for skip in skips:
        if not str(skip.get("reason", "")).strip():
            print(f"FAIL checkov skip without a reason: {skip.get('check')}")
            failed += 1
    used = set()
    findings = 0
    for report in reports:
        for finding in (report.get("results") or {}).get("failed_checks", []):
            findings += 1
            where = f"{Path(finding['file_path']).name}:{finding['resource'].split('.', 1)[-1]}"
            key = (finding["check_id"], where)
            if any(s.get("check") == key[0] and where in s.get("resources", []) for s in skips):
                used.add(key)
                continue
            failed += 1
            print(f"FAIL checkov {finding['check_id']} {where}: {finding['check_name']}")
        for error in (report.get("results") or {}).get("parsing_errors", []) or []:
            failed += 1
            print(f"FAIL checkov could not parse {error}")
    if not allow_stale:
        for skip in skips:
            for where in skip.get("resources", []):
                if (skip.get("check"), where) not in used:
                    failed += 1
                    print(f"FAIL checkov skip {skip.get('check')} {where} matches no finding any more (remove it)")
    passed = sum((r.get("summary") or {}).get("passed", 0) for r in reports)
    print(f"checkov: {passed} checks passed, {findings} findings, {len(used)} skipped with a reason, {failed} failures")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
