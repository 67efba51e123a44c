"""``ddpm eval nll | quality | fid`` and ``ddpm study noise``: flags -> calls into evaluation/reports.py and
evaluation/study.py."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.datasets import EMBEDDED, DataConfig, open_images
from ..data.embedded import DIGIT_CLASSES, SPLITS
from ..data.files import native_shape
from ..data.labels import load_labels
from ..evaluation.fid import FidUnavailable, check_fid_available, run_fid
from ..evaluation.reports import (
    load_sample_labels,
    load_samples,
    nll_summary,
    quality_summary,
    run_nll,
    run_quality,
)
from ..evaluation.study import measures_quality, noise_study
from ..sampling.generate import generate, load_run
from .args import (
    add_device_and_progress,
    add_guidance,
    add_sampler_and_steps,
    add_sampling_variance,
    add_spacing,
    add_steps,
    add_weights,
    at_least,
    sampling_from_args,
)
from .errors import (
    UserError,
    check_guidance_has_classes,
    check_out_dir,
    guidance_flags,
    refuse_file_as_folder,
    sampling_errors,
)

__all__ = ["register", "EVAL_EXAMPLES", "STUDY_EXAMPLES"]

EVAL_EXAMPLES = """examples:
  ddpm eval nll runs/digits                     # exact bound over all T terms on the 500 held-out digits
  ddpm eval nll runs/digits --quick 50 -n 100   # stratified estimate from 50 timesteps per image
  ddpm eval nll runs/faces --data faces_test.npz --quick 50   # a run trained on a folder: its held-out images
  ddpm eval nll runs/digits-cond --class-cond --quick 50   # bound on log p(x | y) with the held-out labels
  ddpm eval quality runs/digits -n 1000 --sampler ddim --steps 50
  ddpm eval quality runs/digits-cond -n 1000 --sampler ddim --steps 50 --guidance 1   # + conditional accuracy
  ddpm eval quality runs/digits/samples/ddpm/samples.npz
  ddpm eval fid runs/faces/samples/ddpm/samples.npz --ref path/to/real/images
"""

STUDY_EXAMPLES = """examples:
  ddpm study noise runs/digits                  # beta_t vs beta~_t vs no noise, same model, same x_T
