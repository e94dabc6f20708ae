"""Verification protocols: .bin (safe unpickling), LFW pairs.txt, generated pairs."""

from __future__ import annotations

import os
import pickle
import pickletools
import struct

import numpy as np
import pytest
import torch

from facepriv.data import (
    UnsafePickleError,
    VerificationDataError,
    contiguous_folds,
    encode_image,
    load_bin,
    load_pairs_txt,
    make_pairs,
    parse_pairs_txt,
    safe_loads,
    write_bin,
    write_image,
)


def _img(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_bin_round_trip(tmp_path):
    imgs = [_img(i) for i in range(14)]
    issame = [True, False] * 3 + [True]
    path = tmp_path / "lfw.bin"
    write_bin(path, [encode_image(im, ".png") for im in imgs], issame)
    vs = load_bin(path, image_size=None, n_folds=5)
    assert vs.name == "lfw" and vs.num_pairs == 7 and vs.num_images == 14
    np.testing.assert_array_equal(vs.pairs, [[2 * k, 2 * k + 1] for k in range(7)])
    np.testing.assert_array_equal(vs.issame, issame)
    # insightface: unshuffled KFold -> contiguous folds, first P % k folds one larger
    np.testing.assert_array_equal(vs.folds, [0, 0, 1, 1, 2, 3, 4])
    idx, batch = next(vs.iter_batches(batch_size=5))
    assert batch.shape == (5, 3, 16, 16) and batch.dtype == torch.float32
    np.testing.assert_allclose(batch[3].permute(1, 2, 0).numpy() * 255, imgs[3], atol=1e-3)
    batches = list(vs.iter_batches(batch_size=5))
    assert [len(i) for i, _ in batches] == [5, 5, 4]
    assert torch.equal(torch.cat([i for i, _ in batches]), torch.arange(14))
    tds = vs.torch_dataset()
    assert len(tds) == 14 and torch.equal(tds[3][0], batch[3]) and tds[3][1] == 3


def test_bin_resizes_to_image_size(tmp_path):
    write_bin(tmp_path / "a.bin", [_img(0, 24), _img(1, 24)], [True])  # arrays are JPEG-encoded
    vs = load_bin(tmp_path / "a.bin", image_size=16)
    _, batch = next(vs.iter_batches(2))
    assert batch.shape == (2, 3, 16, 16)


def test_bin_variants_python2_and_numpy(tmp_path):
    blobs = [encode_image(_img(i), ".png") for i in range(4)]
    # protocol 2 from Python 3 stores bytes via _codecs.encode(str, 'latin1')
    p2 = pickle.dumps((blobs, [True, False]), protocol=2)
    assert b"_codecs" in p2
    (tmp_path / "p2.bin").write_bytes(p2)
    assert load_bin(tmp_path / "p2.bin").num_pairs == 2
    # images as uint8 arrays (cv2.imencode output) and issame as a numpy bool array
    arrs = [np.frombuffer(b, np.uint8).copy() for b in blobs]
    (tmp_path / "np.bin").write_bytes(pickle.dumps((arrs, np.array([True, False])), protocol=4))
    vs = load_bin(tmp_path / "np.bin", image_size=None)
    np.testing.assert_array_equal(vs.issame, [True, False])
    np.testing.assert_array_equal(vs.load_image(3), _img(3))
    # a list of numpy bool scalars (np.bool_ pickles through numpy's scalar())
    (tmp_path / "sc.bin").write_bytes(pickle.dumps((blobs, [np.bool_(True), np.bool_(False)]), protocol=2))
    np.testing.assert_array_equal(load_bin(tmp_path / "sc.bin").issame, [True, False])
    # Python 2 style: str objects holding binary data need encoding='bytes' (insightface fallback)
    py2 = b"(]q\x00(U\x04\xff\xd8\xff\x00q\x01U\x01\x80q\x02e]q\x03\x88at."
    assert pickletools.dis(py2, out=open(os.devnull, "w")) is None
    obj = safe_loads(py2, "py2.bin", encoding="bytes")
    assert obj == ([b"\xff\xd8\xff\x00", b"\x80"], [True])


class _Evil:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([b"x", _Evil(f"touch {marker}")], [True]), protocol=protocol))
    with pytest.raises(UnsafePickleError) as ei:
        load_bin(path)
    assert str(path) in str(ei.value) and "system" in str(ei.value)
    assert not marker.exists()


