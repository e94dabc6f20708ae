"""Cross-check facepriv's RecordIO reader/writer against real MXNet (not a unit test).

MXNet 1.9.1 needs numpy < 1.24, so it lives in its own virtualenv:

    python3 -m venv /tmp/mxvenv && /tmp/mxvenv/bin/pip install "mxnet==1.9.1" "numpy<1.24"
    python3 .ci/mxnet_recordio_check.py --mxnet-python /tmp/mxvenv/bin/python

1. facepriv writes an insightface-layout dataset (header record, images, identity records);
   MXNet's ``MXIndexedRecordIO`` + ``recordio.unpack`` read every record back and check
   headers, labels and image bytes.
2. MXNet writes records with scalar labels, label arrays (``flag > 0``) and empty payloads;
   facepriv's reader and ``unpack_payload`` read them back and the same checks run.
Prints one JSON line with the counts; exits non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MX_SIDE = r'''
import json, sys
import numpy as np
from mxnet import recordio
rec, idx, expect_path, out_rec, out_idx = sys.argv[1:6]
expect = json.load(open(expect_path))
r = recordio.MXIndexedRecordIO(idx, rec, "r")
n = 0
for key, (label, payload_hex) in expect.items():
    h, payload = recordio.unpack(r.read_idx(int(key)))
    lab = np.asarray(h.label, dtype=np.float32).ravel().tolist() if h.flag > 0 else [float(h.label)]
    assert np.allclose(lab, label), (key, lab, label)
    assert payload == bytes.fromhex(payload_hex), key
    assert h.id == int(key), (key, h.id)
    n += 1
w = recordio.MXIndexedRecordIO(out_idx, out_rec, "w")
written = {}
for i in range(1, 40):
    data = bytes((i * j) % 256 for j in range(i * 37))
    label = [float(i), float(i % 3), 0.5] if i % 4 == 0 else float(i % 7)
    w.write_idx(i, recordio.pack(recordio.IRHeader(0, label, i, 0), data))
    written[i] = [label if isinstance(label, list) else [label], data.hex()]
w.close()
print(json.dumps({"mx_read": n, "mx_written": written}))
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mxnet-python", required=True, help="python interpreter that can import mxnet")
    args = ap.parse_args()
    import numpy as np

    from facepriv.data.recordio import RecordIOReader, unpack_payload, write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        items = [(bytes([k % 251]) * (50 + 13 * k), k // 5) for k in range(60)]  # 12 identities x 5 images
        rec, idx, n = write_dataset(t / "train.rec", items)
        expect = {}
        with RecordIOReader(rec) as reader:
            for key in sorted(reader.keys):
                h, payload = unpack_payload(reader.read(key))
                label = np.asarray(h.label, dtype=np.float32).ravel().tolist()
                expect[str(key)] = [label, payload.hex()]
        (t / "expect.json").write_text(json.dumps(expect))
        proc = subprocess.run([args.mxnet_python, "-c", MX_SIDE, rec, idx, str(t / "expect.json"),
                               str(t / "mx.rec"), str(t / "mx.idx")], capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        mx = json.loads(proc.stdout.strip().splitlines()[-1])
        with RecordIOReader(t / "mx.rec") as reader:
            for key, (label, data_hex) in mx["mx_written"].items():
                h, payload = unpack_payload(reader.read(int(key)))
                got = np.asarray(h.label, dtype=np.float32).ravel().tolist()
                if not np.allclose(got, label) or payload != bytes.fromhex(data_hex) or h.id != int(key):
                    print(f"mismatch reading MXNet record {key}: label {got} vs {label}", file=sys.stderr)
                    return 1
        print(json.dumps({"facepriv_written_read_by_mxnet": mx["mx_read"], "images": n,
                          "mxnet_written_read_by_facepriv": len(mx["mx_written"]), "ok": True}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
