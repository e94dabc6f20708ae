"""``facepriv.evaluate`` and ``facepriv.attack``: the ``facepriv eval verify`` and ``facepriv attack``
commands as Python calls, over the same functions the commands run (``verify`` and its report
writer; ``run_attacks`` and its report writer), so a notebook and the CLI cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["attack", "evaluate"]


def evaluate(
    checkpoints: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    pairs: Mapping[str, str],
    *,
    out: str | os.PathLike[str] | None = None,
    plots: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Verification of each checkpoint on each set, as ``facepriv eval verify`` runs it.

    ``pairs``: ``{name: spec}`` with the ``--pairs`` specs (``"lfw.bin"`` or
    ``"pairs.txt:image_dir"``). ``options``: :func:`facepriv.eval.verify.verify`'s keywords
    (``repetitions``, ``flip``, ``seed``, ``device``, ``resize``, ...). With ``out`` the
    command's files are written there (``metrics.json`` and ``summary.md`` after every result,
    ROC plots at the end). Returns the results document.
    """
    from facepriv.eval.report import write_report
    from facepriv.eval.verify import verify

    ckpts = [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
    on_result = None
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)

        def on_result(doc: dict[str, Any]) -> None:
            write_report(doc, out, plots=False)

    options.setdefault("progress", False)
    results = verify(ckpts, dict(pairs), on_result=on_result, **options)
    if out is not None:
        write_report(results, out, plots=plots)
    return results


def attack(
    target: Any,
    aux: str | os.PathLike[str] | list[str | os.PathLike[str]],
    victims: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    judge: str | None = None,
    image_size: int = 112,
    max_victims: int | None = None,
    max_aux: int | None = None,
    **config: Any,
) -> dict[str, Any]:
    """Reconstruction/linkage attacks on one target, as ``facepriv attack`` runs them.

    ``target``: a checkpoint path (its frontend, secret included, and its model for the
    gradient attack), a :class:`~facepriv.api.Recognizer` / ``FaceRecognizer``, or a frontend
    module. ``aux`` / ``victims``: ``<identity>/<image>`` folders of aligned faces (disjoint
    people). ``judge``: an identity judge spec (``"dlib"``, an ArcFace ``.onnx``, a
    checkpoint) or ``None`` (no identity metrics, no linkage attack). ``config``:
    :class:`~facepriv.eval.attacks.runner.AttackConfig` fields (``attacks``, ``knowledge``,
    ``device``, ...). Returns the run's results; with ``out``, also its grids and files.
    """
    from facepriv.eval.attacks.data import load_attack_inputs
    from facepriv.eval.attacks.runner import AttackConfig, run_attacks
    from facepriv.models import FaceRecognizer

    model = None
    if isinstance(target, (str, os.PathLike)):
        model = FaceRecognizer.load(target)
    elif isinstance(target, FaceRecognizer):
        model = target
    elif hasattr(target, "model") and isinstance(target.model, FaceRecognizer):
        model = target.model
    frontend = model.frontend if model is not None else target
    if not hasattr(frontend, "out_channels"):
        raise TypeError(f"attack target must be a checkpoint path, a recogniser or a frontend, got {type(target).__name__}")
    cfg = AttackConfig(**config)
    judge_obj = None
    if judge is not None:
        from facepriv.judges import build_judge

        judge_obj = build_judge(judge, device=cfg.device)
    inputs = load_attack_inputs(aux, victims, image_size=image_size, max_victims=max_victims, max_aux=max_aux,
                                seed=cfg.seed, progress=cfg.progress)
    return run_attacks(frontend, inputs["aux"], inputs["victims"], judge=judge_obj, config=cfg, out=out, model=model)
