"""Show what this machine would advertise: NVML probe, calibration, and a signed ad round trip.

Run on a GPU machine to check the NVML path end to end without starting a node:
``python tools/gpu_probe.py [--json]``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pnode.identity import Identity  # noqa: E402
from p2pnode.telemetry.calibrate import calibrate  # noqa: E402
from p2pnode.telemetry.probe import HardwareProbe  # noqa: E402
from p2pnode.wire.capacity_ad import CapacityAd, Offer, decode_ad, encode_ad  # noqa: E402


def main() -> int:
    probe = HardwareProbe()
    hw = probe.read()
    speeds = calibrate(0.5)
    probe.close()
    me = Identity.generate()
    now = time.time()
    ad = CapacityAd(
        peer_id=me.peer_id, seq=1, issued_at_ms=int(now * 1000), expires_at_ms=int((now + 30) * 1000),
        cpu=hw.cpu, gpus=hw.gpus, offers=(Offer("matmul", "cuda" if hw.gpus else "numpy", 100, "gflop"),),
        speed=tuple(sorted(speeds.items())),
    )
    raw = encode_ad(ad, me.signing_key)
    back = decode_ad(raw).ad
    assert back == ad, "ad did not survive the round trip"
    out = {"problems": list(hw.problems), "ad_bytes": len(raw), "ad": back.to_json()}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
