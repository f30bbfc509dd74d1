"""The dependency audit of `make lint`: pip-audit over the installed environment, read honestly.

pip-audit prints "No known vulnerabilities found" even when it could audit nothing (every package
"not found on PyPI" behind a mirror without the JSON API, or no route to the advisory service).
This reads its JSON report instead and says which of three things happened:

- known vulnerabilities: each package, version, advisory id and fixed versions; exit 1;
- nothing could be audited (no advisory data reachable): a one-line skip naming why; exit 0;
- audited: how many packages were checked and how many could not be; exit 0.

    .venv/bin/python -m tests.support.dependency_audit
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUDIT_TIMEOUT_S = 300


@dataclass
class AuditOutcome:
    """What an audit report says: findings, and how much of the environment it covered."""

    audited: int = 0
    skipped: int = 0
    findings: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the audit found a known vulnerability (the only outcome that fails lint)."""
        return bool(self.findings)

    def summary(self) -> str:
        """One line for an audit that found nothing (the findings print one per line)."""
        if self.audited == 0:
            return f"pip-audit: skipped, no advisory data reachable ({self.reason or 'unknown'})"
        return (
            f"pip-audit: {self.audited} packages audited, no known vulnerabilities"
            f" ({self.skipped} could not be audited)"
        )


def read_report(report: dict[str, Any]) -> AuditOutcome:
    """Read pip-audit's ``--format json`` report."""
    outcome = AuditOutcome()
    for dependency in report.get("dependencies", []):
        if "skip_reason" in dependency:
            outcome.skipped += 1
            outcome.reason = outcome.reason or str(dependency["skip_reason"]).split(":")[0]
            continue
        outcome.audited += 1
        for vuln in dependency.get("vulns", []):
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed version"
            outcome.findings.append(
                f"{dependency['name']} {dependency.get('version', '?')}: {vuln.get('id', '?')}"
                f" (fixed in {fixed})"
            )
    return outcome


def run_audit() -> AuditOutcome:
    """Run pip-audit on this interpreter's environment (the project itself, editable, left out)."""
    pip_audit = Path(sys.executable).with_name("pip-audit")
    command = [str(pip_audit), "--format", "json", "--progress-spinner", "off", "--skip-editable"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=AUDIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return AuditOutcome(reason=f"pip-audit did not run: {exc}")
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return AuditOutcome(reason=f"pip-audit exited {done.returncode}: {last[:200]}")
    return read_report(report)


def main() -> int:
    outcome = run_audit()
    for finding in outcome.findings:
        print(f"pip-audit: {finding}")
    if not outcome.failed:
        print(outcome.summary())
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
