#!/usr/bin/env python3
"""Print the conformance table: every critest spec, the test that checks it, and its status.

Usage: conformance/spec_table.py [--critest v1.36|master] [--junit [LABEL=]RESULTS.xml ...]

Each test names its spec in the first paragraph of its docstring (whitespace may wrap).
Statuses come from a pytest JUnit report of the conformance suite, e.g.
`pytest conformance --junitxml=/tmp/conf.xml`, one column a report (`--junit host=a.xml
--junit node-vm=b.xml`); without one every status reads "not run".
A spec with no test reads "no test", so a gap shows instead of hiding.

Two spec lists are known: cri-tools v1.36's 117 (critest-specs.txt, the default) and its
master's 137 (critest-specs-master.txt: 20 more, for image volumes, pod metrics and NRI).
A docstring must name a spec of one of them.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC_LISTS = {"v1.36": HERE / "critest-specs.txt", "master": HERE / "critest-specs-master.txt"}


@dataclass(frozen=True, slots=True)
class SpecTest:
    spec: str
    file: str
    name: str

    @property
    def node(self) -> str:
        return f"{self.file}::{self.name}"


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def find_spec_tests(directory: Path = HERE) -> dict[str, SpecTest]:
    """{spec: test} from the docstrings of conformance/test_*.py; a spec claimed twice is an error."""
    found: dict[str, SpecTest] = {}
    for path in sorted(directory.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if not node.name.startswith("test_"):
                continue
            doc = ast.get_docstring(node) or ""
            spec = normalize(doc.split("\n\n")[0])
            if not spec.startswith("[k8s.io]"):
                continue
            if spec in found:
                raise SystemExit(f"{spec!r} is claimed by {found[spec].node} and {path.name}::{node.name}")
            found[spec] = SpecTest(spec, path.name, node.name)
    return found


def read_specs(path: Path) -> list[str]:
    return [normalize(line) for line in path.read_text().splitlines() if line.strip()]


def read_junit(path: Path) -> dict[str, str]:
    """{"file.py::test_name": status}; parametrized cases fold into one, the worst one winning.

    An expected failure (pytest's xfail, which JUnit files as a skip) reads "xfail".
    """
    rank = {"pass": 0, "xfail": 1, "skip": 1, "fail": 2}
    out: dict[str, str] = {}
    for case in ET.parse(path).iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        name = case.get("name", "").split("[", 1)[0]
        status = "pass"
        for tag, kind in (("failure", "fail"), ("error", "fail"), ("skipped", "skip")):
            element = case.find(tag)
            if element is not None:
                message = _cause(element.get("message", ""), element.text or "")
                if element.get("type") == "pytest.xfail":
                    kind = "xfail"
                status = f"{kind} ({_short(message)})"
                break
        key = f"{module}.py::{name}"
        previous = out.get(key)
        if previous is None or rank[status.split(" ")[0]] > rank[previous.split(" ")[0]]:
            out[key] = status
    return out


def _cause(message: str, text: str) -> str:
    """The line that says why: a failed gRPC call's details (and runc's own msg), else the message."""
    details = re.search(r'^E\s+details = "(.*)"\s*$', text, re.MULTILINE)
    if details is None:
        return normalize(message or text)
    cause = details.group(1)
    runc_msg = cause.rfind('msg="')
    if runc_msg >= 0:
        cause = cause[: cause.find(" failed: ") + 9 if " failed: " in cause else 0] + cause[runc_msg + 5 :]
    cause = normalize(cause).rstrip('"')
    return f"gRPC {_grpc_code(text)}: {cause}"


def _short(message: str, limit: int = 200) -> str:
    message = re.sub(r"\b[0-9a-f]{64}\b", "<id>", message).replace("|", "\\|")
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _grpc_code(message: str) -> str:
    code = re.search(r"status = StatusCode\.(\w+)", message)
    return code.group(1) if code else "error"


def render(specs: list[str], tests: dict[str, SpecTest], runs: dict[str, dict[str, str]]) -> str:
    """One row a spec; one status column a run (none: a single column reading "not run")."""
    labels = list(runs) or ["status"]
    lines = [f"| critest spec | our test | {' | '.join(labels)} |", "| --- | --- |" + " --- |" * len(labels)]
    for spec in specs:
        test = tests.get(spec)
        if test is None:
            lines.append(f"| {spec} | - |" + " no test |" * len(labels))
            continue
        cells = [runs[label].get(test.node, "not run") if runs else "not run" for label in labels]
        lines.append(f"| {spec} | `{test.node}` | {' | '.join(cells)} |")
    return "\n".join(lines)


def _run_arg(value: str) -> tuple[str, Path]:
    """LABEL=REPORT.xml, or a bare REPORT.xml labelled "status"."""
    label, sep, path = value.partition("=")
    return (label, Path(path)) if sep else ("status", Path(value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--critest",
        choices=sorted(SPEC_LISTS),
        default="v1.36",
        help="whose specs make the rows: cri-tools v1.36 (117) or master (137)",
    )
    parser.add_argument(
        "--junit",
        type=_run_arg,
        action="append",
        default=[],
        help="[LABEL=]pytest --junitxml report of the conformance suite; repeat for one column a run",
    )
    args = parser.parse_args(argv)
    specs = read_specs(SPEC_LISTS[args.critest])
    known = {spec for path in SPEC_LISTS.values() for spec in read_specs(path)}
    tests = find_spec_tests()
    unknown = sorted(set(tests) - known)
    if unknown:
        print("docstrings naming no critest spec:\n  " + "\n  ".join(unknown), file=sys.stderr)
        return 1
    print(render(specs, tests, {label: read_junit(path) for label, path in args.junit}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
