"""Scoring and selection (the command and its flags are described in :mod:`rank_select.args`)."""
from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from common.cli.errors import UserError, bar_vanishes_on_error
from common.cli.flags import device_spec, workers_from_args
from common.cli.paths import check_output_dir, check_output_file
from common.compute.device import device_from_args
from common.compute.distributed import all_gather_object, cleanup, dist_info, init_distributed
from common.data.datasets import check_class_count, get_dataset
from common.data.imagefolder import ImageFolder, make_samples
from common.data.transforms import val_transform
from common.run.atomic import atomic_dir, atomic_path, atomic_torch_save, atomic_write_json
from common.run.manifest import build_manifest, read_manifest, sha256_file, write_manifest
from common.run.safe_load import safe_torch_load
from common.run.state import RunState, check_not_inside, check_output, fingerprint
from common.train.seed import seed_everything
from models import capture_penultimate
from rank_select.args import FEATURE_CRITERIA, get_args_parser  # torch-free parser, parsed first
from rank_select.ranker import Ranker, forward_logits, load_ranker, model_path_from_args
from rank_select.select import check_class_size, rank_width, select_indices

CSV_COLUMNS = ["path", "class", "label", "score", "loss", "margin", "pred", "el2n"]
METRICS = ["score", "loss", "margin", "pred", "el2n"]
STAGE = "rank_select"
# Arguments that do not change the selection (besides common.run.state.NOT_RESULT).
NOT_RESULT = {"output_path", "ranking_file", "rerank", "store_rank_file", "batch_size"}


# ----------------------------------------------------------------------------- scoring (tensors)

def score_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image ranking metrics from logits ``[N, C]`` and labels ``[N]`` (float32 maths)."""
    logits = logits.float()
    labels = labels.long().view(-1, 1)
    logp = F.log_softmax(logits, dim=1)
    prob = logp.exp()
    true_logit = logits.gather(1, labels).squeeze(1)
    others = logits.scatter(1, labels, float("-inf"))
    onehot = torch.zeros_like(prob).scatter_(1, labels, 1.0)
    return {
        "score": prob.gather(1, labels).squeeze(1),
        "loss": -logp.gather(1, labels).squeeze(1),
        "margin": true_logit - others.max(dim=1).values,
        "pred": logits.argmax(dim=1),
        "el2n": (prob - onehot).norm(dim=1),
    }


def _fingerprint(ranker: Ranker, rel_paths: Sequence[str], labels: Sequence[int]) -> str:
    h = hashlib.sha256()
    h.update(sha256_file(ranker.path).encode())
    h.update(repr((ranker.input_size, ranker.mean, ranker.std)).encode())
    for p, y in zip(rel_paths, labels):
        h.update(f"{p}\t{y}\n".encode())
    return h.hexdigest()


def forward_scores(ranker: Ranker, x: torch.Tensor, features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float32 logits and, with ``features``, the penultimate features (the classifier's input)
    of the same forward pass (fp16 autocast on CUDA only, as :func:`forward_logits`)."""
    if not features:
        return forward_logits(ranker, x), None
    with capture_penultimate(ranker.model) as captured:
        logits = forward_logits(ranker, x)
    return logits, captured["f"].float()


