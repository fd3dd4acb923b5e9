"""What `hugepfn crosscheck` prints and writes: the step table, the summary, JSON and JUnit."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from .compare import _short, render
from .runner import Report


def counts(report: Report) -> dict[str, int]:
    """Scenarios and steps compared / agreed, for the summary and the docs' table."""
    out = {"scenarios": 0, "scenarios_agreed": 0, "skipped": 0, "errors": 0, "steps": 0, "steps_agreed": 0,
           "crashes": 0}
    for r in report.results:
        if r.skipped:
            out["skipped"] += 1
            continue
        if r.error:
            out["errors"] += 1
            continue
        out["scenarios"] += 1
        out["scenarios_agreed"] += r.agrees
        out["crashes"] += r.crash is not None
        out["steps"] += len(r.verdicts)
        out["steps_agreed"] += sum(v.agrees for v in r.verdicts)
    return out


def text(report: Report, verbose: bool = False) -> str:
    lines = [f"crosscheck: kernel {report.release} (profile {report.series}, {report.arch}), "
             f"{report.boots} boot(s), {report.seconds:.0f} s"]
    for r in report.results:
        if r.skipped:
            lines.append(f"  {r.name}: not crosschecked: {r.skipped}")
            continue
        if r.error:
            lines.append(f"  {r.name}: ERROR: {r.error}")
            continue
        agreed = sum(v.agrees for v in r.verdicts)
        crash = f", the kernel crashed at step {next(v.index for v in r.verdicts if 'crash' in v.compared)}" \
            if r.crash else ""
        lines.append(f"  {r.name}: {agreed}/{len(r.verdicts)} steps agree{crash}")
        if verbose or not r.agrees:
            lines += ["    " + line for line in render(r.verdicts, r.name, report.release)[1:]
                      if verbose or "agree" not in line or "DIFFER" in line]
    c = counts(report)
    lines.append(f"crosscheck: {c['scenarios_agreed']}/{c['scenarios']} scenarios and "
                 f"{c['steps_agreed']}/{c['steps']} steps agree; {c['skipped']} not crosscheckable"
                 + (f"; {c['errors']} errors" if c["errors"] else ""))
    return "\n".join(lines) + "\n"


def to_json(report: Report) -> dict:
    return {
        "kernel": report.release, "profile": report.series, "arch": report.arch, "boots": report.boots,
        "seconds": round(report.seconds, 1), "counts": counts(report),
        "scenarios": [
            {"name": r.name, "path": r.path, "skipped": r.skipped, "error": r.error,
             "crash": None if r.crash is None else {"first_line": r.crash.first_line, "trace": r.crash.trace},
             "steps": [{"index": v.index, "do": v.do, "agrees": v.agrees,
                        "differences": [{"field": d.field, "kernel": d.kernel, "model": d.model}
                                        for d in v.differences]} for v in r.verdicts]}
            for r in report.results],
    }


def junit(reports: list[Report]) -> bytes:
    """One testsuite per kernel, one testcase per scenario; a disagreement is a failure whose
    message names the first differing step, a scenario that cannot be crosschecked is skipped."""
    suites = ET.Element("testsuites")
    for report in reports:
        c = counts(report)
        suite = ET.SubElement(suites, "testsuite", name=f"crosscheck {report.release}",
                              tests=str(len(report.results)), failures=str(c["scenarios"] - c["scenarios_agreed"]),
                              errors=str(c["errors"]), skipped=str(c["skipped"]), time=f"{report.seconds:.1f}")
        for r in report.results:
            case = ET.SubElement(suite, "testcase", classname=f"crosscheck.{report.series}", name=r.name)
            if r.skipped:
                ET.SubElement(case, "skipped", message=r.skipped)
            elif r.error:
                ET.SubElement(case, "error", message=r.error)
            elif not r.agrees:
                bad = [v for v in r.verdicts if not v.agrees]
                first = bad[0]
                failure = ET.SubElement(case, "failure", message=f"step {first.index} ({first.do}): "
                                        + ", ".join(d.field for d in first.differences))
                failure.text = "\n".join(
                    f"step {v.index} {v.do} {d.field}: kernel {_short(d.kernel, 200)} / model {_short(d.model, 200)}"
                    for v in bad for d in v.differences)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)
