"""Quality levers, measured: an ablation on out-of-fold scores, and the final candidate on the held-out eval set.

Each switch is the reference `TrainParams` (offline ImageNet Lite0, 128 px, 4 epochs, AdamW + cosine, flip TTA) with
some fields changed. Every run trains on one person fold of a *train-only view* of the data (a folder whose `train/`
links to the dataset's), so no run reads `eval/`: settings are chosen on out-of-fold (OOF) scores alone. For each
run the OOF rows are scored as they are and after the person vote (`maskkit.ensemble.group_vote` over
`person_groups`, which finds a person's photos without labels), and the run's `Predictor` classifies the real photos
of `realmask-dev` (mask state only). `--final PRESET` trains the preset's k folds on the full dataset with
`run_kfold` (the one time `eval/solution.csv` is read), then scores the fold ensemble and each fold run on eval,
and the ensemble on the real photos. Writes `reports/quality.md`, `reports/quality.png` and the raw rows
`reports/quality_runs.csv`; a rerun reuses finished runs (same names, same configs).

    .venv/bin/python benchmarks/bench_quality.py --switches ref,person_sampler --seeds 42
    .venv/bin/python benchmarks/bench_quality.py --final cpu_best --folds 5
    .venv/bin/python benchmarks/bench_quality.py --report-only
"""
from __future__ import annotations
import argparse, json, os, sys, time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
import numpy as np, pandas as pd

from maskkit.data import project_root, split_dir, load_eval, reports_dir
from maskkit.ensemble import person_groups, group_vote, score_mask_state, score_submission
from maskkit.experiment import TrainParams, train_run, run_kfold
from maskkit.inference import Predictor
from maskkit.metrics import score
from maskkit.runs import Run, read_preds, prob_matrix, runs_root, read_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recipes import train_only   # a folder whose train/ links to the dataset's: no eval set to read

REFERENCE = dict(backbone="tf_efficientnet_lite0", pretrained="offline", img_size=128, epochs=4, optimizer="adamw",
                 scheduler="cosine", tta="hflip")
