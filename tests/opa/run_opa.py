"""Runs a tollgate policy bundle on the real OPA engine, loaded the way `opa test DIR` and `opa eval -b DIR` load it.

Used by tests/tests/opa_conformance.rs (which installs the pinned OPA build and puts it on PYTHONPATH):

    python3 run_opa.py POLICY_DIR CORPUS.json > result.json

The OPA bindings have no directory loader, so this script does what OPA's two loaders do (read from OPA's
source, v1/loader/loader.go and v1/bundle/bundle.go, v1.20):

- `opa test DIR` / `opa eval -d DIR` (the directory loader): every file under DIR, recursively. `.rego` files
  are modules; `.json`, `.yaml` and `.yml` files, whatever their name, are data placed at the path of their
  directory relative to DIR (`a/b/x.yaml` at `data.a.b`), deep-merged, a conflict an error; a file of another
  extension below DIR is skipped.
- `opa eval -b DIR` (the bundle loader): `.rego` files are modules, and only files named `data.json`,
  `data.yaml` or `data.yml` are data, at their directory's path; every other file is ignored.

Both documents are built; they must be equal (tollgate's layout makes them so), else the run fails.
YAML is parsed by OPA itself, through its `yaml.unmarshal` builtin, which calls the same YAML-to-JSON
conversion (sigs.k8s.io/yaml, YAML 1.1) as both loaders, so `n` and `0777` mean here what they mean to OPA.

Then, on one engine with every module and that data:
- every `test_*` rule of every module runs as `opa test` runs it (passes when its value is `true`);
- every test package's `cases` table is replayed: each case's input is evaluated at `data.tollgate.decision`
  and held against its expected `outcome` and `rules`, as `tollgate policy test` does;
- every input of CORPUS.json (a JSON array of {"id": str, "input": object}) is evaluated at
  `data.tollgate.decision`.

It prints one JSON object: {"modules": [...], "data_files": [...], "data": the data document, "tests": [{"name", "passed", "detail"}],
"cases": [{"name", "passed", "detail"}], "decisions": [{"id", "value"} | {"id", "error"} | {"id",
"undefined": true}]}. It exits non-zero only when it cannot load the bundle.
"""

import json
import os
import re
import sys

import opa_bindings

DATA_NAMES = ("data.json", "data.yaml", "data.yml")
DATA_EXTENSIONS = (".json", ".yaml", ".yml")


class LoadError(Exception):
    pass


def walk(root):
    """Every file under root, relative, in a stable order (OPA reads directories sorted by name)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            out.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(out)


def merge(into, doc, where):
    """Deep-merges object `doc` into object `into`; two values at one path that are not both objects conflict."""
    for key, value in doc.items():
        if key in into:
            if isinstance(into[key], dict) and isinstance(value, dict):
                merge(into[key], value, where)
            else:
                raise LoadError(f"{where}: merge error: data.{key} is defined twice")
        else:
            into[key] = value


def placed(rel, value):
    """The value nested under its directory's path, as OPA's loaders place a data file."""
    parts = [p for p in os.path.dirname(rel).split("/") if p]
    for part in reversed(parts):
        value = {part: value}
    if not isinstance(value, dict):
        raise LoadError(f"{rel}: a data file at the bundle's root must hold an object")
    return value


def parse_data(engine, rel, text):
    if rel.endswith(".json"):
        return json.loads(text)
    rows = engine.eval_query("x := yaml.unmarshal(input.text)", input={"text": text})
    if not rows:
        raise LoadError(f"{rel}: OPA could not read it as YAML")
    return rows[0]["x"]


def load(policy_dir):
    """An engine with the bundle's modules and data; the module texts and data file names."""
    parser = opa_bindings.OpaEngine()
    parser.print_handler = lambda message, location: None
    modules = {}
    directory_doc = {}
    bundle_doc = {}
    data_files = []
    for rel in walk(policy_dir):
        with open(os.path.join(policy_dir, rel), encoding="utf-8") as f:
            text = f.read()
        if rel.endswith(".rego"):
            modules[rel] = text
        elif rel.endswith(DATA_EXTENSIONS):
            try:
                value = parse_data(parser, rel, text)
            except opa_bindings.OpaError as e:
                raise LoadError(f"{rel}: {e}") from None
            merge(directory_doc, placed(rel, value), rel)
            if os.path.basename(rel) in DATA_NAMES:
                merge(bundle_doc, placed(rel, value), rel)
                data_files.append(rel)
        # Any other file below the root is skipped by the directory loader and ignored in a bundle.
    parser.close()
    if directory_doc != bundle_doc:
        raise LoadError(
            "`opa test DIR` and `opa eval -b DIR` would load different data: a JSON/YAML file not named "
            "data.json/data.yaml is in the bundle"
        )
    engine = opa_bindings.OpaEngine()
    engine.print_handler = lambda message, location: None
    for rel, text in modules.items():
        engine.add_policy(rel, text)
    engine.add_data(bundle_doc)
    return engine, modules, data_files, bundle_doc


