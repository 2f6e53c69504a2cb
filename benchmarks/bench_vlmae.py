"""VLMAE on real audio (issue 10): the paper's Table 4 analogue on av-digits. Not a unit test.

Pipeline (everything under --work, reused only where noted):
1. build av-digits (real MNIST frames + real FSDD recordings; label = spoken digit mod 2; 30 % of clips
   are audio-sensitive: frames and caption independent of the label) — docs/datasets.md;
2. pre-train a small Whisper-architecture encoder on the pre-training speakers only, with a different
   objective (10-way spoken digit), save it as an HF checkpoint, freeze it
   (broaden.models.pretrain_audio; reused if --work already holds one made with the same settings);
3. encode every clip's audio once into the float16 cache (broaden.models.audio_cache) and, as a
   diagnostic of the frozen encoder on unseen speakers, fit a logistic-regression probe on the mean
   encoder state of the train clips and test it on the test clips;
4. for every head (none / avgpool / maxpool / vlmae) and seed: the same MoME backbone and data, trained
   with broaden.models.train, scored on the test clips with broaden.models.score;
5. broaden.metrics.evaluate on all test clips and on the audio-sensitive (and visual) test clips:
   mean ± sample std over seeds; the seed-averaged VLMAE attention of a few clips as a PNG.

    flock /tmp/broaden-heavy.lock .venv/bin/python benchmarks/bench_vlmae.py --work /tmp/broaden-bench-vlmae

Writes results.json, table.md and attention.png to --work and prints table.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

HEADS = ("none", "avgpool", "maxpool", "vlmae")
SUBSETS = ("all", "audio_sensitive", "visual")
PRECISIONS = ("0.6", "0.7", "0.8", "0.9")
# One backbone for every head: a tiny MoME (2 layers, 64-d) over [CLS] + caption + 3 MNIST frames
# (4 patches of 14×14 each). Trained from scratch, so lr is 1e-3 rather than the paper's fine-tuning 4e-5.
MODEL = dict(backbone="mome", width=64, layers=2, heads=4, vl_layers=1, max_text_length=16, num_frames=3,
             frame_channels=1, frame_size=[28, 28], patch_size=14, att_dim=64, att_heads=1,
             mlp_layers=2, mlp_hidden=64)
TRAIN = dict(lr=1e-3, batch_size=64, epochs=12, patience=3, eval_metric="loss", eval_fraction=0.1)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ data
def split_items(avd: Path, work: Path, limit: int | None) -> dict[str, Path]:
    """train / test items tables (the first ``limit`` rows of each split: rows are already shuffled)."""
    items = pq.read_table(avd / "items.parquet")
    out = {}
    for split in ("train", "test"):
        part = items.filter(pc.equal(items["split"], split))
        if limit is not None:
            part = part.slice(0, limit)
        path = work / f"{split}.parquet"
        pq.write_table(part, path)
        out[split] = path
    return out


def pretrained_encoder(avd: Path, work: Path, cfg, limit: int | None, progress: bool) -> tuple[Path, dict, bool]:
    """Pre-train the audio encoder (on ``limit`` random recordings if set) unless ``work/encoder``
    already holds one made with these settings from these recordings."""
    from broaden.models.pretrain_audio import pretrain_audio_encoder, pretraining_info

    folder = work / "encoder"
    recordings = pq.read_table(avd / "pretrain.parquet")
    if limit is not None:
        pick = np.sort(np.random.default_rng(0).permutation(recordings.num_rows)[:limit])
        recordings = recordings.take(pick)
    want = json.loads(json.dumps(asdict(cfg)))
    if (folder / "pretraining.json").is_file():
        info = pretraining_info(folder)
        if info["config"] == want and info["recordings"] == recordings["id"].to_pylist():
            return folder, info, True
    pretrain_audio_encoder(recordings, folder, config=cfg, show_progress=progress)
    return folder, pretraining_info(folder), False


def encode_and_probe(encoder: Path, tables: dict[str, Path], cache_dir: Path) -> dict:
    """Fill the audio cache for every clip; probe the frozen encoder's mean state on unseen speakers."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from broaden.models.audio import WhisperAudio
    from broaden.models.audio_cache import AudioCache

    cache = AudioCache(cache_dir, WhisperAudio.from_pretrained(encoder), batch_size=32)
    feats, digits = {}, {}
    for split, path in tables.items():
        t = pq.read_table(path, columns=["audio_path", "digit"])
        states = cache.get_many(t["audio_path"].to_pylist())
        bad = [s for s in states if isinstance(s, Exception)]
        if bad:
            raise bad[0]
        feats[split] = np.stack([s.astype(np.float32).mean(0) for s in states])
        digits[split] = t["digit"].to_numpy()
    scaler = StandardScaler().fit(feats["train"])
    x_train, x_test = scaler.transform(feats["train"]), scaler.transform(feats["test"])
    out = {"cache_hits": cache.hits, "cache_misses": cache.misses}
    for name, target in (("digit", lambda d: d), ("parity", lambda d: d % 2)):
        probe = LogisticRegression(max_iter=2000).fit(x_train, target(digits["train"]))
        out[f"probe_{name}_accuracy"] = float((probe.predict(x_test) == target(digits["test"])).mean())
    return out


