#!/usr/bin/env bash
# Make podman run containers on a host like the CI machine (Debian 12, root, no systemd, cgroups
# that crun cannot drive): runc as the OCI runtime, and no default rlimits, which runc cannot set
# here either. Idempotent: it only adds what /etc/containers/containers.conf lacks.
#
#   deploy/container/podman-host.sh           # as root; .ci/run calls it before the system tier
set -euo pipefail
conf=${CONTAINERS_CONF:-/etc/containers/containers.conf}
command -v podman > /dev/null || { echo "error: podman is not installed (apt-get install podman runc)" >&2; exit 1; }
command -v runc > /dev/null || { echo "error: runc is not installed (apt-get install runc)" >&2; exit 1; }
mkdir -p "$(dirname "$conf")"
touch "$conf"

# set_key TABLE KEY VALUE: KEY = VALUE in [TABLE], added where missing, replaced where different.
set_key() {
    local table=$1 key=$2 value=$3
    python3 - "$conf" "$table" "$key" "$value" <<'PY'
import re, sys
path, table, key, value = sys.argv[1:]
lines = open(path).read().splitlines()
start = next((i for i, l in enumerate(lines) if l.strip() == f"[{table}]"), None)
if start is None:
    lines += ["", f"[{table}]", f"{key} = {value}"]
else:
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines))
    at = next((i for i in range(start + 1, end) if re.match(rf"\s*{re.escape(key)}\s*=", lines[i])), None)
    if at is None:
        lines.insert(start + 1, f"{key} = {value}")
    else:
        lines[at] = f"{key} = {value}"
open(path, "w").write("\n".join(lines).strip("\n") + "\n")
PY
}
set_key containers default_ulimits '[]'
set_key engine runtime '"runc"'
podman info --format '{{.Host.OCIRuntime.Name}}' | grep -qx runc || { echo "error: podman does not use runc after editing $conf" >&2; exit 1; }
echo "$conf: podman uses runc, no default ulimits"