def test_rules(modules):
    """(package, rule) of every `test_*` rule, as `opa test` finds them: rules at column 0 named test_..."""
    found = []
    for text in modules.values():
        package = re.search(r"^package\s+([\w.]+)", text, re.M)
        if not package:
            continue
        for name in re.findall(r"^(test_\w+)", text, re.M):
            entry = (package.group(1), name)
            if entry not in found:
                found.append(entry)
    return found


def evaluate(engine, query, input=None):
    """('value', v) / ('undefined', None) / ('error', message) for `x = <query>`."""
    try:
        rows = engine.eval_query(f"x = {query}", input=input)
    except opa_bindings.OpaError as e:
        return "error", str(e)
    if not rows:
        return "undefined", None
    return "value", rows[0]["x"]


def packages_of(modules, tests_only=False):
    packages = []
    for rel, text in modules.items():
        package = re.search(r"^package\s+([\w.]+)", text, re.M)
        if package and package.group(1) not in packages and (rel.startswith("tests/") or not tests_only):
            packages.append(package.group(1))
    return packages


def run_tests(engine, modules):
    """Every test rule's result. Each package's document is evaluated once (preparing a query compiles the
    bundle, about a second here, so one query per test rule would take minutes); a rule that is undefined
    is absent from it. A package whose evaluation fails has its rules evaluated one by one, as `opa test`
    does, so the error lands on the rule that raised it."""
    results = []
    rules = test_rules(modules)
    documents = {}
    for package in sorted({p for p, _ in rules}):
        documents[package] = evaluate(engine, f"data.{package}")
    for package, name in rules:
        kind, document = documents[package]
        if kind == "value":
            passed = document.get(name) is True
            detail = None if passed else f"value {json.dumps(document.get(name, 'undefined'))}"
        else:
            kind, value = evaluate(engine, f"data.{package}.{name}")
            passed = kind == "value" and value is True
            detail = None if passed else (value if kind == "error" else f"{kind} {json.dumps(value)}")
        results.append({"name": f"data.{package}.{name}", "passed": passed, "detail": detail})
    return results


def replay_cases(engine, modules):
    results = []
    for package in packages_of(modules, tests_only=True):
        kind, table = evaluate(engine, f"data.{package}.cases")
        if kind != "value" or not isinstance(table, dict):
            continue
        for name, case in sorted(table.items()):
            test = f'data.{package}.cases["{name}"] on OPA'
            kind, decision = evaluate(engine, "data.tollgate.decision", case.get("input"))
            detail = None
            if kind != "value" or not isinstance(decision, dict):
                detail = f"decision {kind}: {decision}"
            elif decision.get("outcome") != case.get("outcome"):
                detail = f"outcome {decision.get('outcome')}, expected {case.get('outcome')}"
            elif "rules" in case:
                rules = sorted({r.get("rule") for r in decision.get("reasons") or [] if isinstance(r, dict)})
                if rules != sorted(set(case["rules"])):
                    detail = f"rules {rules}, expected {sorted(set(case['rules']))}"
            results.append({"name": test, "passed": detail is None, "detail": detail})
    return results


def main():
    policy_dir, corpus_path = sys.argv[1], sys.argv[2]
    try:
        engine, modules, data_files, document = load(policy_dir)
    except (LoadError, opa_bindings.OpaError, ValueError) as e:
        print(f"run_opa: cannot load {policy_dir}: {e}", file=sys.stderr)
        sys.exit(2)
    with open(corpus_path, encoding="utf-8") as f:
        corpus = json.load(f)
    decisions = []
    for entry in corpus:
        kind, value = evaluate(engine, "data.tollgate.decision", entry["input"])
        if kind == "value":
            decisions.append({"id": entry["id"], "value": value})
        elif kind == "undefined":
            decisions.append({"id": entry["id"], "undefined": True})
        else:
            decisions.append({"id": entry["id"], "error": value})
    out = {
        "modules": sorted(modules),
        "data_files": data_files,
        "data": document,
        "tests": run_tests(engine, modules),
        "cases": replay_cases(engine, modules),
        "decisions": decisions,
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