# ------------------------------------------------------------------------------------ train/score
def run_config(head: str, seed: int, tables: dict[str, Path], encoder: Path, work: Path,
               threads: int, model: dict, train: dict):
    from broaden.models.config import run_config_from_dict

    m = dict(model, fusion=head)
    if head != "none":
        m["whisper_path"] = str(encoder)
    raw = {"out": str(work / "runs" / f"{head}-seed{seed}"),
           "data": {"train": str(tables["train"]), "text_fields": ["text"]},
           "model": m,
           "train": dict(train, seed=seed, num_threads=threads, audio_cache=str(work / "audio_cache"))}
    return run_config_from_dict(raw)


def train_and_score(cfg, test: Path, work: Path, threads: int, progress: bool) -> tuple[Path, dict]:
    from broaden.models.score import score
    from broaden.models.train import train

    result = train(cfg, resume=False, show_progress=progress)
    scored = Path(cfg.out) / "test_scored.parquet"
    score(result.run_dir, test, scored, audio_cache=work / "audio_cache", num_threads=threads,
          show_progress=progress)
    return scored, {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                    "stop_reason": result.stop_reason}


def subset_metrics(scored: Path) -> dict[str, dict]:
    """DESIGN §4 metrics of a scored test table on each subset of clips."""
    from broaden.io import list_matrix
    from broaden.metrics import evaluate

    t = pq.read_table(scored, columns=["label", "probs", "audio_sensitive"])
    labels, probs = t["label"].to_numpy(), list_matrix(t["probs"])
    sensitive = t["audio_sensitive"].to_numpy(zero_copy_only=False)
    out = {}
    for name, mask in (("all", np.ones_like(sensitive)), ("audio_sensitive", sensitive), ("visual", ~sensitive)):
        m = evaluate(labels[mask], probs[mask])
        out[name] = {"n": m["n"], "auc": m["auc"], "f1": m["f1"], "accuracy": m["accuracy"],
                     **{f"R@P{int(float(k) * 100)}": m["recall_at_precision"][k] for k in PRECISIONS},
                     "max_beta_variance": m["max_beta_variance"]}
    return out


def summarise(per_seed: dict[str, list[dict]]) -> dict:
    """mean and sample std (ddof = 1; 0 for one seed) of every metric over seeds, per head and subset."""
    out: dict = {}
    for head, runs in per_seed.items():
        out[head] = {}
        for subset in SUBSETS:
            keys = [k for k in runs[0][subset] if k != "n"]
            vals = {k: np.array([r[subset][k] for r in runs], dtype=float) for k in keys}
            out[head][subset] = {k: {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}
                                 for k, v in vals.items()} | {"n": runs[0][subset]["n"]}
    return out


