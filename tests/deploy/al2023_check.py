#!/usr/bin/env python3
"""Checks deploy/al2023/user-data.mime the way cloud-init and nodeadm read it: a MIME
multi-part document whose parts are one `application/node.eks.aws` NodeConfig (YAML,
node.eks.aws/v1alpha1, with the cluster fields nodeadm requires) and one
`text/x-shellscript` that bash parses (`bash -n`) and that installs the release tarball
`cargo xtask dist` produces (same directory name) with its install.sh.

    al2023_check.py USER_DATA_MIME

Needs PyYAML. Exit 1 with one line per problem.
"""

import email
import email.policy
import subprocess
import sys
from pathlib import Path

import yaml

from checks import Problems

problems = Problems("al2023_check")
check = problems.check


def main():
    path = Path(sys.argv[1])
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    check(msg.get_content_type() == "multipart/mixed", f"top type {msg.get_content_type()}")
    check(msg.get("MIME-Version") == "1.0", "no MIME-Version: 1.0")
    parts = list(msg.iter_parts()) if msg.is_multipart() else []
    types = [p.get_content_type() for p in parts]
    check(types == ["application/node.eks.aws", "text/x-shellscript"],
          f"part types {types}")
    for p in parts:
        body = p.get_content()
        if isinstance(body, bytes):
            body = body.decode()
        if p.get_content_type() == "application/node.eks.aws":
            docs = [d for d in yaml.safe_load_all(body) if d]
            check(len(docs) == 1, f"{len(docs)} YAML documents in the NodeConfig part")
            nc = docs[0] if docs else {}
            check(nc.get("apiVersion") == "node.eks.aws/v1alpha1", f"apiVersion {nc.get('apiVersion')}")
            check(nc.get("kind") == "NodeConfig", f"kind {nc.get('kind')}")
            cluster = nc.get("spec", {}).get("cluster", {})
            for field in ("name", "apiServerEndpoint", "certificateAuthority", "cidr"):
                check(field in cluster, f"NodeConfig spec.cluster.{field} missing")
        elif p.get_content_type() == "text/x-shellscript":
            check(body.startswith("#!"), "script part has no #! line")
            r = subprocess.run(["bash", "-n"], input=body, text=True, capture_output=True)
            check(r.returncode == 0, f"bash -n: {r.stderr.strip()}")
            check("imds-snoop-$VERSION-$ARCH-linux-musl.tar.gz" in body,
                  "script does not fetch the dist tarball name")
            check('"$work/imds-snoop-$VERSION-$ARCH-linux-musl/install.sh"' in body,
                  "script does not run the tarball's install.sh")
            check("sha256sum -c" in body, "script does not verify the tarball's checksum")
    problems.finish(path.name, f"{len(parts)} parts: {', '.join(types)}")


if __name__ == "__main__":
    main()
