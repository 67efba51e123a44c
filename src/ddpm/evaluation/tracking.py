"""Quality measured while a run trains (``ddpm train --eval-every N --eval-samples n``): the evaluator the CLI hands
to the trainer (a seam: training never imports this layer).

Every evaluation draws the same n samples (base seed 1, sample k from ``sample_seed(1, k)``) from the EMA weights
with the commands' default sampling (:func:`draw_for_quality`, what ``ddpm eval quality RUN`` draws), and measures
the run's quality metric:

* on the embedded digits, the project's classifier FD and KID against the 500 test digits
  (:mod:`ddpm.evaluation.quality`), and for a class-conditional run the share drawn as the class asked for;
* on other data, Inception FD through torch-fidelity (``ddpm[fid]``), refused at start when it or its weights are
  missing.

The real data's features are computed once per run and cached in ``RUN/eval/``.  Each row says the extractor, its
weights' sha256, n, the seed and the sampling.  FD at small n is biased upwards and is not comparable with published
50,000-sample figures (docs/tracking.md).
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.datasets import EMBEDDED
from ..data.embedded import DIGIT_CLASSES
from ..runtime.atomic import atomic_write_path
from ..sampling.generate import generate
from .classifier import load_classifier, prepared_digits
from .fid import FidUnavailable, _reference_images, _UInt8RGB, check_fid_available, inception_weights_path
from .quality import _outputs, classifier_outputs, conditional_accuracy, fd_from_features, kid

__all__ = ["EVAL_SEED", "draw_for_quality", "make_evaluator", "sha256_of"]


#: the base seed of the drawn samples: ``ddpm eval quality``'s default, so that ``ddpm eval quality RUN -n n`` repeats
#: the last row
EVAL_SEED = 1


def draw_for_quality(run, n: int, seed: int = EVAL_SEED, batch_size: int = 64, progress: bool = False):
    """(uint8 images, the labels they were drawn as or None, the sampling as a dict): ``n`` samples of ``run`` (a
    LoadedRun) with the commands' default sampling and classes, as ``ddpm eval quality RUN`` draws them."""
    drawn = generate(run, n, seed=seed, batch_size=batch_size, progress=progress)  # the one default draw
    return drawn.images, drawn.labels, asdict(drawn.sampling)


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_evaluator(config, run_dir, *, n: int, seed: int = EVAL_SEED):
    """The callable ``evaluate(run) -> dict`` for a run of ``config`` (a TrainConfig), checked and prepared before
    any training: the digit classifier loaded (trained once if missing) and the test digits' features cached in
    ``RUN/eval/``, or torch-fidelity and its Inception weights found (:class:`~ddpm.evaluation.fid.FidUnavailable`
    otherwise, one line that says how to get them)."""
    if n < 2:
        raise ValueError(f"eval_samples {n}: FD and KID need at least 2 samples")
    if config.data.source == "digits":
        return _digits_evaluator(run_dir, n, seed)
    return _inception_evaluator(config, run_dir, n, seed)


def _digits_evaluator(run_dir, n, seed):
    model, info = load_classifier()
    digest = sha256_of(info["path"])
    cache = Path(run_dir) / "eval" / f"reference_digits_test_{info['key']}.safetensors"
    extractor = {"extractor": f"digit classifier {info['key']}", "weights_sha256": digest, "reference": "digits test"}
    held = {}

    def evaluate(run) -> dict:
        if "ref" not in held:  # once per run, at the first evaluation (the run folder exists by then)
            held["ref"] = _reference_features(model, cache)
        ref = held["ref"]
        images, labels, sampling = draw_for_quality(run, n, seed)
        feats, logits = classifier_outputs(model, images)
        kid_mean, kid_std = kid(feats, ref, 100, 1000, 0)  # quality_report's KID subsets
        row = {"fd": fd_from_features(feats, ref), "kid": kid_mean, "kid_std": kid_std}
        if labels is not None and run.config.class_names == DIGIT_CLASSES:
            row["class_accuracy"] = conditional_accuracy(logits, labels)["accuracy"]
        return {"metrics": row, **extractor, "reference_n": len(ref), "n": n, "seed": seed, "sampling": sampling}
    return evaluate


def _reference_features(model, cache: Path) -> torch.Tensor:
    """The classifier features of the 500 embedded test digits, read from ``cache`` or computed and written there."""
    if cache.is_file():
        return load_file(str(cache))["features"]
    ref, _ = _outputs(model, prepared_digits("test")[0])  # as ddpm eval quality measures the reference
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(cache) as tmp:
        save_file({"features": ref.contiguous()}, str(tmp))
    return ref


def _inception_evaluator(config, run_dir, n, seed):
    source = config.data.source
    embedded = source in EMBEDDED
    if not embedded and not Path(source).exists():
        raise FidUnavailable(f"{source}: the training data is not here to measure FD against; train where it is")
    fidelity = check_fid_available(None if embedded else source)
    weights = inception_weights_path()
    extractor = {"extractor": "inception-v3 (torch-fidelity)", "weights_sha256": sha256_of(weights),
                 "reference": source}
    cache_root = Path(run_dir) / "eval" / "fidelity-cache"

    def evaluate(run) -> dict:
        images, _, sampling = draw_for_quality(run, n, seed)
        real = _reference_images(source, images)
        m = fidelity.calculate_metrics(input1=_UInt8RGB(images), input2=_UInt8RGB(real), fid=True,
                                       feature_extractor_weights_path=str(weights), cuda=torch.cuda.is_available(),
                                       verbose=False, cache=True, cache_root=str(cache_root),
                                       input2_cache_name=f"reference-{images.shape[-1]}px")
        return {"metrics": {"fd": float(m["frechet_inception_distance"])}, **extractor, "reference_n": len(real),
                "n": n, "seed": seed, "sampling": sampling}
    print(f"note: FD on Inception features of {n} samples every evaluation (reference features cached in "
          f"{cache_root})", file=sys.stderr)
    return evaluate