# ------------------------------------------------------------------------------------- attention
def attention_figure(scored: list[Path], test: Path, encoder: Path, out: Path, clips: int = 4) -> dict:
    """Seed-averaged VLMAE weights over a few audio-sensitive test clips (over their log-Mel), and the
    mean weight profile over relative position for all test clips. Returns summary numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from broaden.models.audio import HOP_LENGTH, SAMPLE_RATE, WhisperAudio, load_audio

    tables = [pq.read_table(p, columns=["id", "digit", "audio_sensitive", "audio_attention"]).sort_by("id")
              for p in scored]
    ids = tables[0]["id"].to_pylist()
    weights = [[np.asarray(w, dtype=np.float64) for w in t["audio_attention"].to_pylist()] for t in tables]
    mean_w = [np.mean([w[i] for w in weights], axis=0) for i in range(len(ids))]
    lengths = np.array([len(w) for w in mean_w])
    # Normalised entropy H(α)/log L: 1 = uniform over the clip (what avgpool does), 0 = one position.
    entropy = [float(-(w * np.log(np.clip(w, 1e-12, None))).sum() / np.log(len(w))) for w in mean_w if len(w) > 1]
    bins = 20
    profile = np.array([np.interp(np.linspace(0, 1, bins), np.linspace(0, 1, len(w)), w * len(w))
                        for w in mean_w if len(w) > 1])

    sensitive = tables[0]["audio_sensitive"].to_numpy(zero_copy_only=False)
    digits = tables[0]["digit"].to_numpy()
    chosen, seen = [], set()
    for i in np.flatnonzero(sensitive):
        if digits[i] not in seen:
            chosen.append(i)
            seen.add(digits[i])
        if len(chosen) == clips:
            break
    items = pq.read_table(test, columns=["id", "audio_path"])
    path_of = dict(zip(items["id"].to_pylist(), items["audio_path"].to_pylist()))
    audio = WhisperAudio.from_pretrained(encoder)
    fig, axes = plt.subplots(1, len(chosen) + 1, figsize=(3.2 * (len(chosen) + 1), 3.0))
    for ax, i in zip(axes, chosen):
        wave = load_audio(path_of[ids[i]])
        mel, _ = audio.features([wave])
        frames = -(-len(wave) // HOP_LENGTH)
        seconds = frames * HOP_LENGTH / SAMPLE_RATE
        ax.imshow(mel[0, :, :frames].numpy(), origin="lower", aspect="auto", cmap="magma",
                  extent=(0, seconds, 0, 80))
        t = (np.arange(len(mean_w[i])) + 0.5) * seconds / len(mean_w[i])
        twin = ax.twinx()
        twin.plot(t, mean_w[i], color="cyan", lw=1.5)
        twin.set_ylim(0, max(mean_w[i].max() * 1.1, 1e-6))
        ax.set_title(f"{ids[i]} (spoken {digits[i]})", fontsize=8)
        ax.set_xlabel("seconds")
        ax.set_ylabel("Mel bin")
    ax = axes[-1]
    ax.plot(np.linspace(0, 1, bins), profile.mean(0), color="k")
    ax.fill_between(np.linspace(0, 1, bins), profile.mean(0) - profile.std(0), profile.mean(0) + profile.std(0),
                    color="0.8")
    ax.axhline(1.0, ls="--", color="grey", lw=0.8)
    ax.set_title(f"all {len(profile)} test clips: α·L (1 = uniform)", fontsize=8)
    ax.set_xlabel("relative position in clip")
    fig.suptitle(f"VLMAE attention (cyan: α over audio positions, averaged over {len(scored)} seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return {"clips": [ids[i] for i in chosen], "mean_normalised_entropy": float(np.mean(entropy)),
            "mean_valid_positions": float(lengths.mean()),
            "profile_alpha_times_L": [round(float(x), 3) for x in profile.mean(0)]}


# ----------------------------------------------------------------------------------------- driver
def run_benchmark(work: str | os.PathLike, *, data_dir=None, dataset_seed: int = 0, seeds=(0, 1, 2),
                  heads=HEADS, pretrain=None, model: dict | None = None, train: dict | None = None,
                  limit: int | None = None, threads: int = 1, progress: bool = True) -> dict:
    """Run the whole benchmark in ``work``; returns the results also written to ``work/results.json``."""
    import torch

    from broaden.datasets.avdigits import build_av_digits
    from broaden.models.pretrain_audio import PretrainConfig

    torch.set_num_threads(threads)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    manifest = build_av_digits(work / "avd", seed=dataset_seed, data_dir=data_dir)
    tables = split_items(work / "avd", work, limit)
    timings["build"] = time.perf_counter() - t0

    t = time.perf_counter()
    pcfg = pretrain or PretrainConfig(num_threads=threads)
    encoder, info, reused = pretrained_encoder(work / "avd", work, pcfg, limit, progress)
    timings["pretrain"] = time.perf_counter() - t
    log(f"encoder: val accuracy {_fmt(info['val_accuracy'])} on the pre-training speakers' held-out "
        f"recordings{' (reused)' if reused else ''}")

    t = time.perf_counter()
    probe = encode_and_probe(encoder, tables, work / "audio_cache")
    timings["encode_and_probe"] = time.perf_counter() - t
    log(f"probe on unseen speakers: digit {probe['probe_digit_accuracy']:.3f}, "
        f"parity {probe['probe_parity_accuracy']:.3f}")

    per_seed: dict[str, list[dict]] = {h: [] for h in heads}
    runs, scored_vlmae = [], []
    t = time.perf_counter()
    for head in heads:
        for seed in seeds:
            ts = time.perf_counter()
            cfg = run_config(head, seed, tables, encoder, work, threads, model or MODEL, train or TRAIN)
            scored, info_run = train_and_score(cfg, tables["test"], work, threads, progress)
            metrics = subset_metrics(scored)
            per_seed[head].append(metrics)
            runs.append({"head": head, "seed": seed, **info_run, "seconds": time.perf_counter() - ts,
                         "metrics": metrics})
            if head == "vlmae":
                scored_vlmae.append(scored)
            log(f"{head} seed {seed}: AUC all {metrics['all']['auc']:.3f}, audio-sensitive "
                f"{metrics['audio_sensitive']['auc']:.3f} ({time.perf_counter() - ts:.0f} s)")
    timings["train_and_score"] = time.perf_counter() - t

    attention = None
    if scored_vlmae:
        t = time.perf_counter()
        attention = attention_figure(scored_vlmae, tables["test"], encoder, work / "attention.png")
        timings["attention_plot"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    results = {"dataset": {"seed": dataset_seed, "speakers": manifest["speakers"], "limit": limit,
                           "sizes": manifest["sizes"]},
               "encoder": {"path": str(encoder), "reused": reused, "objective": info["objective"],
                           "config": info["config"], "speakers": info["speakers"],
                           "train_accuracy": info["train_accuracy"], "val_accuracy": info["val_accuracy"],
                           **probe},
               "model": model or MODEL, "train": train or TRAIN, "seeds": list(seeds), "threads": threads,
               "summary": summarise(per_seed), "runs": runs, "attention": attention,
               "timings_s": {k: round(v, 1) for k, v in timings.items()}}
    (work / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (work / "table.md").write_text(markdown(results), encoding="utf-8")
    return results


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown(results: dict) -> str:
    cols = ["auc", "f1", *[f"R@P{int(float(k) * 100)}" for k in PRECISIONS], "max_beta_variance"]
    names = {"auc": "AUC", "f1": "F1", "max_beta_variance": "max β var"}
    lines = []
    for subset in SUBSETS:
        summary = results["summary"]
        n = next(iter(summary.values()))[subset]["n"]
        lines += [f"**{subset.replace('_', '-')} test clips** (n = {n}; mean ± std over seeds "
                  f"{', '.join(map(str, results['seeds']))})", "",
                  "| head | " + " | ".join(names.get(c, c) for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for head, by_subset in summary.items():
            cells = [f"{by_subset[subset][c]['mean']:.3f} ± {by_subset[subset][c]['std']:.3f}" for c in cols]
            lines.append(f"| {head} | " + " | ".join(cells) + " |")
        lines.append("")
    e = results["encoder"]
    lines.append(f"Frozen encoder: val digit accuracy {_fmt(e['val_accuracy'])} (pre-training speakers' held-out "
                 f"recordings); logistic probe on its mean state, train speakers → test speakers: digit "
                 f"{e['probe_digit_accuracy']:.3f}, parity {e['probe_parity_accuracy']:.3f}.")
    if results["attention"]:
        a = results["attention"]
        lines.append(f"VLMAE attention: mean normalised entropy {a['mean_normalised_entropy']:.3f} "
                     f"(1 = uniform) over {a['mean_valid_positions']:.1f} valid positions on average; "
                     f"α·L by relative position (20 bins): {a['profile_alpha_times_L']}.")
    lines.append("Wall time (s): " + ", ".join(f"{k} {v}" for k, v in results["timings_s"].items()) + ".")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=os.environ.get("BROADEN_BENCH_DIR", "/tmp/broaden-bench") + "-vlmae",
                   help="working folder (dataset, encoder, audio cache, runs, results)")
    p.add_argument("--data-dir", default=None, help="real datasets (default: $BROADEN_DATA_DIR / the cache)")
    p.add_argument("--dataset-seed", type=int, default=0)
    p.add_argument("--seeds", default="0,1,2", help="training seeds (comma-separated)")
    p.add_argument("--heads", default=",".join(HEADS))
    p.add_argument("--limit", type=int, default=None,
                   help="smoke runs: only the first N clips of each split and N pre-training recordings")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: while other jobs loaded this 2-core machine, an encoder "
                        "training step took 3.5 s with 2 threads and 0.45 s with 1)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    results = run_benchmark(args.work, data_dir=args.data_dir, dataset_seed=args.dataset_seed,
                            seeds=[int(s) for s in args.seeds.split(",")], heads=args.heads.split(","),
                            limit=args.limit, threads=args.threads, progress=not args.quiet)
    print(markdown(results))
    print(f"results: {Path(args.work) / 'results.json'}; attention plot: {Path(args.work) / 'attention.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