SWITCHES = {  # name -> (fields changed against REFERENCE, what it tests)
    "ref": ({}, "the reference: all 7 images of a person every epoch"),
    "person_sampler": ({"sampler": "person", "epochs": 8}, "1 of the 5 worn-mask images per person and epoch, twice the epochs (about the same time)"),
    "person_192": ({"sampler": "person", "epochs": 8, "img_size": 192}, "person sampler at 192 px"),
    "person_160": ({"sampler": "person", "epochs": 8, "img_size": 160}, "person sampler at 160 px"),
    "lite1_160": ({"sampler": "person", "epochs": 8, "img_size": 160, "backbone": "tf_efficientnet_lite1"}, "offline Lite1 at 160 px"),
    "lite2_192": ({"sampler": "person", "epochs": 8, "img_size": 192, "backbone": "tf_efficientnet_lite2"}, "offline Lite2 at 192 px"),
    "multi_head": ({"sampler": "person", "epochs": 8, "head": "multi"}, "3+2+3 part heads instead of one 18-way head"),
    "smooth_wd": ({"sampler": "person", "epochs": 8, "label_smoothing": 0.1, "weight_decay": 0.05}, "label smoothing 0.1 + weight decay 0.05"),
    "augment": ({"sampler": "person", "epochs": 8, "augment": ["hflip", "color_jitter", "rotate", "erasing"]}, "stronger augmentation"),
    "ema": ({"sampler": "person", "epochs": 8, "ema_decay": 0.99}, "validate and keep a moving average of the weights"),
    "age_dist": ({"sampler": "person", "epochs": 8, "head": "multi", "age_dist": True},
                 "part heads, the age band read off a distribution over years fitted to Gaussian targets (sigma 3)"),
    "trivial_augment": ({"sampler": "person", "epochs": 8, "augment": ["hflip", "trivial_augment"]}, "TrivialAugment (torchvision v2)"),
    "lr_3e-4": ({"sampler": "person", "epochs": 8, "lr": 3e-4}, "a gentler learning rate for the pretrained backbone"),
    "synth_masks": ({"sampler": "person", "epochs": 8, "synth_masks": 2},
                    "2 extra photos per training person: its unmasked photo with a drawn mask (maskkit.synth; 60 % worn, 40 % nose/chin)"),
}
PARTS = ("mask_acc", "gender_acc", "age_acc")
FACE_VARIANTS = {  # Predictor face settings tried on the real photos with the final ensemble (no retraining)
    "the runs' own (MTCNN p >= 0.9, else 0.8 of the centre)": {},
    "whole-image fallback": {"fallback_size": 1.0},
    "p >= 0.7, whole-image fallback": {"face_min_prob": 0.7, "fallback_size": 1.0},
    "detection on a 224 px copy, whole-image fallback": {"detect_size": 224, "min_face_size": 30, "fallback_size": 1.0},
    "no detection: the whole photo": {"use_crops": False},
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--switches", default="ref", help=f"comma-separated switch names or 'all' ({', '.join(SWITCHES)})")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42], help="seeds per switch (mean and sd over them)")
    ap.add_argument("--fold", type=int, default=0, help="validation fold of the ablation (default 0)")
    ap.add_argument("--data-root", default=str(project_root().parent / "shared" / "data" / "utkmask"))
    ap.add_argument("--realmask", default=str(project_root().parent / "shared" / "data" / "realmask-dev"),
                    help="real photos, mask state only (eval/images + eval/solution.csv); '' to skip")
    ap.add_argument("--final", default=None, help="a preset of maskkit.recipes: its k folds on the full data, scored on eval")
    ap.add_argument("--folds", type=int, default=5, help="folds of --final (default 5)")
    ap.add_argument("--workers", type=int, default=1, help="--final: folds trained at once in CPU processes (default 1)")
    ap.add_argument("--report-only", action="store_true", help="no training: rebuild the report from the records")
    ap.add_argument("--out", default="reports", help="where quality.md / quality.png / quality_runs.csv go")
    return ap.parse_args(argv)


def realmask_scores(predictor: Predictor, root) -> dict:
    "Mask-state scores of `predictor` on the real photos under `root` (flat keys for the table)."
    if not root: return {}
    ev = load_eval(root)
    pred = predictor.predict(ev[["ImageID", "path"]])
    s = score_mask_state(pred, Path(root) / "eval" / "solution.csv")
    by = s.get("by_face_method", {})
    return {"real_mask_f1": s["mask_macro_f1"], "real_mask_acc": s["mask_acc"],
            "real_face_rate": by.get("face", {}).get("n", 0) / s["n"],
            "real_acc_face": by.get("face", {}).get("mask_acc", np.nan), "real_acc_fallback": by.get("fallback", {}).get("mask_acc", np.nan),
            "real_confusion": json.dumps(s["confusion"])}


def oof_scores(run: Run) -> dict:
    "OOF scores of a run as trained, and after the person vote."
    oof = read_preds(run.path, "oof")
    y = oof.label.to_numpy()
    plain = score(y, prob_matrix(oof).argmax(1))
    voted = score(y, group_vote(prob_matrix(oof), person_groups(oof.path)).argmax(1))
    return {**plain, **{f"vote_{k}": v for k, v in voted.items()}, "n_oof": len(oof)}


def ablation(args, names) -> pd.DataFrame:
    view = train_only(args.data_root, project_root() / "reports" / "bench_quality_data")
    rows, cache = [], reports_dir("quality", "realmask")
    cache.mkdir(parents=True, exist_ok=True)
    for name in names:
        change, _ = SWITCHES[name]
        for seed in args.seeds:
            run_name = f"q-{name}-s{seed}-f{args.fold}"
            p = TrainParams(**{**REFERENCE, **change}, data_root=str(view), fold=args.fold, seed=seed, run_name=run_name)
            print(f"\n=== {name} (seed {seed}): {run_name}", flush=True)
            t0 = time.perf_counter()
            if not args.report_only: run = train_run(p)
            else:
                try: run = Run.open(run_name)
                except FileNotFoundError: print(f"no record of {run_name}: skipped"); continue
            if not run.finished: print(f"{run_name} unfinished: skipped"); continue
            row = {"switch": name, "seed": seed, "run": run_name, "minutes": run.summary.get("minutes"), **oof_scores(run)}
            rm = cache / f"{run_name}.json"
            if not rm.is_file(): rm.write_text(json.dumps(realmask_scores(Predictor.from_run(run), args.realmask)))
            row.update(json.loads(rm.read_text()))
            rows.append(row)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if k != "real_confusion"}, flush=True)
    return pd.DataFrame(rows)


