#!/usr/bin/env python3
"""Checks of deploy/prometheus/, its PrometheusRule copy, the NetworkPolicy's namespace
setting and deploy/grafana/'s queries, with Debian's promtool (no Prometheus server: the
live test, tests/e2e/prometheus.rs, runs one).

    prometheus_check.py --promtool PATH --workdir DIR [--kubectl PATH]
    prometheus_check.py --write-prometheus-rule      # regenerate the PrometheusRule

- `promtool check rules` of the rules file, `promtool test rules` of tests/prometheus/;
- the PrometheusRule (deploy/kubernetes/components/prometheus-rule) is the rules file's
  groups, byte for byte as generated here;
- with kubectl: `kubectl kustomize deploy/kubernetes-prometheus-operator` is the default
  kustomization plus that PrometheusRule, whose rendered spec.groups `promtool check rules`
  accepts (kubernetes-validate has no CRD schemas); an overlay's patch sets the namespace
  the NetworkPolicy admits;
- every `expr` of the dashboard, its variables substituted, parses (as a recording rule
  for `promtool check rules`).
Needs PyYAML. Exit 1 with one line per problem.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from checks import Problems

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/imds-snoop.rules.yaml"
UNIT_TESTS = ROOT / "tests/prometheus/rules_test.yaml"
PROMETHEUS_RULE = ROOT / "deploy/kubernetes/components/prometheus-rule/prometheusrule.yaml"
OPERATOR_OVERLAY = ROOT / "deploy/kubernetes-prometheus-operator"
BASE = ROOT / "deploy/kubernetes"
DASHBOARD = ROOT / "deploy/grafana/imds-snoop-fleet.json"
# What Grafana puts in for the dashboard's variables (the live test uses the same).
DASHBOARD_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$node": "node-x",
                  "$namespace": "shop", "$workload": "web"}

PROMETHEUS_RULE_HEAD = """\
# GENERATED from deploy/prometheus/imds-snoop.rules.yaml (its groups, indented): edit that
# file, then regenerate: tests/deploy/prometheus_check.py --write-prometheus-rule
# (the deploy check fails while the two differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: imds-snoop
  namespace: imds-snoop
  labels:
    app.kubernetes.io/name: imds-snoop
spec:
  groups:
"""

problems = Problems("prometheus_check")
check = problems.check


def prometheus_rule_text():
    """The PrometheusRule: the rules file's `groups:` body indented under spec.groups, so
    its comments come along."""
    body = RULES.read_text().split("\ngroups:\n", 1)[1]
    return PROMETHEUS_RULE_HEAD + "".join(
        ("    " + line if line.strip() else "") + "\n" for line in body.splitlines())


def dashboard_exprs():
    """(panel title, refId, expr with the variables substituted) of every panel target."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            e = t["expr"]
            for k in sorted(DASHBOARD_VARS, key=len, reverse=True):
                e = e.replace(k, DASHBOARD_VARS[k])
            out.append((p["title"], t["refId"], e))
    return out


def run(argv, what):
    r = subprocess.run(argv, capture_output=True, text=True)
    check(r.returncode == 0, f"{what} ({r.returncode}): {(r.stdout + r.stderr).strip()}")
    return r


def docs_of(text):
    return [d for d in yaml.safe_load_all(text) if d]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--promtool")
    ap.add_argument("--kubectl")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--write-prometheus-rule", action="store_true")
    a = ap.parse_args()
    if a.write_prometheus_rule:
        PROMETHEUS_RULE.write_text(prometheus_rule_text())
        return
    if not a.promtool or not a.workdir:
        ap.error("--promtool and --workdir are required")
    a.workdir.mkdir(parents=True, exist_ok=True)

    run([a.promtool, "check", "rules", str(RULES)], "promtool check rules")
    r = run([a.promtool, "test", "rules", str(UNIT_TESTS)], "promtool test rules")
    check("SUCCESS" in r.stdout, f"promtool test rules said no SUCCESS: {r.stdout.strip()}")

    groups = yaml.safe_load(RULES.read_text())["groups"]
    check(PROMETHEUS_RULE.read_text() == prometheus_rule_text(),
          f"{PROMETHEUS_RULE.relative_to(ROOT)} is not generated from the rules file: run "
          "tests/deploy/prometheus_check.py --write-prometheus-rule")

    if a.kubectl:
        def render(path):
            r = run([a.kubectl, "kustomize", str(path)], f"kubectl kustomize {path}")
            return docs_of(r.stdout) if r.returncode == 0 else []
        base = render(BASE)
        op = render(OPERATOR_OVERLAY)
        rules = [d for d in op if d["kind"] == "PrometheusRule"]
        check(len(rules) == 1, f"{len(rules)} PrometheusRules in the operator overlay, not 1")
        check([d for d in op if d["kind"] != "PrometheusRule"] == base,
              "the operator overlay changes the default kustomization's objects")
        check(not any(d["kind"] == "PrometheusRule" for d in base),
              "a PrometheusRule in the default kustomization (needs the operator's CRD)")
        if rules:
            pr = rules[0]
            check(pr["apiVersion"] == "monitoring.coreos.com/v1", pr["apiVersion"])
            check(pr["metadata"].get("namespace") == "imds-snoop", "PrometheusRule namespace")
            check(pr["spec"]["groups"] == groups, "rendered spec.groups != the rules file's")
            out = a.workdir / "prometheusrule-groups.yaml"
            out.write_text(yaml.safe_dump({"groups": pr["spec"]["groups"]}, sort_keys=False))
            run([a.promtool, "check", "rules", str(out)],
                "promtool check rules of the rendered PrometheusRule's spec.groups")

        # An overlay sets the namespace the metrics port admits, as the manifest says.
        overlay = a.workdir / "np-overlay"
        overlay.mkdir(exist_ok=True)
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(BASE, overlay)],
            "patches": [{"target": {"kind": "NetworkPolicy", "name": "imds-snoop-metrics"},
                         "patch": "- op: replace\n  path: /spec/ingress/0/from/0/"
                                  "namespaceSelector/matchLabels/kubernetes.io~1metadata.name\n"
                                  "  value: observability\n"}]}))
        for docs, want in ((base, "monitoring"), (render(overlay), "observability")):
            nps = [d for d in docs if d["kind"] == "NetworkPolicy"]
            got = [d["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
                   .get("kubernetes.io/metadata.name") for d in nps]
            check(got == [want], f"NetworkPolicy admits namespaces {got}, not [{want}]")

    exprs = dashboard_exprs()
    check(len(exprs) >= 10, f"only {len(exprs)} dashboard queries")
    for title, ref, e in exprs:
        check("$" not in e, f"dashboard {title!r} {ref}: a variable left in {e}")
    dash_rules = a.workdir / "dashboard-exprs.rules.yaml"
    dash_rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e} for i, (_, _, e) in enumerate(exprs)]}]}))
    run([a.promtool, "check", "rules", str(dash_rules)], "the dashboard's queries do not parse")

    problems.finish("deploy/prometheus", f"{len(groups)} rule groups, {len(exprs)} dashboard queries")


if __name__ == "__main__":
    main()