def score_dataset(ranker: Ranker, dataset: ImageFolder, batch_size: int, workers: int,
                  partial_path: str | os.PathLike | None = None, save_every: float = 120.0,
                  fingerprint: str = "", on_batch: Callable[[int], None] | None = None,
                  features: bool = False) -> dict[str, np.ndarray]:
    """Score every image of ``dataset`` (in order); returns metric arrays of length ``len(dataset)``.

    With ``features``, ``out["features"]`` is the ``[N, D]`` float32 matrix of the ranker's
    penultimate features, from the same forward pass (herding and k-center select on it).
    With ``partial_path``, progress (scores and features) is saved every ``save_every`` seconds
    and a later call with the same ``fingerprint`` (ranker, transform and file list) continues
    from it; the result equals an uninterrupted run.
    """
    n = len(dataset)
    keys = METRICS + (["features"] if features else [])
    fingerprint = f"{fingerprint}|features" if features else fingerprint
    done: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    start = 0
    if partial_path is not None and Path(partial_path).is_file():
        state = torch.load(partial_path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint and 0 < state["done"] <= n:
            start = int(state["done"])
            done = {k: [state[k]] for k in keys}
            print(f"resuming scoring at image {start}/{n} from {partial_path}", file=sys.stderr)
    pin = ranker.device.type == "cuda"
    loader = DataLoader(Subset(dataset, range(start, n)), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=pin, persistent_workers=False,
                        prefetch_factor=4 if workers > 0 else None)
    count, last_save = start, time.monotonic()

    def save() -> None:
        state = {k: torch.cat(v) for k, v in done.items()}
        atomic_torch_save({"fingerprint": fingerprint, "done": count, **state}, partial_path)

    with tqdm(total=n, initial=start, desc="ranking", unit="img", dynamic_ncols=True) as bar, \
            bar_vanishes_on_error(bar):
        for batch_idx, (x, y) in enumerate(loader):
            logits, feats = forward_scores(ranker, x, features)
            metrics = score_logits(logits, y.to(ranker.device))
            if features:
                metrics["features"] = feats
            for k in keys:
                done[k].append(metrics[k].cpu())
            count += len(y)
            bar.update(len(y))
            if partial_path is not None and count < n and time.monotonic() - last_save >= save_every:
                save()
                last_save = time.monotonic()
            if on_batch is not None:
                on_batch(batch_idx)
    out = {k: torch.cat(v).numpy() if v else np.zeros(0) for k, v in done.items()}
    if partial_path is not None and Path(partial_path).is_file():
        Path(partial_path).unlink()
    return out


# ----------------------------------------------------------------------------- ranking CSV

def relative_paths(root: str | os.PathLike, samples: Sequence[tuple[str, int]]) -> list[str]:
    root = Path(root)
    return [Path(p).relative_to(root).as_posix() for p, _ in samples]


def ranking_frame(rel_paths: Sequence[str], classes: Sequence[str], labels: Sequence[int],
                  metrics: dict[str, np.ndarray]) -> pd.DataFrame:
    """The CSV table: one row per image, sorted by class then score descending (ties: file order)."""
    df = pd.DataFrame({"path": list(rel_paths), "class": [classes[y] for y in labels],
                       "label": np.asarray(labels, dtype=np.int64)})
    for k in METRICS:
        df[k] = metrics[k]
    df["pred"] = df["pred"].astype(np.int64)
    order = np.lexsort((-df["score"].to_numpy(), df["label"].to_numpy()))  # stable: last key is primary
    return df.iloc[order].reset_index(drop=True)[CSV_COLUMNS]


def write_ranking(df: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.8g")


def read_ranking(path: str | os.PathLike) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"path": str, "class": str})
    except Exception as exc:
        raise UserError(f"{path}: not a readable ranking CSV ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    df = df.drop(columns=[c for c in df.columns if c.startswith("Unnamed:")])
    if "path" not in df.columns and "img_path" in df.columns:  # the released data_selection.py's CSV
        df = df.rename(columns={"img_path": "path"})
    missing = [c for c in ("path", "class", "score") if c not in df.columns]
    if missing:
        raise UserError(f"{path}: ranking CSV lacks column(s) {', '.join(missing)}; pass --rerank to re-score")
    score = pd.to_numeric(df["score"], errors="coerce")
    bad = ~np.isfinite(score.to_numpy(dtype=np.float64))
    if bad.any():
        raise UserError(f"{path}: {int(bad.sum())} row(s) have a missing or non-finite score (e.g. "
                        f"{df['path'].iloc[int(np.argmax(bad))]}: {df['score'].iloc[int(np.argmax(bad))]}); "
                        f"a selection from it would be arbitrary; pass --rerank to re-score")
    df["score"] = score
    return df


def check_ranking_matches(df: pd.DataFrame, csv_path: str | os.PathLike, data_root: str | os.PathLike,
                          classes: Sequence[str], rel_paths: Sequence[str]) -> None:
    """The CSV must list exactly the data root's files and classes, else a one-line error."""
    hint = "pass --rerank to score this data root"
    csv_classes = sorted(set(df["class"]))
    if csv_classes != sorted(classes):
        only_csv = sorted(set(csv_classes) - set(classes))
        only_data = sorted(set(classes) - set(csv_classes))
        raise UserError(f"{csv_path}: ranking file belongs to another data root: its classes differ from "
                        f"{data_root} (CSV only: {only_csv[:3]}, data only: {only_data[:3]}); {hint}")
    csv_paths, data_paths = set(df["path"]), set(rel_paths)
    if len(df) != len(csv_paths) or csv_paths != data_paths:
        missing = sorted(data_paths - csv_paths)
        extra = sorted(csv_paths - data_paths)
        example = (missing or extra or ["duplicate rows"])[0]
        raise UserError(f"{csv_path}: ranking file belongs to another data root: {len(missing)} of the "
                        f"{len(data_paths)} files in {data_root} are missing from it and it lists {len(extra)} "
                        f"others (e.g. {example}); {hint}")
    wrong_folder = df["path"].str.split("/").str[0] != df["class"]
    if wrong_folder.any():
        raise UserError(f"{csv_path}: row {df['path'][wrong_folder].iloc[0]} has class "
                        f"{df['class'][wrong_folder].iloc[0]}; {hint}")
    if "label" in df.columns:
        expected = df["class"].map({c: i for i, c in enumerate(classes)})
        if (df["label"] != expected).any():
            raise UserError(f"{csv_path}: labels do not follow the sorted class folders of {data_root}; {hint}")


def data_fingerprint(data_root: str | os.PathLike, rel_paths: Sequence[str]) -> str:
    """sha256 of every file's relative path, size and modification time: binds a ranking to the
    data's content, not only to its file names (a file replaced under the same name changes it)."""
    h = hashlib.sha256()
    root = Path(data_root)
    for p in rel_paths:
        st = os.stat(root / p)
        h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def check_ranking_content(csv_path: Path, data_root: Path, current_fp: Callable[[], str]) -> None:
    """A ranking scored here records the data fingerprint beside it; the files must still be those
    (``current_fp()``: the data's :func:`data_fingerprint` now)."""
    side = read_manifest(sidecar_path(csv_path)) if sidecar_path(csv_path).is_file() else None
    recorded = (side or {}).get("data_fingerprint")
    if recorded is None:
        print(f"warning: {csv_path} has no record of the files it scored (no {sidecar_path(csv_path).name}); "
              f"reusing it on matching file names only (pass --rerank to score {data_root})", file=sys.stderr)
        return
    if recorded != current_fp():
        raise UserError(f"{csv_path}: the images under {data_root} changed since this ranking was scored (same "
                        f"names, other sizes or modification times); pass --rerank to score them again")


def ranker_note(csv_path: Path, ranker_path: str | None) -> None:
    """Warn when a reused ranking was scored by a different ranker than the one given."""
    side = read_manifest(sidecar_path(csv_path))
    if not (side and ranker_path and Path(ranker_path).is_file()):
        return
    scored_by = side.get("inputs", {}).get("ranker", {}).get("sha256")
    if scored_by and scored_by != sha256_file(ranker_path):
        print(f"warning: {csv_path} was scored by another ranker ({side['inputs']['ranker']['path']}); "
              f"reusing it (pass --rerank to score with {ranker_path})", file=sys.stderr)


def sidecar_path(csv_path: str | os.PathLike) -> Path:
    return Path(f"{csv_path}.manifest.json")


def features_path(csv_path: str | os.PathLike) -> Path:
    """The ranker's penultimate features scored with ``csv_path`` (herding, k-center), beside it."""
    return Path(f"{csv_path}.features.pt")


def read_features(csv_path: Path, rel_paths: Sequence[str], current_fp: Callable[[], str]) -> np.ndarray | None:
    """The stored features when they belong to these files (names, and content: ``current_fp()``) and to this
    ranking (the sha256 of the CSV they were scored with: a ranking scored again, by another ranker or without
    features, leaves an older features file that must not be used), else None."""
    path = features_path(csv_path)
    if not path.is_file():
        return None
    state = safe_torch_load(path, what="the ranking's stored features", advice="pass --rerank to score again")
    ok = (isinstance(state, dict) and state.get("paths") == list(rel_paths)
          and state.get("ranking_sha256") == sha256_file(csv_path)
          and state.get("data_fingerprint") == current_fp()
          and isinstance(state.get("features"), torch.Tensor) and state["features"].shape[0] == len(rel_paths))
    return state["features"].numpy() if ok else None


# ----------------------------------------------------------------------------- selection output

def pick_per_class(df: pd.DataFrame, classes: Sequence[str], rel_paths: Sequence[str], ipc: int,
                   criterion: str, seed: int, allow_fewer: bool,
                   features: np.ndarray | None = None) -> dict[str, pd.DataFrame]:
    """Per class, the chosen rows in priority order (selection on scores in file-name order;
    herding and k-center on the rows of ``features``, which follow ``rel_paths``)."""
    by_path = df.set_index("path")
    per_class: dict[str, list[int]] = {c: [] for c in classes}
    for i, p in enumerate(rel_paths):  # file-name order, as the data root lists them
        per_class[p.split("/", 1)[0]].append(i)
    chosen = {}
    for label, cls in enumerate(classes):
        rows = by_path.loc[[rel_paths[i] for i in per_class[cls]]]
        k = check_class_size(cls, len(rows), ipc, allow_fewer)
        feats = features[per_class[cls]] if features is not None else None
        idx = select_indices(criterion, rows["score"].to_numpy(), k, seed=seed, label=label, features=feats)
        chosen[cls] = rows.iloc[idx].reset_index()
    return chosen


def write_selection(out: Path, data_root: Path, chosen: dict[str, pd.DataFrame], ipc: int,
                    manifest: dict, ranking: pd.DataFrame | None = None) -> dict[str, list[dict]]:
    """Copy the chosen files (bytes unchanged) to ``OUT/<class>/<rank>_<name>``, atomically.

    ``ranking`` (when no --ranking-file was given) is stored as ``OUT/ranking.csv``.
    """
    width = rank_width(ipc)
    listing: dict[str, list[dict]] = {}
    with atomic_dir(out) as tmp:
        for cls, rows in tqdm(chosen.items(), desc="copying", unit="class", dynamic_ncols=True):
            (tmp / cls).mkdir()
            listing[cls] = []
            for rank, row in enumerate(rows.itertuples(index=False)):
                name = f"{rank:0{width}d}_{row.path.split('/', 1)[1]}"
                shutil.copyfile(data_root / row.path, tmp / cls / name)
                listing[cls].append({"file": name, "source": row.path, "score": float(row.score)})
        if ranking is not None:
            write_ranking(ranking, tmp / "ranking.csv")
        write_manifest(tmp, {**manifest, "classes": listing})
    return listing


# ----------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if not dist_info().distributed:
        return run(args)
    ctx = init_distributed(device_spec(args))  # torchrun: one device per process, a gloo/NCCL group
    try:
        args.device, args.gpu_device = str(ctx.device), None
        return run(args, ctx.rank, ctx.world_size)
    finally:
        cleanup()


def score_sharded(ranker: Ranker, dataset: ImageFolder, batch_size: int, workers: int, partial: Path,
                  save_every: float, fingerprint: str, rank: int, world_size: int,
                  features: bool = False) -> dict[str, np.ndarray] | None:
    """Images ``rank, rank + world_size, ...`` scored here; all of them gathered on rank 0 (None elsewhere)."""
    mine = score_dataset(ranker, Subset(dataset, range(rank, len(dataset), world_size)), batch_size, workers,
                         partial.with_name(f"{partial.name}.rank{rank}of{world_size}"), save_every,
                         f"{fingerprint}|rank {rank} of {world_size}", features=features)
    parts = all_gather_object(mine)
    if rank != 0:
        return None
    out = {}
    for k in parts[0]:
        full = np.zeros((len(dataset), *parts[0][k].shape[1:]), dtype=parts[0][k].dtype)
        for r, part in enumerate(parts):
            full[r::world_size] = part[k]
        out[k] = full
    return out


def run(args: argparse.Namespace, rank: int = 0, world_size: int = 1) -> dict:
    seed_everything(args.seed)  # flag ranges were checked by the parser (common.cli.argtypes)
    spec = get_dataset(args.dataset)
    data_root, out = Path(args.data_path), Path(args.output_path)
    check_output_dir(out, "--output-path")
    if args.ranking_file:
        check_output_file(args.ranking_file, "--ranking-file")
        check_output_file(sidecar_path(args.ranking_file), "--ranking-file")
        check_output_file(features_path(args.ranking_file), "--ranking-file")
    classes, samples = make_samples(data_root)
    check_class_count(spec, len(classes), data_root)
    check_not_inside(out, data_root, "--output-path", "the data path")
    check_output(out, STAGE, args.force, flag="--output-path")
    rel_paths = relative_paths(data_root, samples)
    labels = [y for _, y in samples]
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    for y, cls in enumerate(classes):  # before scoring: a too-small class is known from the file list
        check_class_size(cls, int(counts[y]), args.ipc, args.allow_fewer)
    ranker_path = model_path_from_args(args, "ranker")
    csv_path = Path(args.ranking_file) if args.ranking_file else None
    timing: dict[str, float] = {}
    t_start = time.perf_counter()
    need_features = args.selection_criteria in FEATURE_CRITERIA
    # one stat of every file per run, however many checks and records need the data fingerprint
    current_fp = functools.cache(functools.partial(data_fingerprint, data_root, rel_paths))
    feats = None
    reuse = csv_path is not None and csv_path.is_file() and not args.rerank
    if reuse and need_features:
        feats = read_features(csv_path, rel_paths, current_fp)
        if feats is None:  # the ranking was scored without features (another criterion): score again
            if not ranker_path:
                raise UserError(f"{csv_path}: --selection-criteria {args.selection_criteria} selects on the "
                                f"ranker's features, which {features_path(csv_path).name} does not hold for these "
                                f"files; pass --ranker-path to score them")
            print(f"note: {csv_path} has no features for {args.selection_criteria}; scoring again with the ranker",
                  file=sys.stderr)
            reuse = False

    if reuse:
        df = read_ranking(csv_path)
        check_ranking_matches(df, csv_path, data_root, classes, rel_paths)
        check_ranking_content(csv_path, data_root, current_fp)
        if rank != 0:  # nothing to score: rank 0 alone writes the selection
            return {}
        ranker_note(csv_path, ranker_path)
        print(f"reusing ranking {csv_path} ({len(df)} images)", file=sys.stderr)
        side = read_manifest(sidecar_path(csv_path)) or {}
        if isinstance(side.get("scoring_s"), (int, float)):
            timing["reused_ranking_scoring_s"] = float(side["scoring_s"])
        scored = False
    else:
        device = device_from_args(args)
        ranker = load_ranker(ranker_path, args.ranker_arch, classes, spec, args.input_size, device, "ranker")
        dataset = ImageFolder(data_root, val_transform(ranker.input_size, ranker.mean, ranker.std), classes=classes)
        scores_fp = _fingerprint(ranker, rel_paths, labels)
        run = RunState(out, STAGE, fingerprint(args, NOT_RESULT, scores=scores_fp), restart=args.restart,
                       check=rank == 0)
        partial, workers = run.path("scores.pt"), workers_from_args(args, device.type)
        t0 = time.perf_counter()
        with run.running():
            if world_size == 1:
                metrics = score_dataset(ranker, dataset, args.batch_size, workers, partial, args.save_every, scores_fp,
                                        features=need_features)
            else:
                metrics = score_sharded(ranker, dataset, args.batch_size, workers, partial, args.save_every,
                                        scores_fp, rank, world_size, features=need_features)
        if metrics is None:  # rank 0 writes the ranking and the selection
            return {}
        timing["scoring_s"] = time.perf_counter() - t0
        timing["images_per_sec"] = len(dataset) / max(timing["scoring_s"], 1e-9)
        df = ranking_frame(rel_paths, classes, labels, metrics)
        acc = float((df["pred"] == df["label"]).mean())
        print(f"scored {len(df)} images in {timing['scoring_s']:.1f}s ({timing['images_per_sec']:.0f} images/s); "
              f"ranker train top-1 {100 * acc:.2f}%", file=sys.stderr)
        if csv_path is not None:
            write_ranking(df, csv_path)
            atomic_write_json(sidecar_path(csv_path), build_manifest(
                f"{STAGE}.ranking", args, inputs={"ranker": ranker_path}, data_root=str(data_root.resolve()),
                data_fingerprint=current_fp(),
                ranker={"arch": ranker.arch, "input_size": ranker.input_size, "mean": ranker.mean,
                        "std": ranker.std}, train_top1=acc, **timing))
        if need_features:
            feats = metrics["features"]
            if csv_path is not None:  # weights-only: file names, data fingerprint, the ranking's sha256, matrix
                atomic_torch_save({"paths": list(rel_paths), "data_fingerprint": current_fp(),
                                   "ranking_sha256": sha256_file(csv_path), "features": torch.from_numpy(feats)},
                                  features_path(csv_path))
        scored = True

    chosen = pick_per_class(df, classes, rel_paths, args.ipc, args.selection_criteria, args.seed,
                            args.allow_fewer, features=feats)
    # cost of this set: this run, plus the scoring of a reused ranking
    timing["wall_time_s"] = time.perf_counter() - t_start + timing.get("reused_ranking_scoring_s", 0.0)
    manifest = build_manifest(STAGE, args, inputs={"ranker": ranker_path if scored else None,
                                                   "ranking_file": csv_path},
                              data_root=str(data_root.resolve()), num_classes=len(classes),
                              selection_criteria=args.selection_criteria, ipc=args.ipc,
                              reused_ranking=not scored, wall_time_s=timing["wall_time_s"], timings=timing,
                              **({"features": {"kind": "ranker penultimate (classifier input)",
                                               "dim": int(feats.shape[1])}} if feats is not None else {}))
    listing = write_selection(out, data_root, chosen, args.ipc, manifest, ranking=df if csv_path is None else None)
    if scored:
        run.finish()
    total = sum(len(v) for v in listing.values())
    print(f"wrote {total} images ({len(listing)} classes, {args.selection_criteria}) to {out}")
    return {"output": str(out), "images": total, **timing}
