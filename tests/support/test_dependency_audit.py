"""The audit's reading of pip-audit reports: findings fail, an unaudited environment is a skip."""

from __future__ import annotations

from tests.support.dependency_audit import read_report


def test_given_a_vulnerable_package_when_read_then_it_fails_naming_the_advisory() -> None:
    report = {
        "dependencies": [
            {"name": "safe", "version": "1.0", "vulns": []},
            {
                "name": "jinja2",
                "version": "3.1.2",
                "vulns": [{"id": "GHSA-h5c8-rqwp-cp95", "fix_versions": ["3.1.3"]}],
            },
        ]
    }
    outcome = read_report(report)
    assert outcome.failed and outcome.audited == 2
    assert outcome.findings == ["jinja2 3.1.2: GHSA-h5c8-rqwp-cp95 (fixed in 3.1.3)"]


def test_given_nothing_audited_when_read_then_a_skip_and_not_a_clean_bill() -> None:
    reason = "Dependency not found on PyPI and could not be audited: torch (2.13.0)"
    outcome = read_report({"dependencies": [{"name": "torch", "skip_reason": reason}]})
    assert not outcome.failed and outcome.audited == 0 and outcome.skipped == 1
    assert outcome.summary() == (
        "pip-audit: skipped, no advisory data reachable"
        " (Dependency not found on PyPI and could not be audited)"
    )


def test_given_a_partly_audited_environment_when_read_then_both_counts_are_said() -> None:
    report = {
        "dependencies": [
            {"name": "a", "version": "1", "vulns": []},
            {"name": "b", "skip_reason": "Dependency not found on PyPI and could not be audited"},
        ]
    }
    summary = read_report(report).summary()
    assert summary == (
        "pip-audit: 1 packages audited, no known vulnerabilities (1 could not be audited)"
    )