def final(args) -> dict:
    "The preset's k folds on the full data (eval read here, once per candidate), the ensemble and each fold run scored."
    p = TrainParams.from_recipe(args.final, data_root=str(Path(args.data_root).resolve()))
    t0 = time.perf_counter()
    out = run_kfold(p, folds=args.folds, prefix=args.final, workers=args.workers)
    minutes = (time.perf_counter() - t0) / 60
    ens = out["ensemble"]
    singles = [read_json(r.path / "test_summary.json") if (r.path / "test_summary.json").is_file() else {} for r in out["runs"]]
    # the recipe's wall clock from its records (first fit started -> last model written; a resumed call rewrites neither)
    recorded = (max((r.path / "model.pt").stat().st_mtime for r in out["runs"]) - min((r.path / "train_config.json").stat().st_mtime for r in out["runs"])) / 60
    pred = Predictor.from_runs(out["runs"])
    real = realmask_scores(pred, args.realmask)
    faces = {}   # the face stage on real photos that are face crops already: the runs' own settings and others
    for label, face in FACE_VARIANTS.items():
        faces[label] = realmask_scores(Predictor.from_runs(out["runs"], face=face), args.realmask) if args.realmask else {}
    res = {"preset": args.final, "folds": args.folds, "workers": args.workers, "wall_minutes": max(minutes, recorded),
           "train_minutes": sum(r.summary.get("minutes", 0) for r in out["runs"]),
           "oof": ens["oof"], "oof_no_vote": ens.get("oof_no_vote"), "test": ens.get("test"),
           "single_runs_test": singles, "realmask": real, "realmask_faces": faces, "params": p.to_dict()}
    path = project_root() / args.out / f"quality_final_{args.final}.json"
    path.write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps({k: v for k, v in res.items() if k != "params"}, indent=1, default=float))
    return res


def fmt(v, d=3): return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{d}f}"


