"""`facepriv data` command line: synth -> pack -> inspect, .bin and pairs inspection, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facepriv.data import RecordIODataset, write_bin
from facepriv.data.cli import main


def test_synth_pack_inspect(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth", str(out), "--identities", "6", "--images-per-identity", "3", "--seed", "2",
                 "--pairs-per-fold", "2", "--folds", "2", "--quiet"]) == 0
    assert "wrote 18 images of 6 identities" in capsys.readouterr().out
    summary = json.loads((out / "synth_summary.json").read_text())
    assert summary["images"] == 18 and (out / "pairs.txt").is_file()

    assert main(["pack", str(out), str(tmp_path / "rec" / "train"), "--quiet"]) == 0
    assert "packed 18 images of 6 identities" in capsys.readouterr().out
    assert len(RecordIODataset(tmp_path / "rec")) == 18

    assert main(["inspect", str(tmp_path / "rec"), "--json", "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["type"] == "recordio" and info["images"] == 18 and info["identities"] == 6
    assert info["header_record"] == [19, 25] and info["sample_bad"] == []

    assert main(["inspect", str(out), "--json", "--scan", "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["identities"] == 6 and info["decoded_ok"] == 18 and info["bad"] == []

    assert main(["inspect", str(out / "pairs.txt"), "--images", str(out), "--json", "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pairs"] == 8 and info["genuine"] == 4

    assert main(["inspect", str(out / "pairs.txt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 8


def test_inspect_bin_and_errors(tmp_path, capsys):
    imgs = [np.full((112, 112, 3), v, np.uint8) for v in (0, 50, 100, 150)]
    write_bin(tmp_path / "v.bin", imgs, [True, False])
    assert main(["inspect", str(tmp_path / "v.bin"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pairs"] == 2 and info["images"] == 4 and info["sample_sizes"] == {"112x112": 4}

    (tmp_path / "evil.bin").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    assert main(["inspect", str(tmp_path / "evil.bin")]) == 1
    err = capsys.readouterr().err
    assert "evil.bin" in err and "refusing" in err

    assert main(["align", str(tmp_path), str(tmp_path / "o"), "--detector", str(tmp_path / "none.onnx")]) == 1
    assert "none.onnx" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "x.weird")]) == 2
    assert main([]) == 0


def test_inspect_corrupt_recordio_reports_bad_records(tmp_path, capsys):
    import struct

    from facepriv.data import RecordIOReader, encode_image, write_dataset

    items = [(encode_image(np.full((16, 16, 3), 20 * i, np.uint8), ".png"), i // 2) for i in range(8)]
    rec, _, _ = write_dataset(tmp_path / "train", items)
    index = RecordIOReader(tmp_path / "train").index
    buf = bytearray(open(rec, "rb").read())
    struct.pack_into("<f", buf, index[2] + 12, float("nan"))
    struct.pack_into("<f", buf, index[4] + 12, 1e9)
    buf[index[6] : index[6] + 4] = b"\xde\xad\xbe\xef"
    open(rec, "wb").write(bytes(buf))
    with pytest.warns(RuntimeWarning, match="3 of 8 records"):
        assert main(["inspect", str(tmp_path), "--json", "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["declared_identities"] == 4 and info["images"] == 8
    assert info["label_range"] == [0, 3] and info["identities"] == 4
    bad = {b["record"].rsplit("#", 1)[1]: b["reason"] for b in info["bad_records"]}
    assert set(bad) == {"2", "4", "6"}
    assert "label nan" in bad["2"] and "1000000000" in bad["4"] and "bad magic" in bad["6"]
    assert [b["item"] for b in info["sample_bad"]] == ["#2", "#4", "#6"]

    # a header that claims a billion images: one line naming the file, at once
    from facepriv.data import RecordIOWriter

    with RecordIOWriter(tmp_path / "liar" / "train") as w:
        w.write_record(0, [1e9, 1e9])
        w.write_record(1, 0.0, items[0][0])
    assert main(["inspect", str(tmp_path / "liar"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "train.rec#0 (header record)" in err and "only 2 records" in err