def test_other_unsafe_pickles_refused(tmp_path):
    import subprocess

    class Popen:
        def __reduce__(self):
            return (subprocess.Popen, (["true"],))

    class Eval:
        def __reduce__(self):
            return (eval, ("1+1",))

    for i, obj in enumerate([Popen(), Eval(), getattr, os.remove, pickle.Pickler]):
        p = tmp_path / f"bad{i}.bin"
        p.write_bytes(pickle.dumps(([obj, obj], [True])))
        with pytest.raises(UnsafePickleError, match=f"bad{i}.bin"):
            load_bin(p)
    # numpy object arrays can carry arbitrary objects: refused too
    p = tmp_path / "obj.bin"
    p.write_bytes(pickle.dumps((np.array([b"a", b"b"], dtype=object), [True])))
    with pytest.raises(UnsafePickleError, match="object arrays"):
        load_bin(p)
    # garbage is a clear error, not a crash
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01 definitely not a pickle")
    with pytest.raises(UnsafePickleError, match="junk.bin"):
        load_bin(tmp_path / "junk.bin")


def test_bin_structure_errors(tmp_path):
    (tmp_path / "odd.bin").write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(VerificationDataError, match="2 images per pair"):
        load_bin(tmp_path / "odd.bin")
    with pytest.raises(VerificationDataError, match="not found"):
        load_bin(tmp_path / "missing.bin")
    write_bin(tmp_path / "corrupt.bin", [b"\xff\xd8 broken", encode_image(_img(0), ".png")], [False])
    vs = load_bin(tmp_path / "corrupt.bin")
    with pytest.raises(VerificationDataError, match=r"corrupt.bin#image0"):
        list(vs.iter_batches(2))
    assert [s for s, _ in vs.check()] == [f"{tmp_path / 'corrupt.bin'}#image0"]


def test_tiny_bin_claiming_a_huge_size_is_refused_without_allocating(tmp_path, traced_peak):
    # protocol 4: PROTO, FRAME (honest), MARK, EMPTY_LIST, BINBYTES8 "2.3 GB" - 169 bytes in all
    body = b"(]\x8e" + struct.pack("<Q", 2_300_000_000) + b"\xff\xd8" + b"\x00" * 145
    data = b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body
    path = tmp_path / "lfw.bin"
    path.write_bytes(data)
    assert len(data) == 169
    err, peak = traced_peak(lambda: load_bin(path))
    assert isinstance(err, UnsafePickleError), err
    assert str(path) in str(err) and "2300000000" in str(err) and "169 bytes" in str(err)
    assert peak < 5, f"{peak:.0f} MB traced for a 169-byte file"
    # a memo index far beyond the file: the unpickler would size its memo to twice it
    memo = tmp_path / "memo.bin"
    memo.write_bytes(b"\x80\x02]r" + struct.pack("<I", 1 << 24) + b".")
    err, peak = traced_peak(lambda: load_bin(memo))
    assert isinstance(err, UnsafePickleError) and "memo index 16777216" in str(err) and str(memo) in str(err)
    assert peak < 5, f"{peak:.0f} MB traced for a 9-byte file"


def test_pairs_txt_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_bytes(b"1\t1\nJos\xe9\t1\t2\nAnn\t1\tBo\t1\n")  # Latin-1, not UTF-8
    with pytest.raises(VerificationDataError, match=r"pairs\.txt: pairs file is not UTF-8 .*0xe9 at offset 7"):
        parse_pairs_txt(path)
    with pytest.raises(VerificationDataError, match="not UTF-8"):
        load_pairs_txt(path, tmp_path)


def test_scan_images_finds_every_failure_and_size(tmp_path):
    imgs = [_img(0), _img(1, size=20), b"\xff\xd8 broken", _img(3), b"", _img(5, size=20)]
    write_bin(tmp_path / "v.bin", [i if isinstance(i, bytes) else encode_image(i, ".png") for i in imgs],
              [True, False, True])
    scan = load_bin(tmp_path / "v.bin", image_size=None).scan_images()
    assert scan.total == 6 and [s.rsplit("#", 1)[1] for s, _ in scan.bad] == ["image2", "image4"]
    assert scan.size_counts() == {"16x16": 2, "20x20": 2}
    assert scan.examples[(20, 20)].endswith("#image1")
    assert "2 of 6 images are unreadable" in scan.bad_message()
    assert load_bin(tmp_path / "v.bin").scan_images([0, 3]).bad == []