def write_report(res: pd.DataFrame, args, out: Path):
    import matplotlib.pyplot as plt
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "quality_runs.csv"
    if len(res): res = pd.concat([pd.read_csv(raw), res]).drop_duplicates("run", keep="last") if raw.is_file() else res
    elif raw.is_file(): res = pd.read_csv(raw)
    if len(res): res.to_csv(raw, index=False)
    g = res.groupby("switch", sort=False)
    agg = g.agg(n=("seed", "size"), f1=("macro_f1", "mean"), f1_sd=("macro_f1", "std"), vote=("vote_macro_f1", "mean"),
                vote_sd=("vote_macro_f1", "std"), acc=("accuracy", "mean"), mask=("mask_acc", "mean"), gender=("gender_acc", "mean"),
                age=("age_acc", "mean"), vgender=("vote_gender_acc", "mean"), vage=("vote_age_acc", "mean"),
                real=("real_mask_f1", "mean"), face_rate=("real_face_rate", "mean"), minutes=("minutes", "mean")).reset_index() if len(res) else pd.DataFrame()
    ref = agg.set_index("switch").f1.get("ref", np.nan) if len(agg) else np.nan
    lines = ["# Quality levers on a CPU budget", "",
             f"`benchmarks/bench_quality.py` on `{args.data_root}`, person fold {args.fold} of 5 ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
             "Every switch is the reference (" + ", ".join(f"{k}={v}" for k, v in REFERENCE.items()) + ") with the fields shown changed. "
             "The runs see a train-only view of the data; macro-F1 is out-of-fold (the 112 validation persons, 784 photos), "
             "mean +- sd over the seeds run. *vote* is the same OOF after the person vote (`group_vote` over `person_groups`, "
             "no labels used). *real F1* is the mask-state macro-F1 on the 221 real photos of realmask-dev "
             "(150 wear, 16 incorrect, 55 not wear; never trained on); *face* is the share of them where MTCNN found a face. "
             "Minutes are the minutes one run took on the 2-core CPU, as recorded (runs sharing the CPU with other work took longer: "
             "compare them loosely). *Δ base* is against the switch the row builds on (`person_sampler` for the rows that change it further).", "",
             "| switch | changes | seeds | OOF macro-F1 | Δ ref | Δ base | + person vote | age / gender / mask acc | age / gender acc (vote) | real F1 | face | min |",
             "|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    f1_of = agg.set_index("switch").f1 if len(agg) else pd.Series(dtype=float)
    def base_of(name):
        c = SWITCHES.get(name, ({}, ""))[0]
        return "person_sampler" if name != "person_sampler" and c.get("sampler") == "person" and "person_sampler" in f1_of else "ref"
    for r in agg.itertuples():
        change = json.dumps(SWITCHES.get(r.switch, ({}, ""))[0]).strip("{}") or "-"
        sd = lambda v: "" if pd.isna(v) else f" +- {v:.3f}"
        b = f1_of.get(base_of(r.switch), np.nan)
        lines.append(f"| `{r.switch}` | {change} | {r.n} | {fmt(r.f1)}{sd(r.f1_sd)} | {'' if pd.isna(ref) else f'{r.f1 - ref:+.3f}'} | "
                     f"{'' if pd.isna(b) or r.switch == 'ref' else f'{r.f1 - b:+.3f}'} | "
                     f"{fmt(r.vote)}{sd(r.vote_sd)} | {fmt(r.age)} / {fmt(r.gender)} / {fmt(r.mask)} | {fmt(r.vage)} / {fmt(r.vgender)} | "
                     f"{fmt(r.real)} | {fmt(r.face_rate, 2)} | {fmt(r.minutes, 1)} |")
    lines += ["", "What each switch tests:", ""] + [f"- `{k}`: {SWITCHES[k][1]}" for k in agg.switch if k in SWITCHES]
    finals = sorted((out).glob("quality_final_*.json"))
    for f in finals:
        d = json.loads(f.read_text())
        t, o, s = d.get("test") or {}, d.get("oof") or {}, [x for x in d.get("single_runs_test", []) if x]
        sf1 = np.array([x["macro_f1"] for x in s]) if s else np.array([])
        rm = d.get("realmask") or {}
        lines += ["", f"## Final candidate `{d['preset']}` ({d['folds']} folds)", "",
                  f"`benchmarks/bench_quality.py --final {d['preset']} --folds {d['folds']} --workers {d.get('workers', 1)}`: the whole recipe "
                  f"(all folds, their test predictions and the ensemble) took **{fmt(d.get('wall_minutes'), 1)} min** of wall clock on the 2-core CPU "
                  f"({fmt(d.get('train_minutes'), 1)} run-minutes summed over the folds).", "",
                  "| what | macro-F1 | accuracy | age acc | gender acc | mask acc |", "|---|---:|---:|---:|---:|---:|",
                  f"| OOF, all folds (every training person once) | {fmt(o.get('macro_f1'))} | {fmt(o.get('accuracy'))} | {fmt(o.get('age_acc'))} | {fmt(o.get('gender_acc'))} | {fmt(o.get('mask_acc'))} |"]
        if d.get("oof_no_vote"):
            n = d["oof_no_vote"]
            lines.append(f"| OOF without the person vote | {fmt(n['macro_f1'])} | {fmt(n['accuracy'])} | {fmt(n['age_acc'])} | {fmt(n['gender_acc'])} | {fmt(n['mask_acc'])} |")
        if t: lines.append(f"| **eval/solution.csv, fold ensemble** | **{fmt(t['macro_f1'])}** | {fmt(t['accuracy'])} | {fmt(t['age_acc'])} | {fmt(t['gender_acc'])} | {fmt(t['mask_acc'])} |")
        if len(sf1): lines.append(f"| eval, single fold runs (mean +- sd of {len(sf1)}) | {sf1.mean():.3f} +- {sf1.std(ddof=1) if len(sf1) > 1 else 0:.3f} | "
                                  + " | ".join(fmt(np.mean([x[k] for x in s])) for k in ("accuracy", "age_acc", "gender_acc", "mask_acc")) + " |")
        if rm: lines += ["", f"Real photos (realmask-dev, ensemble): mask macro-F1 **{fmt(rm.get('real_mask_f1'))}**, accuracy {fmt(rm.get('real_mask_acc'))}; "
                         f"face found in {fmt(rm.get('real_face_rate'), 2)} of them, mask accuracy {fmt(rm.get('real_acc_face'))} there and "
                         f"{fmt(rm.get('real_acc_fallback'))} on the fallback crops; confusion (rows true wear/incorrect/not wear) {rm.get('real_confusion')}."]
        fv = {k: v for k, v in (d.get("realmask_faces") or {}).items() if v}
        if fv:
            lines += ["", "The face stage on the real photos (the same ensemble, other Predictor face settings; reported, not chosen on them):", "",
                      "| face settings | mask macro-F1 | mask acc | face found | acc where found | acc on fallback | confusion |", "|---|---:|---:|---:|---:|---:|---|"]
            lines += [f"| {k} | {fmt(v.get('real_mask_f1'))} | {fmt(v.get('real_mask_acc'))} | {fmt(v.get('real_face_rate'), 2)} | "
                      f"{fmt(v.get('real_acc_face'))} | {fmt(v.get('real_acc_fallback'))} | {v.get('real_confusion')} |" for k, v in fv.items()]
    lines += ["", "Rebuild: `.venv/bin/python benchmarks/bench_quality.py --switches all --seeds 42 43` (the ablation), "
              "`--final cpu_best` (the candidate), `--report-only` (this page from the records).", ""]
    (out / "quality.md").write_text("\n".join(lines))
    if len(agg):
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(agg)), 3.8))
        x = np.arange(len(agg))
        ax.bar(x - 0.27, agg.f1, 0.27, yerr=agg.f1_sd.fillna(0), label="OOF macro-F1", color="tab:blue")
        ax.bar(x, agg.vote, 0.27, yerr=agg.vote_sd.fillna(0), label="OOF macro-F1, person vote", color="tab:green")
        ax.bar(x + 0.27, agg.real.fillna(0), 0.27, label="real photos: mask F1", color="tab:orange")
        if not pd.isna(ref): ax.axhline(ref, color="k", ls="--", lw=1, label="reference OOF macro-F1")
        ax.set_xticks(x, agg.switch, rotation=20, ha="right", fontsize=8); ax.set_ylim(0, 1)
        ax.set_ylabel("score"); ax.legend(fontsize=7, loc="upper center", ncol=4); ax.set_title("quality levers (utkmask fold 0; realmask-dev)", fontsize=9)
        fig.tight_layout(); fig.savefig(out / "quality.png", dpi=120); plt.close(fig)
    return out / "quality.md"


def main(argv=None):
    args = parse_args(argv)
    names = list(SWITCHES) if args.switches == "all" else [n.strip() for n in args.switches.split(",") if n.strip()]
    unknown = [n for n in names if n not in SWITCHES]
    if unknown: sys.exit(f"unknown switches {unknown}; known: {', '.join(SWITCHES)}")
    res = pd.DataFrame()
    if args.final: final(args)
    else: res = ablation(args, names)
    md = write_report(res, args, project_root() / args.out)
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
