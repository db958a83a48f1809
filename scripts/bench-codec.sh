#!/usr/bin/env bash
# Codec micro-benchmark: encode+decode of a 16 KiB DATA frame, v2 and v1 in one run, then the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p nowconnect-shared --bench codec -- --noplot "$@" >/dev/null
dir=target/criterion/data_16k_encode_decode
python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
ns = {v: json.load(open(f"{d}/{v}/new/estimates.json"))["median"]["point_estimate"] for v in ("v2", "v1")}
gib = {v: 16 * 1024 / ns[v] * 1e9 / 2**30 for v in ns}
print(f"16 KiB DATA encode+decode: v2 {ns['v2']/1000:.2f} us ({gib['v2']:.2f} GiB/s), "
      f"v1 {ns['v1']/1000:.2f} us ({gib['v1']:.2f} GiB/s), v2/v1 throughput = {ns['v1']/ns['v2']:.1f}x")
PY
