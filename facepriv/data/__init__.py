"""Face data pipeline: readers, writers, verification protocols, synthetic faces, alignment.

Everything returns images in the frontend convention (RGB, ``3 x H x W`` float in [0, 1],
or uint8 on request) so any source can feed any frontend:

* ``ImageFolderDataset``: ``root/<identity>/<image>`` folders, identity subsets/partitions,
  corrupt-file scan and run-time substitution.
* ``RecordIODataset`` / ``RecordIOWriter`` / ``pack_folder``: insightface ``train.rec`` and
  ``train.idx`` without mxnet.
* ``load_bin`` / ``load_pairs_txt`` -> ``VerificationSet``: insightface ``.bin`` (safe
  unpickling) and LFW ``pairs.txt`` protocols.
* ``SyntheticFaces`` / ``write_folder``: deterministic procedural identities for demos/tests.
* ``norm_crop`` / ``align_folder`` / detectors: 5-point ArcFace alignment.

Only numpy, torch and OpenCV are imported here; insightface is imported lazily by
``InsightFaceDetector``.
"""

from __future__ import annotations

from .align import (
    ARCFACE_TEMPLATE,
    AlignReport,
    align_folder,
    apply_affine,
    estimate_norm,
    norm_crop,
    template_for,
    umeyama_similarity,
)
from .detectors import Detection, FaceDetector, InsightFaceDetector, YuNetDetector, load_detector, select_face
from .errors import (
    AlignmentError,
    DataError,
    ImageDecodeError,
    RecordIOError,
    TruncatedRecordError,
    UnsafePickleError,
    VerificationDataError,
)
from .folders import ImageFolderDataset, ScanReport, list_identity_folders, partition_identities, split_identities
from .images import IMAGE_EXTENSIONS, decode_image, encode_image, read_image, to_tensor, write_image
from .recordio import (
    IRHeader,
    PackReport,
    RecordIODataset,
    RecordIOReader,
    RecordIOWriter,
    pack_folder,
    pack_images,
    pack_payload,
    rebuild_index,
    unpack_payload,
    write_dataset,
)
from .runtime import FailureLog, ResizeLog
from .safe_pickle import safe_load, safe_loads
from .synthetic import (
    FaceRenderer,
    SyntheticFaces,
    identity_name,
    identity_params,
    image_params,
    render_face,
    render_unaligned,
    write_folder,
)
from .verification import (
    ArrayImageSource,
    EncodedImageSource,
    FileImageSource,
    ImageScan,
    VerificationImages,
    VerificationSet,
    contiguous_folds,
    load_bin,
    load_pairs_txt,
    make_pairs,
    pairs_txt_for_folder,
    parse_pairs_txt,
    write_bin,
    write_pairs_txt,
)

__all__ = [
    "ARCFACE_TEMPLATE",
    "AlignReport",
    "AlignmentError",
    "ArrayImageSource",
    "DataError",
    "Detection",
    "EncodedImageSource",
    "FaceDetector",
    "FaceRenderer",
    "FailureLog",
    "FileImageSource",
    "IMAGE_EXTENSIONS",
    "IRHeader",
    "ImageDecodeError",
    "ImageFolderDataset",
    "ImageScan",
    "InsightFaceDetector",
    "PackReport",
    "RecordIODataset",
    "RecordIOError",
    "RecordIOReader",
    "RecordIOWriter",
    "ResizeLog",
    "ScanReport",
    "SyntheticFaces",
    "TruncatedRecordError",
    "UnsafePickleError",
    "VerificationDataError",
    "VerificationImages",
    "VerificationSet",
    "YuNetDetector",
    "align_folder",
    "apply_affine",
    "contiguous_folds",
    "decode_image",
    "encode_image",
    "estimate_norm",
    "identity_name",
    "identity_params",
    "image_params",
    "list_identity_folders",
    "load_bin",
    "load_detector",
    "load_pairs_txt",
    "make_pairs",
    "norm_crop",
    "pack_folder",
    "pack_images",
    "pack_payload",
    "pairs_txt_for_folder",
    "parse_pairs_txt",
    "partition_identities",
    "read_image",
    "rebuild_index",
    "render_face",
    "render_unaligned",
    "safe_load",
    "safe_loads",
    "select_face",
    "split_identities",
    "template_for",
    "to_tensor",
    "umeyama_similarity",
    "unpack_payload",
    "write_bin",
    "write_dataset",
    "write_folder",
    "write_image",
    "write_pairs_txt",
]
