"""RecordIO (.rec/.idx) reading and writing, checked against the byte-level format."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest
import torch

from facepriv.data import (
    RecordIODataset,
    RecordIOError,
    RecordIOReader,
    RecordIOWriter,
    decode_image,
    encode_image,
    pack_folder,
    pack_images,
    pack_payload,
    rebuild_index,
    unpack_payload,
    write_dataset,
)
from facepriv.data.recordio import MAGIC, encode_frames

MAGIC_B = struct.pack("<I", MAGIC)


def _img(seed: int, h: int = 16, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _frames(buf: bytes) -> list[tuple[int, int, bytes]]:
    """Independent frame parser for the tests: (cflag, length, data) per frame."""
    out, pos = [], 0
    while pos < len(buf):
        magic, lrec = struct.unpack_from("<II", buf, pos)
        assert magic == MAGIC
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        out.append((cflag, length, buf[pos + 8 : pos + 8 + length]))
        pos += 8 + length + (-length % 4)
    return out


def test_reads_hand_built_file(tmp_path):
    """A file built byte by byte from the format description (not with our writer)."""
    png = encode_image(_img(1), ".png")
    # header: images are keys 1..2, identity records 3..4 (2 identities, so labels 0 and 1)
    payload0 = struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 3.0, 5.0)
    payload1 = struct.pack("<IfQQ", 0, 1.0, 1, 0) + png
    payload2 = struct.pack("<IfQQ", 0, 0.0, 2, 0) + encode_image(_img(2), ".png")
    rec = b""
    offsets = []
    for p in (payload0, payload1, payload2):
        offsets.append(len(rec))
        rec += MAGIC_B + struct.pack("<I", len(p)) + p + b"\0" * (-len(p) % 4)
    (tmp_path / "train.rec").write_bytes(rec)
    (tmp_path / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offsets)))
    ds = RecordIODataset(tmp_path)
    assert ds.header0 == (3, 5) and ds.declared_classes == 2
    assert len(ds) == 2
    x, y = ds[0]
    assert y == 1
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy() * 255, _img(1), atol=1e-3)


def test_round_trip_scalar_and_array_labels(tmp_path):
    imgs = [_img(i) for i in range(5)]
    labels = [0, 0, 1, [2.0, 5.0, 6.0], [2.0, 1.0]]
    items = [(encode_image(im, ".png"), lab) for im, lab in zip(imgs, labels)]
    rec, idx, n = write_dataset(tmp_path / "train", items)
    assert n == 5
    reader = RecordIOReader(tmp_path / "train")
    h0 = reader.read_header(0)
    assert h0.flag == 2
    # images 1..5, then 3 identity records
    np.testing.assert_array_equal(h0.label, [6.0, 9.0])
    h4 = reader.read_header(4)
    assert h4.flag == 3 and h4.id == 4
    np.testing.assert_array_equal(h4.label, [2.0, 5.0, 6.0])
    assert reader.read_header(2).flag == 0 and reader.read_header(2).label == 0.0
    # identity record for label 2 covers image ids [4, 6)
    np.testing.assert_array_equal(reader.read_header(8).label, [4.0, 6.0])

    ds = RecordIODataset(tmp_path / "train.rec", dtype="uint8")
    assert len(ds) == 5
    got = [ds[i] for i in range(5)]
    assert [y for _, y in got] == [0, 0, 1, 2, 2]
    for (x, _), im in zip(got, imgs):
        assert x.dtype == torch.uint8
        np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), im)
    np.testing.assert_array_equal(ds.labels(), [0, 0, 1, 2, 2])
    assert ds.num_classes == 3


def test_decode_is_rgb_not_bgr(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    write_dataset(tmp_path / "t", [(encode_image(red, ".png"), 0)])
    x, _ = RecordIODataset(tmp_path / "t")[0]
    assert x[0].mean() == 1.0 and x[2].mean() == 0.0


def test_split_records_round_trip(tmp_path):
    # magic at aligned offsets 0, 8 and at the very end, plus one unaligned occurrence
    payload = MAGIC_B + b"abcd" + MAGIC_B + b"xy" + MAGIC_B + b"zw" + b"1234" + MAGIC_B
    assert len(payload) % 4 == 0
    framed = encode_frames(payload)
    frames = _frames(framed)
    assert [f[0] for f in frames] == [1, 2, 2, 3]
    assert [f[2] for f in frames] == [b"", b"abcd", b"xy" + MAGIC_B + b"zw1234", b""]
    assert MAGIC_B.join(f[2] for f in frames) == payload
    # unaligned magic (at offset 14) stays inside a frame
    assert MAGIC_B in frames[2][2]

    unsplit = encode_frames(b"hello")
    assert [f[0] for f in _frames(unsplit)] == [0] and len(unsplit) == 8 + 8

    with RecordIOWriter(tmp_path / "s") as w:
        w.write(0, payload)
        w.write(1, b"tail" * 3 + MAGIC_B + b"q")  # split record followed by padding
        w.write(2, b"after")
    r = RecordIOReader(tmp_path / "s")
    assert r.read(0) == payload
    assert r.read(1) == b"tail" * 3 + MAGIC_B + b"q"
    assert r.read(2) == b"after"
    assert [p for _, p in r.iter_sequential()] == [r.read(0), r.read(1), r.read(2)]


def test_image_record_with_magic_inside(tmp_path):
    """A label array whose float bytes equal the magic forces a split inside the header area."""
    magic_float = struct.unpack("<f", MAGIC_B)[0]
    png = encode_image(_img(3), ".png")
    payload = pack_payload([1.0, magic_float], png, id=1)
    assert MAGIC_B in payload[24:32]
    write_dataset(tmp_path / "m", [(png, [1.0, magic_float])])
    r = RecordIOReader(tmp_path / "m")
    header, data = unpack_payload(r.read(1))
    assert header.label[0] == 1.0 and header.label.view(np.uint32)[1] == MAGIC
    np.testing.assert_array_equal(decode_image(data), _img(3))


def test_truncated_rec_is_a_clear_error(tmp_path):
    items = [(encode_image(_img(i), ".png"), i) for i in range(3)]
    rec, _, _ = write_dataset(tmp_path / "train", items, identity_records=False)
    data = open(rec, "rb").read()
    open(rec, "wb").write(data[:-50])
    with pytest.raises(RecordIOError) as ei:
        RecordIODataset(tmp_path / "train")
    msg = str(ei.value)
    assert "train.rec" in msg and "truncated" in msg and "offset" in msg


def test_idx_past_eof_is_a_clear_error(tmp_path):
    rec, idx, _ = write_dataset(tmp_path / "train", [(encode_image(_img(0), ".png"), 0)])
    with open(idx, "a") as f:
        f.write(f"99\t{os.path.getsize(rec) + 100}\n")
    with pytest.raises(RecordIOError, match=r"train\.idx.*key 99.*past the end"):
        RecordIOReader(tmp_path / "train")
    r = RecordIOReader(tmp_path / "train", strict=False)
    assert r.dropped and 99 not in r.index


def test_bad_magic_named_and_substituted(tmp_path):
    items = [(encode_image(_img(i), ".png"), i) for i in range(4)]
    rec, _, _ = write_dataset(tmp_path / "train", items)
    reader = RecordIOReader(tmp_path / "train")
    off = reader.index[2]
    buf = bytearray(open(rec, "rb").read())
    buf[off : off + 4] = b"\xde\xad\xbe\xef"
    open(rec, "wb").write(bytes(buf))
    with pytest.raises(RecordIOError) as ei:
        RecordIOReader(tmp_path / "train").read(2)
    assert f"offset {off}" in str(ei.value) and "bad magic" in str(ei.value) and "train.rec" in str(ei.value)

    strict = RecordIODataset(tmp_path / "train", on_error="raise")
    with pytest.raises(RecordIOError):
        strict[1]
    ds = RecordIODataset(tmp_path / "train")
    with pytest.warns(RuntimeWarning, match="train.rec#2"):
        x, y = ds[1]  # record key 2 is sample index 1
    assert y == 2  # the next readable record, with its own label
    assert ds.failures.count == 1
    assert [r for r, _ in ds.verify()] == [f"{rec}#2"]


def test_rebuild_index(tmp_path):
    rec, idx, _ = write_dataset(tmp_path / "train", [(encode_image(_img(i), ".png"), i // 2) for i in range(4)])
    original = open(idx).read()
    os.remove(idx)
    with pytest.raises(RecordIOError, match="rebuild_index"):
        RecordIOReader(tmp_path / "train")
    rebuild_index(rec)
    assert open(idx).read() == original


def test_pack_folder_skips_and_reports_corrupt(tmp_path):
    root = tmp_path / "faces"
    for name, n in (("bob", 2), ("amy", 3)):
        (root / name).mkdir(parents=True)
        for j in range(n):
            (root / name / f"{j}.png").write_bytes(encode_image(_img(10 * len(name) + j), ".png"))
    (root / "amy" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    report = pack_folder(root, tmp_path / "out" / "train")
    assert report.images == 5 and report.classes == 2
    assert len(report.skipped) == 1 and report.skipped[0][0].endswith("broken.jpg")
    assert report.stretched == []
    (root / "bob" / "wide.png").write_bytes(encode_image(_img(5, 12, 16), ".png"))
    resized = pack_folder(root, tmp_path / "small" / "train", image_size=8)
    assert [p.rsplit("/", 1)[1] for p in resized.stretched] == ["wide.png"]  # 16x16 -> 8x8 is not a stretch
    ds = RecordIODataset(tmp_path / "out")
    assert sorted(ds.labels().tolist()) == [0, 0, 0, 1, 1]  # amy=0, bob=1 (sorted names)
    assert (tmp_path / "out" / "property").read_text().startswith("2,16,16")


def test_dataset_pickles_and_works_in_workers(tmp_path):
    write_dataset(tmp_path / "train", [(encode_image(_img(i), ".png"), i // 2) for i in range(6)])
    ds = RecordIODataset(tmp_path / "train")
    ds[0]  # opens the descriptor; pickling must drop it
    clone = pickle.loads(pickle.dumps(ds))
    for i in range(6):
        assert torch.equal(clone[i][0], ds[i][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    xs = torch.cat([x for x, _ in loader])
    assert torch.equal(xs, torch.stack([ds[i][0] for i in range(6)]))


def test_pack_images_from_arrays(tmp_path):
    import cv2

    # smooth images: JPEG's chroma subsampling would wreck per-pixel random colours
    imgs = [cv2.resize(_img(i, 3, 3), (24, 24), interpolation=cv2.INTER_LINEAR) for i in range(4)]
    pack_images(tmp_path / "arr", imgs, [0, 0, 1, 1], quality=100)
    ds = RecordIODataset(tmp_path / "arr")
    assert ds.labels().tolist() == [0, 0, 1, 1] and ds.header0 == (5, 7)
    x, _ = ds[2]
    assert np.abs(x.permute(1, 2, 0).numpy() * 255 - imgs[2]).mean() < 4  # JPEG, lossy


# -- corrupt files: substitute and report, memory bounded by the file ------------------------
def _set_label(rec, offset: int, value: float) -> None:
    """Overwrite the float32 IRHeader label of the (unsplit, scalar-label) record at ``offset``."""
    buf = bytearray(open(rec, "rb").read())
    struct.pack_into("<f", buf, offset + 8 + 4, value)
    open(rec, "wb").write(bytes(buf))


def test_nan_and_huge_labels_are_substituted_and_reported(tmp_path):
    items = [(encode_image(_img(i), ".png"), i // 2) for i in range(6)]  # labels 0 0 1 1 2 2
    rec, _, _ = write_dataset(tmp_path / "train", items)
    offsets = RecordIOReader(tmp_path / "train").index
    _set_label(rec, offsets[3], float("nan"))
    _set_label(rec, offsets[5], 1e9)  # would make a 1e9-class head
    ds = RecordIODataset(tmp_path / "train")
    assert ds.declared_classes == 3 and ds.num_classes == 3
    with pytest.warns(RuntimeWarning, match=r"2 of 6 records .* substituted") as caught:
        labels = ds.labels()
    assert "train.rec#3" in str(caught[0].message) and "nan" in str(caught[0].message)
    # each bad record takes the label of the next good one, as __getitem__ substitutes it
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert [r for r, _ in ds.bad_records] == [f"{rec}#3", f"{rec}#5"]
    assert "1000000000" in ds.bad_records[1][1] and "[0, 3)" in ds.bad_records[1][1]
    with pytest.warns(RuntimeWarning, match="train.rec#5"):
        x, y = ds[4]  # key 5 is sample 4
    assert y == 2 and ds.failures.count == 1
    assert [r for r, _ in ds.verify()] == [f"{rec}#3", f"{rec}#5"]
    with pytest.raises(RecordIOError, match="label nan"):
        RecordIODataset(tmp_path / "train", on_error="raise")[2]


def test_labels_without_a_declared_class_count_are_bounded_by_the_image_count(tmp_path):
    items = [(encode_image(_img(i), ".png"), i) for i in range(4)]
    rec, _, _ = write_dataset(tmp_path / "train", items, identity_records=False)
    _set_label(rec, RecordIOReader(tmp_path / "train").index[1], 2.0**24)
    ds = RecordIODataset(tmp_path / "train")
    assert ds.declared_classes is None and ds.label_bound == 4
    with pytest.warns(RuntimeWarning, match="4 images, the most identities"):
        assert ds.labels().tolist() == [1, 1, 2, 3]
    assert ds.num_classes == 4


def test_bad_magic_anywhere_is_substituted_not_fatal(tmp_path):
    items = [(encode_image(_img(i), ".png"), i) for i in range(5)]
    rec, _, _ = write_dataset(tmp_path / "train", items, identity_records=False)
    index = RecordIOReader(tmp_path / "train").index
    buf = bytearray(open(rec, "rb").read())
    for key in (2, 5):  # a middle record and the last one in the file
        buf[index[key] : index[key] + 4] = b"\xde\xad\xbe\xef"
    open(rec, "wb").write(bytes(buf))
    ds = RecordIODataset(tmp_path / "train")  # the strict open refuses truncation, not one bad record
    with pytest.warns(RuntimeWarning, match="2 of 5 records"):
        assert ds.labels().tolist() == [0, 2, 2, 3, 0]  # the last one wraps to the first, like __getitem__
    assert all("bad magic" in reason for _, reason in ds.bad_records)
    assert ds.num_classes == 4
    with pytest.warns(RuntimeWarning):
        assert ds[4][1] == 0


def test_header_claiming_more_than_the_file_holds_fails_fast(tmp_path, traced_peak):
    with RecordIOWriter(tmp_path / "train") as w:
        w.write_record(0, [2e7, 2e7])  # "images are keys 1..19,999,999"
        for k in range(1, 4):
            w.write_record(k, float(k - 1), encode_image(_img(k), ".png"))
    err, peak = traced_peak(lambda: RecordIODataset(tmp_path / "train"))
    assert isinstance(err, RecordIOError), err
    assert "header record" in str(err) and "19999999" in str(err) and "only 4 records" in str(err)
    assert peak < 20, f"{peak:.0f} MB traced for a 4-record file"

    with RecordIOWriter(tmp_path / "ids") as w:
        w.write_record(0, [4.0, 1e9])  # 3 images, "999,999,996 identities"
        for k in range(1, 4):
            w.write_record(k, float(k - 1), encode_image(_img(k), ".png"))
    with pytest.raises(RecordIOError, match=r"declare 999999996 identities but the file holds only 3 images"):
        RecordIODataset(tmp_path / "ids")
    with RecordIOWriter(tmp_path / "nan") as w:
        w.write_record(0, [float("nan"), 1.0])
        w.write_record(1, 0.0, encode_image(_img(1), ".png"))
    with pytest.raises(RecordIOError, match="not a pair of whole numbers"):
        RecordIODataset(tmp_path / "nan")


def test_property_file_declares_classes_and_is_checked(tmp_path):
    items = [(encode_image(_img(i), ".png"), i % 2) for i in range(4)]
    write_dataset(tmp_path / "train", sorted(items, key=lambda t: t[1]))
    (tmp_path / "property").write_text("3,16,16\n")  # a third identity whose images were all unreadable
    ds = RecordIODataset(tmp_path / "train.rec")
    assert ds.declared_classes == 3 and ds.num_classes == 3
    (tmp_path / "property").write_text("1000000000,112,112\n")
    with pytest.raises(RecordIOError, match="declare 1000000000 identities"):
        RecordIODataset(tmp_path / "train.rec")
    (tmp_path / "property").write_text("banana\n")
    with pytest.raises(RecordIOError, match=r"property.*classes,height,width"):
        RecordIODataset(tmp_path / "train.rec")


def test_corrupt_length_field_is_not_allocated(tmp_path, traced_peak):
    items = [(encode_image(_img(i), ".png"), i) for i in range(3)]
    rec, _, _ = write_dataset(tmp_path / "train", items, identity_records=False)
    off = RecordIOReader(tmp_path / "train").index[2]
    buf = bytearray(open(rec, "rb").read())
    struct.pack_into("<I", buf, off + 4, (1 << 29) - 4)  # cflag 0, "512 MB payload"
    open(rec, "wb").write(bytes(buf))
    reader = RecordIOReader(tmp_path / "train")
    err, peak = traced_peak(lambda: reader.read(2))
    assert isinstance(err, RecordIOError) and "truncated record" in str(err) and f"offset {off}" in str(err)
    assert peak < 20, f"{peak:.0f} MB traced to read a {os.path.getsize(rec)}-byte file"
    ds = RecordIODataset(tmp_path / "train")
    with pytest.warns(RuntimeWarning, match="train.rec#2"):
        assert ds[1][1] == 2  # substituted by key 3