def _lfw_tree(root, names_counts):
    for name, n in names_counts.items():
        for k in range(1, n + 1):
            write_image(root / name / f"{name}_{k:04d}.jpg", _img(hash((name, k)) % 1000))


def test_pairs_txt_with_header(tmp_path):
    root = tmp_path / "lfw"
    _lfw_tree(root, {"Ann": 3, "Bo": 2, "Cy": 1, "Di": 2})
    (tmp_path / "pairs.txt").write_text(
        "2\t2\n"
        "Ann\t1\t2\nBo\t1\t2\n"  # fold 0 genuine
        "Ann\t3\tCy\t1\nBo 2 Di 1\n"  # fold 0 impostor (space separated is accepted)
        "Ann\t2\t3\nDi\t1\t2\n"
        "Cy\t1\tDi\t2\nAnn\t1\tBo\t1\n"
    )
    vs = load_pairs_txt(tmp_path / "pairs.txt", root, image_size=16)
    assert vs.num_pairs == 8
    np.testing.assert_array_equal(vs.issame, [1, 1, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(vs.folds, [0, 0, 0, 0, 1, 1, 1, 1])
    assert vs.num_images == 8  # each file listed once
    a, b = vs.pairs[0]
    assert vs.images.name(a).endswith("Ann/Ann_0001.jpg") and vs.images.name(b).endswith("Ann/Ann_0002.jpg")
    sub = vs.select_folds([1])
    assert sub.num_pairs == 4 and set(sub.folds) == {1}
    summ = vs.summary()
    assert summ["genuine"] == 4 and summ["folds"][1] == {"fold": 1, "genuine": 2, "impostor": 2}


def test_pairs_txt_missing_image_names_file_and_line(tmp_path):
    root = tmp_path / "lfw"
    _lfw_tree(root, {"Ann": 2})
    (tmp_path / "pairs.txt").write_text("Ann 1 2\nAnn 1 7\n")
    with pytest.raises(VerificationDataError) as ei:
        load_pairs_txt(tmp_path / "pairs.txt", root)
    msg = str(ei.value)
    assert "Ann_0007.jpg" in msg and "line 2" in msg and "1 of 3" in msg


def test_pairs_txt_layouts(tmp_path):
    # no header, standard 6000-line layout -> 10 folds of 600 by line order
    lines = [f"P{i}\t1\t2" if (i // 300) % 2 == 0 else f"P{i}\t1\tQ{i}\t1" for i in range(6000)]
    (tmp_path / "std.txt").write_text("\n".join(lines) + "\n")
    pl, folds, info = parse_pairs_txt(tmp_path / "std.txt")
    assert info == {"n_folds": 10, "pairs_per_fold": 600, "header": False}
    assert folds[599] == 0 and folds[600] == 1 and folds[-1] == 9
    assert sum(p.issame for p in pl) == 3000
    # View-1 style single-number header: one fold
    (tmp_path / "dev.txt").write_text("2\nA 1 2\nB 1 3\nA 1 B 2\nC 1 D 1\n")
    _, folds, info = parse_pairs_txt(tmp_path / "dev.txt")
    assert info["n_folds"] == 1 and set(folds) == {0}
    # header that does not match the line count
    (tmp_path / "short.txt").write_text("10\t300\nA 1 2\n")
    with pytest.raises(VerificationDataError, match="found 1 pair lines"):
        parse_pairs_txt(tmp_path / "short.txt")
    (tmp_path / "bad.txt").write_text("A 1 2\nA one 2\n")
    with pytest.raises(VerificationDataError, match=r"bad.txt:2"):
        parse_pairs_txt(tmp_path / "bad.txt")


def test_make_pairs_identity_disjoint_folds():
    labels = np.repeat(np.arange(40), 3)
    pairs, same, folds = make_pairs(labels, n_folds=4, pairs_per_fold=20, seed=1)
    assert len(pairs) == 80 and same.sum() == 40
    np.testing.assert_array_equal(same, labels[pairs[:, 0]] == labels[pairs[:, 1]])
    ids_per_fold = [set(labels[pairs[folds == f]].ravel()) for f in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not ids_per_fold[i] & ids_per_fold[j]
    again = make_pairs(labels, n_folds=4, pairs_per_fold=20, seed=1)
    np.testing.assert_array_equal(again[0], pairs)


def test_contiguous_folds_match_kfold_sizes():
    assert np.bincount(contiguous_folds(6000, 10)).tolist() == [600] * 10
    assert np.bincount(contiguous_folds(23, 10)).tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