"""


def _group(sub, name: str, help: str, epilog: str):
    """A command with its own required sub-commands (``ddpm eval nll``), every level showing ``epilog``."""
    parser = sub.add_parser(name, help=help, description=help, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    inner = parser.add_subparsers(dest="what", metavar="WHAT")
    inner.required = True
    return inner


def register(sub) -> None:
    evsub = _group(sub, "eval", "bits/dim of the variational bound (eq. 5) and sample-quality metrics",
                   EVAL_EXAMPLES)

    nll = evsub.add_parser("nll", help="negative log-likelihood bound in bits/dim on held-out images",
                           description="The variational bound of eq. 5 (L_T + KL terms + L_0) in bits/dim, exact over "
                                       "all T terms or estimated from K stratified timesteps per image.",
                           epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    nll.add_argument("run", help="run folder")
    nll.add_argument("--split", default="test", choices=SPLITS,
                     help="split of the run's dataset (default: %(default)s, held out from training)")
    nll.add_argument("--data", default=None,
                     help="other images to bound (a folder or .npy/.npz, all of it), e.g. the held-out images of a run "
                          "trained on a folder (default: the run's own data, --split)")
    nll.add_argument("--data-cache", metavar="DIR", default=None,
                     help="where a folder's or a table's images are decoded once and memory-mapped from, as for "
                          "ddpm train (default: $XDG_CACHE_HOME/ddpm, else ~/.cache/ddpm)")
    nll.add_argument("-n", "--num", type=at_least(1), default=None, help="evaluate only the first N images")
    nll.add_argument("--quick", type=at_least(1), default=None, metavar="K",
                     help="estimate the sum from K stratified timesteps per image (unbiased, with its standard error)")
    nll.add_argument("--batch-size", type=at_least(1), default=250,
                     help="images per forward pass (default: %(default)s)")
    nll.add_argument("--seed", type=int, default=0, help="seed of the x_t draws (default: 0)")
    add_weights(nll, "the EMA weights or the raw trained ones")
    nll.add_argument("--class-cond", action="store_true",
                     help="class-conditional runs: the bound on -log p(x | y) with the images' own labels (without it, "
                          "such a run's bound is that of its unconditional model, label 'no class')")
    nll.add_argument("--out", default=None, help="output folder (default: RUN/eval; RUN/eval/data_NAME with --data; "
                                                 "a class_cond folder inside with --class-cond)")
    add_device_and_progress(nll)
    nll.set_defaults(func=_run_nll)

    qual = evsub.add_parser("quality", help="classifier Frechet distance, KID and class histogram (digits)",
                            description="Offline sample quality of grey 32x32 digits: Frechet distance and KID in the "
                                        "features of a small digit classifier, its class histogram, and the same "
                                        "numbers for real digits (the floor).  Samples with class labels (a "
                                        "class-conditional run's, drawn here with every class in turn, or a "
                                        "samples.npz holding 'labels') also get the conditional accuracy: the "
                                        "share the classifier assigns to the digit asked for, overall and per class.",
                            epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    qual.add_argument("source", help="a run folder (samples are drawn) or a samples.npz / .npy of uint8 images")
    _add_sampling_flags(qual, default_n=1000)
    qual.add_argument("--out", default=None,
                      help="output folder (default: RUN/eval for a run, the folder of a samples file, "
                           "FOLDER_eval beside a folder of images)")
    qual.set_defaults(func=_run_quality)

    fid = evsub.add_parser("fid", help="standard Inception FID through torch-fidelity (optional extra)",
                           description="Inception FID through torch-fidelity (pip install 'ddpm[fid]'), with the "
                                       "Inception weights on disk.  Prints the FID; writes no file.",
                           epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    fid.add_argument("source", help="a run folder (samples are drawn) or a samples.npz / .npy of uint8 images")
    fid.add_argument("--ref", required=True, help="real images: a folder, .npy/.npz, or 'digits' (test split)")
    _add_sampling_flags(fid, default_n=1000)
    fid.set_defaults(func=_run_fid)

    stsub = _group(sub, "study", "studies: why Algorithm 2 adds noise", STUDY_EXAMPLES)
    noise = stsub.add_parser("noise", help="sample with sigma^2 = beta_t, beta~_t and 0 from the same x_T",
                             description="Why Algorithm 2 adds sigma_t z: the same network and the same x_T sampled "
                                         "as ddpm sample draws (every class in turn on a class-conditional run), "
                                         "with its own sigma_t, sigma^2 = beta_t, beta~_t and without the noise "
                                         "term.",
                             epilog=STUDY_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    noise.add_argument("run", help="run folder")
    noise.add_argument("-n", "--num", type=at_least(1), default=64, help="samples per variant (default: %(default)s)")
    noise.add_argument("--seed", type=int, default=0, help="base seed of x_T and of every z (default: 0)")
    noise.add_argument("--batch-size", type=at_least(1), default=64, help="samples per batch (default: 64)")
    add_steps(noise)
    add_spacing(noise)
    noise.add_argument("--no-quality", action="store_true", help="skip the classifier FD")
    noise.add_argument("--out", default=None, help="output folder (default: RUN/study)")
    add_device_and_progress(noise)
    noise.set_defaults(func=_run_noise_study)


def _add_sampling_flags(p, default_n):
    p.add_argument("-n", "--num", type=at_least(2), default=default_n,
                   help="samples to draw from a run (default: %(default)s)")
    add_sampler_and_steps(p)
    add_spacing(p)
    add_sampling_variance(p)
    p.add_argument("--seed", type=int, default=1, help="base seed of the drawn samples (default: %(default)s)")
    p.add_argument("--batch-size", type=at_least(1), default=250,
                   help="samples per batch when drawing from a run (default: %(default)s)")
    add_guidance(p, "of the samples drawn, every class in turn (default: 0, purely conditional, one network pass "
                    "a step)")
    add_device_and_progress(p)


def _is_run(src: Path) -> bool:
    return src.is_dir() and (src / "config.json").is_file()


def _default_out(src: Path) -> Path:
    """Where a metric of ``src`` goes by default: RUN/eval for a run, the folder of a samples file, and beside a
    folder of images (FOLDER_eval), so that the folder keeps only its images."""
    src = src.absolute()  # "." has no name to put "_eval" after
    if _is_run(src):
        return src / "eval"
    return src.with_name(src.name + "_eval") if src.is_dir() else src.parent


def _images_from(args, native: bool = False, ready=lambda: None):
    """(uint8 (N, C, H, W) images, their class labels or None): drawn from a run folder (a class-conditional
    run's with every class in turn and ``--guidance``), or read from saved samples (with the labels a samples.npz
    holds).  Saved samples become grey 32x32 digits for the classifier, or keep their own shape with ``native``.
    ``ready()`` is called once the request has passed every check, before the sampling (the output folder's check
    goes there)."""
    src = Path(args.source)
    given = guidance_flags(args)
    if _is_run(src):
        sampling = sampling_from_args(args)
        run = load_run(src, device=args.device)
        check_guidance_has_classes(given, run, src)
        with sampling_errors():
            sampling = sampling.for_run(run)  # a conditional run: every class in turn
        names = run.config.class_names
        if not native and run.config.data.source != "digits":
            _note_not_digits(f"{src} was trained on {run.config.data.source}")
        ready()
        drawn = generate(run, args.num, sampling, seed=args.seed, batch_size=args.batch_size,
                         progress=not args.no_progress)
        return drawn.images, (drawn.labels if names == DIGIT_CLASSES else None)
    given += [f"--{flag} {value}" for flag, value in (("variance", args.variance), ("spacing", args.spacing))
              if value is not None]
    if given:
        raise UserError(f"{given[0]} applies to samples drawn from a run folder; {src} holds samples already "
                        f"drawn; drop {given[0].split()[0]}")
    if src.exists():
        channels, size = native_shape(src)
        if not native and (channels, size) != (1, 32):
            _note_not_digits(f"{src} holds {'colour' if channels == 3 else 'grey'} {size}-pixel images")
        images = load_samples(src, None, None) if native else load_samples(src)
        if len(images) < 2:
            raise UserError(f"{src}: holds {len(images)} image; the metrics need at least 2")
        labels = load_sample_labels(src)
        if labels is not None and (labels.shape != (len(images),) or labels.min() < 0 or labels.max() > 9):
            raise UserError(f"{src}: its labels are not one digit 0-9 per image ({tuple(labels.shape)} labels for "
                            f"{len(images)} images); the conditional accuracy needs the digit each was drawn as")
        ready()
        return images, labels
    raise UserError(f"{src}: no such run folder or samples file")


def _note_not_digits(what: str) -> None:
    print(f"note: {what}; the classifier FD and KID compare grey 32x32 images with the embedded MNIST test digits, "
          "so they measure closeness to those digits", file=sys.stderr)


def _run_nll(args) -> int:
    refuse_file_as_folder(args.out, "--out")
    run = load_run(args.run, which=args.weights, device=args.device)
    T = run.schedule.num_timesteps
    if args.quick is not None and args.quick > T - 1:
        raise UserError(f"--quick takes 1 to T - 1 = {T - 1} strata for this run, got {args.quick}")
    trained = run.config.data
    if args.data is not None:
        split = args.split if args.data in EMBEDDED else "all"  # a folder or file has no splits
        dcfg = DataConfig.from_dict({**trained.to_dict(), "source": args.data, "split": split, "hflip": False})
    elif trained.source not in EMBEDDED and args.split == "test":
        raise UserError(f"{args.run} was trained on {trained.source}, which has no held-out split; pass "
                          "--data HELD_OUT_IMAGES, or --split all for the bound on the training images")
    else:
        dcfg = DataConfig.from_dict({**trained.to_dict(), "split": args.split, "hflip": False})
        if args.split != "train" and trained.split != "train":
            print(f"note: {args.run} was trained on the {trained.split} split of {trained.source}, so the "
                  f"{args.split} images are not held out", file=sys.stderr)
    labels = _nll_labels(args, run, dcfg) if args.class_cond else None
    x0 = open_images(dcfg, args.data_cache)
    if args.num is not None:
        x0, labels = x0[: args.num], None if labels is None else labels[: args.num]
    if len(x0) == 0:
        raise UserError(f"{args.run}: the {args.split} split is empty")
    # another data source's bound goes to a folder of its own, so it never replaces the run's own; so does p(x | y)
    default_out = (Path(args.run) / "eval" / ("" if args.data is None else f"data_{Path(args.data).stem}")
                   / ("class_cond" if args.class_cond else ""))
    out = check_out_dir(args.out or default_out)

    def f(x, t, y=None):  # full precision: the bound's smallest terms need it
        return run.model(x, t, y).float()
    result = run_nll(f, run.schedule, x0, out, variance=run.config.variance, quick_k=args.quick,
                     batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress, device=run.device,
                     labels=labels)
    print(nll_summary(result))
    how = (", with their class labels" if args.class_cond else
           "; the run's 'no class' model (--class-cond: the bound on -log p(x | y))" if run.config.class_names else "")
    print(f"  on {len(x0)} images: {dcfg.source}, {dcfg.split} split{how}")
    print(f"written: {out / 'nll.json'}, {out / 'nll_terms.png'}")
    return 0


def _run_quality(args) -> int:
    src = Path(args.source)
    out = Path(args.out or _default_out(src))
    images, labels = _images_from(args, ready=lambda: check_out_dir(out))
    # one report per samples file, so that two files in one folder keep their own (samples_quality.json, ...)
    name = f"{src.stem}_quality.json" if src.is_file() else "quality.json"
    result = run_quality(images, out, name=name, labels=labels)
    print(quality_summary(result))
    print(f"written: {out / name}")
    return 0


def _nll_labels(args, run, dcfg: DataConfig):
    """The class labels of the images ``eval nll --class-cond`` bounds, checked against the run's classes."""
    names = run.config.class_names
    if names is None:
        raise UserError(f"--class-cond: {args.run} is an unconditional run (trained without class labels), so it "
                        "has no log p(x | y) to bound; drop --class-cond")
    labels, found = load_labels(DataConfig.from_dict({**dcfg.to_dict(), "class_cond": True, "class_names": None}))
    if tuple(found) != tuple(names):
        raise UserError(f"--class-cond: {dcfg.source} holds the classes {', '.join(found)}, but {args.run} was "
                        f"trained on {', '.join(names)}; bound images of the run's own classes")
    return labels


