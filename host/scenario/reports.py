"""Reports of scenario runs (ScenarioResults) for people and for CI: text lines, TAP version 14
and JUnit XML.  Each scenario is one test case; each failing step is one more, so a CI page
lists the step that broke.

TAP (version 13, which prove and every TAP consumer read; version 14 adds nothing used here)
is written by hand: a plan, "ok"/"not ok" lines and YAML diagnostics are the whole format for
this use; JUnit XML is built with junitparser, a maintained library for the
format, so the element and attribute names are the ones Jenkins, GitLab and others read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .results import ScenarioResult

CLASSNAME = "hugepfn.scenarios"


def _headline(r: ScenarioResult) -> str:
    if r.error is not None:
        return f"ERROR {r.path}: {r.error}"
    steps = len(r.scenario.steps)
    what = f"{steps} step{'s' * (steps != 1)}, {r.expectations} expectation{'s' * (r.expectations != 1)}"
    if r.status == "pass":
        return f"PASS {r.name} ({what})"
    failed = len(r.failing_steps())
    parts = [f"{len(r.mismatches)} failed in {failed} step{'s' * (failed != 1)}"] if r.mismatches else []
    if r.golden_diff:
        parts.append("golden trace differs")
    return f"FAIL {r.name} ({what}): {', '.join(parts)}"


def failure_lines(r: ScenarioResult) -> list[str]:
    """What went wrong, one line per failed expectation, then the golden diff."""
    lines = [str(m) for m in r.mismatches]
    if r.golden_diff:
        lines.append(f"golden trace {'rewritten' if r.golden_written else 'differs'}: review this diff"
                     + (f" (git diff {r.golden_written})" if r.golden_written else ""))
        lines += r.golden_diff
    return lines


def text_lines(results: Iterable[ScenarioResult]) -> list[str]:
    """One headline per scenario with its failures indented below, then the tally."""
    results = list(results)
    out: list[str] = []
    for r in results:
        out.append(_headline(r))
        out += [f"  {line}" for line in failure_lines(r)]
    if len(results) > 1:
        out.append(tally(results))
    return out


def tally(results: list[ScenarioResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "error")}
    return (f"{len(results)} scenarios: {counts['pass']} passed, {counts['fail']} failed"
            + (f", {counts['error']} error{'s' * (counts['error'] != 1)}" if counts["error"] else ""))


def _yaml_block(message: str, lines: list[str]) -> list[str]:
    out = ["  ---", f"  message: {_yaml_scalar(message)}"]
    if lines:
        out.append("  failures:")
        out += [f"    - {_yaml_scalar(line)}" for line in lines]
    out.append("  ...")
    return out


def _yaml_scalar(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tap_name(text: str) -> str:
    return text.replace("#", "\\#")          # "#" would start a TAP directive


def tap(results: Iterable[ScenarioResult]) -> str:
    """TAP version 13: one test point per scenario and one per failing step; the plan at the end."""
    lines = ["TAP version 13"]
    n = 0
    for r in results:
        n += 1
        if r.status == "pass":
            lines.append(f"ok {n} - {_tap_name(r.name)}")
            continue
        lines.append(f"not ok {n} - {_tap_name(r.name)}")
        lines += _yaml_block(r.error if r.error is not None else _headline(r), failure_lines(r))
        for index, mismatches in r.failing_steps().items():
            n += 1
            lines.append(f"not ok {n} - {_tap_name(r.name)}: {mismatches[0].where}")
            lines += _yaml_block(f"{len(mismatches)} expectation(s) failed", [str(m) for m in mismatches])
    lines.append(f"1..{n}")
    return "\n".join(lines) + "\n"


def write_junit(results: Iterable[ScenarioResult], path: str | Path, suite: str = "hugepfn run") -> Path:
    """A JUnit XML report: one <testsuite>, one <testcase> per scenario and per failing step
    (valid under the Jenkins xunit-plugin's junit-10.xsd, the schema the tests check it with)."""
    from junitparser import Error, Failure, TestCase, TestSuite

    ts = TestSuite(suite)
    for r in results:
        case = TestCase(r.name, CLASSNAME, round(r.seconds, 3))
        if r.error is not None:
            case.result = [Error(r.error, "ScenarioError")]
        elif r.status == "fail":
            failure = Failure(_headline(r), "ExpectationFailed")
            failure.text = "\n".join(failure_lines(r))
            case.result = [failure]
        ts.add_testcase(case)
        for index, mismatches in r.failing_steps().items():
            step_case = TestCase(f"{r.name}: {mismatches[0].where}", f"{CLASSNAME}.{r.name}", 0.0)
            failure = Failure(f"{len(mismatches)} expectation(s) failed", "ExpectationFailed")
            failure.text = "\n".join(str(m) for m in mismatches)
            step_case.result = [failure]
            ts.add_testcase(step_case)
    ts.update_statistics()
    path = Path(path)
    # One <testsuite> as the root element (the schema allows it; its <testsuites> wrapper has no
    # "skipped" attribute, which junitparser's would carry).
    ts.write(str(path), pretty=True)
    return path