def _run_fid(args) -> int:
    try:
        check_fid_available(args.ref)  # before drawing any sample
    except FidUnavailable as e:
        raise UserError(str(e)) from None
    images, _ = _images_from(args, native=True)
    try:
        result = run_fid(images, args.ref)
    except FidUnavailable as e:
        raise UserError(str(e)) from None
    print(f"FID {result['fid']:.3f} ({result['n_generated']} generated vs {result['n_reference']} real images)")
    return 0


def _run_noise_study(args) -> int:
    refuse_file_as_folder(args.out, "--out")
    sampling = sampling_from_args(args)
    run = load_run(args.run, device=args.device)
    with sampling_errors():
        sampling = sampling.for_run(run)  # what ddpm sample draws; the study varies its sigma_t
    if args.num < 2 and not args.no_quality and measures_quality(run.config):
        raise UserError(f"-n {args.num}: the classifier FD needs at least 2 samples; pass -n 2 or more, "
                          "or --no-quality")
    if not args.no_quality and measures_quality(run.config) and args.num < 50:
        print(f"note: -n {args.num}: an FD from so few samples per variant is rough; only large gaps between the "
              "rows mean something (default: 64)", file=sys.stderr)
    if not args.no_quality and not measures_quality(run.config):
        print(f"note: {args.run} was not trained on the grey 32x32 embedded digits, so the study measures pixel "
              "variance only, not the classifier FD", file=sys.stderr)
    out = check_out_dir(args.out or Path(args.run) / "study")
    results = noise_study(run, out, n=args.num, seed=args.seed, batch_size=args.batch_size,
                          quality=not args.no_quality, progress=not args.no_progress, sampling=sampling)
    print(f"{'variant':<34} {'pixel var':>10} {'classifier FD':>14}")
    for name, r in results.items():
        fd = f"{r['classifier_fd']:.2f}" if "classifier_fd" in r else "-"
        print(f"{name:<34} {r['pixel_variance_mean']:>10.4f} {fd:>14}")
    print(f"written: {out / 'noise_study.png'}, {out / 'noise_study.json'}")
    return 0
