"""The speed benchmarks' ``--quick`` modes, run as the README gives them: every code path of
benchmarks/gpu.py (on the CPU: training variants, compile, prediction with PyTorch and ONNX Runtime,
the JSON) and of benchmarks/train_throughput.py, so that a scarce GPU session is never spent on a
broken script. Each runs in its own process (Lightning and torch.compile change process-wide state);
about 15 + 30 s on 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OCTSEG_ORT_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _quick(script: str, out: Path, *extra: str) -> dict:
    proc = _run(script, "--quick", "--threads", "1", "--out", str(out), *extra)
    assert proc.returncode == 0, f"{script} --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "QUICK SMOKE TEST" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["machine"]["torch"] and doc["figures"]["quick"] is True
    return doc["figures"]


def test_gpu_quick_runs_every_path_on_cpu(tmp_path):
    f = _quick("gpu.py", tmp_path / "gpu_quick.json")
    assert f["errors"] == [] and f["skipped"] == [] and f["complete"] is True
    assert {"float32", "bfloat16"} <= set(f["matmul_peak"])
    train = f["training"]["resnet50"]
    assert set(train["variants"]) == {"original loop (fp32)", "octseg fp32", "octseg fp32, channels-last",
                                      "octseg bf16-mixed, channels-last", "octseg 16-mixed, channels-last",
                                      "octseg bf16-mixed, channels-last, non-deterministic",
                                      "octseg bf16-mixed, channels-last, compiled"}
    assert train["flops_per_step"]["original"] > 0 and train["flops_per_step"]["octseg"] > 0
    for v in train["variants"].values():
        assert v["median_s_per_step"] > 0 and v["achieved_flops_per_s"] > 0 and v["pct_of_peak"] > 0
        assert v["ratio_vs_original"] > 0
    pred = f["predict"]["variants"]
    assert set(pred) == {"torch, batch 8", "torch, batch 32", "torch channels-last, batch 32",
                         "onnxruntime CPU, batch 32"}  # onnxruntime comes with octseg[dev]
    assert all(v["bscans_per_s"] > 0 and len(v["runs"]) == 2 for v in pred.values())
    prof = f["profile"]["resnet50"]  # torch.profiler's tables beside the JSON
    assert "ms/step" in prof["summary"] and "aten::" in (tmp_path / prof["file"]).read_text()


def test_train_throughput_quick(tmp_path):
    f = _quick("train_throughput.py", tmp_path / "tt.json", "--contiguous")
    v = f["variants"]
    assert {"original loop (fp32)", "octseg (fp32, channels-last)", "octseg (fp32, contiguous)",
            "demo mean_teacher (fp32)", "demo supervised (fp32)"} <= set(v)
    assert v["octseg (fp32, contiguous)"]["channels_last"] is False
    assert v["octseg (fp32, channels-last)"]["channels_last"] is True
    for s in v.values():
        assert s["flops_per_step"] > 0 and s["achieved_flops_per_s"] > 0 and s["pct_of_peak"] > 0
        conv = f["conv_peak"]["1"]["flops_per_s"]  # the second ceiling, measured in the same run
        assert s["pct_of_conv_peak"] == pytest.approx(100.0 * s["achieved_flops_per_s"] / conv)
    assert v["original loop (fp32)"]["ratio_vs_original"] == 1.0
    assert f["matmul_peak"]["1"]["best_flops_per_s"] > 0


def test_conv_peak_counts_the_convolutions_multiply_adds(monkeypatch):
    """2 FLOPs per multiply-add of a 3x3 convolution, over the best of the timed repeats."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import _speed

    clock = iter([0.0, 2.0, 10.0, 11.0, 20.0, 24.0])  # repeats of 2 s, 1 s and 4 s: the best is 1 s
    monkeypatch.setattr(_speed.time, "perf_counter", lambda: next(clock))
    p = _speed.conv_peak("cpu", channels=4, hw=5, batch=3, repeats=3)
    assert p["best_seconds"] == 1.0
    assert p["flops_per_s"] == 2 * 3 * 4 * 4 * 9 * 5 * 5


def test_gpu_refuses_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: nothing to refuse")
    proc = _run("gpu.py", "--out", str(tmp_path / "g.json"), timeout=120)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "--quick" in proc.stderr
    assert not (tmp_path / "g.json").exists()


def test_clinic_read_quick_reads_back_what_it_wrote(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.clinic_read import main

    out = tmp_path / "clinic_read_quick.json"
    assert main(["--quick", "--repeats", "1", "--out", str(out)]) == 0  # in-process: it starts no Lightning
    f = json.loads(out.read_text())["figures"]
    assert f["quick"] is True and f["bscans"] == 3 and f["warm_best_seconds"] > 0


def test_predict_throughput_repeats_on_a_tiny_volume(tmp_path):
    """Two timed runs per backend (it once wrote both into one folder, which octseg predict refuses)."""
    out = tmp_path / "pt.json"
    proc = _run("predict_throughput.py", "--slices", "2", "--repeats", "2", "--batch", "2", "--no-model-only",
                "--out", str(out))
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    f = json.loads(out.read_text())["figures"]
    assert set(f["backends"]) == {"torch", "onnx"}
    assert all(len(b["all_runs"]) == 2 and b["bscans_per_s"] > 0 for b in f["backends"].values())


def test_machine_info_records_an_instruction_set_cap(monkeypatch):
    """A run timed with AVX-512 switched off must not read as one on a CPU without it, nor as this CPU's full speed."""
    from benchmarks._common import ISA_CAPS, machine_info

    for k in ISA_CAPS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    info = machine_info()
    assert info["isa_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"} and info["torch_cpu_capability"]
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert "isa_caps" not in machine_info()


def test_strong_augmentation_controls_are_supervised_and_by_name_only():
    from benchmarks._common import EXTRA, STRONG_ABLATIONS, all_methods, method_overrides, supervised_only
    from benchmarks.label_efficiency import known_methods

    assert STRONG_ABLATIONS and not set(STRONG_ABLATIONS) & set(all_methods())  # not in any default plan
    for name in STRONG_ABLATIONS:
        assert name in known_methods() and name in EXTRA and supervised_only(name)  # never the "best semi"
        assert "method.name=supervised" in method_overrides(name) and "augment.strong=true" in method_overrides(name)
    assert supervised_only("supervised_strong") and not supervised_only("fixmatch")
    assert not supervised_only("supervised_mim")  # pretrained on the pool: semi-supervised


def test_ssl_tuning_variants_are_semi_supervised_and_by_name_only(tmp_path):
    from benchmarks._common import EXTRA, SSL_TUNING, all_methods, base_method, method_overrides, supervised_only
    from benchmarks._pool_pretrain import overrides_of
    from benchmarks.label_efficiency import known_methods
    from octseg.config import load_config

    from conftest import tiny_teacher

    assert SSL_TUNING and not set(SSL_TUNING) & set(all_methods())
    for name in SSL_TUNING:
        assert name in known_methods() and name in EXTRA and not supervised_only(name)
        teacher = [f"method.self_training.teacher={tiny_teacher()}"]  # (only self-training reads it)
        cfg = load_config("demo_cpu", ["data.path=x", *method_overrides(name), *teacher])  # every override is a real key
        assert cfg.method.name == base_method(name) in ("fixmatch", "unimatch", "self_training", "mean_teacher")
    assert not load_config("demo_cpu", ["data.path=x", *method_overrides("self_training_weak"), *teacher]
                           ).method.self_training.strong
    mt = load_config("demo_cpu", ["data.path=x", *method_overrides("mean_teacher_cutmix_w10")]).method.mean_teacher
    assert (mt.cutmix, mt.consistency_weight) == (True, 10)
    assert load_config("demo_cpu", ["data.path=x", *method_overrides("fixmatch_u12")]).data.unlabelled_batch == 12
    assert load_config("demo_cpu", ["data.path=x", *method_overrides("unimatch_t0.8")]).method.unimatch.threshold == 0.8
    enc = tmp_path / "enc.pth"  # a tuned variant from the pool-pretrained encoder
    enc.touch()
    cfg = load_config("demo_cpu", ["data.path=x", *overrides_of("unimatch_mim_t0.8", {"mim": enc})])
    assert (cfg.method.name, cfg.method.unimatch.threshold, cfg.model.encoder_weights) == ("unimatch", 0.8, str(enc))


def test_label_efficiency_refuses_an_unknown_method_naming_it(capsys):
    """A misspelt variant (threshold 0.7 is not among the knobs) stops before any data is made, naming it."""
    from benchmarks.label_efficiency import main

    with pytest.raises(SystemExit) as exc:
        main(["--methods", "fixmatch_t0.6", "fixmatch_t0.7"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--methods: unknown ['fixmatch_t0.7']" in err and "fixmatch_t0.6" in err


@pytest.mark.parametrize("name", ["label_efficiency_1v_fresh_seeds", "label_efficiency_2v_tuning"])
def test_label_efficiency_statistics_reproduce_a_committed_result(name, capsys):
    """The statistics work on the per-run records alone: from a committed result's runs they give back its
    summary, baselines, paired differences, convergence and targets exactly."""
    from benchmarks._label_efficiency_report import aggregate, evaluate_targets

    fig = json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())["figures"]
    s = fig["settings"]
    classes = list(fig["runs"][0]["scores"]["test"]["dice"])
    agg = aggregate(fig["runs"], s["regimes"], s["methods"], classes,
                    with_reference=bool(fig["reference_all_labelled"]))
    for key, value in agg.items():
        assert json.dumps(value, sort_keys=True) == json.dumps(fig[key], sort_keys=True), key
    targets = evaluate_targets(agg, s["regimes"], s["methods"], s["labelled_volumes"])
    assert json.dumps(targets, sort_keys=True) == json.dumps(fig["targets"], sort_keys=True)
    assert "NOT met" in capsys.readouterr().out


def test_label_efficiency_replots_a_written_result_and_names_a_bad_one(tmp_path, capsys):
    from benchmarks.label_efficiency import main

    png = tmp_path / "fig.png"
    result = ROOT / "benchmarks" / "results" / "label_efficiency_1v_fresh_seeds.json"
    assert main(["--replot", str(result), "--plot", str(png)]) == 0
    assert png.stat().st_size > 10_000
    bad = tmp_path / "other.json"
    bad.write_text('{"benchmark": "duke", "figures": {}}')
    with pytest.raises(SystemExit) as exc:
        main(["--replot", str(bad)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"{bad}: not a label_efficiency result" in err
    assert not bad.with_suffix(".png").exists()


def test_label_efficiency_prices_a_larger_unlabelled_batch():
    from benchmarks.label_efficiency import estimate_seconds

    one = lambda m: estimate_seconds([(0, "1v", m)], 10, 30)  # noqa: E731
    assert one("fixmatch_t0.6") == one("fixmatch") < one("fixmatch_u12") < one("unimatch_u12")
    assert one("unimatch_mim_t0.8") == one("unimatch") < one("unimatch_u12")


def test_label_efficiency_refuses_jobs_below_one(capsys):
    from benchmarks.label_efficiency import main

    with pytest.raises(SystemExit) as exc:
        main(["--jobs", "0"])
    assert exc.value.code == 2 and "--jobs 0: give 1 or more" in capsys.readouterr().err


def test_a_pruned_run_is_reused_and_a_run_without_best_ckpt_trained_again(tiny_prepared, tmp_path, one_thread):
    """Benchmarks delete a scored run's last.ckpt; the run stays finished and reusable from best.ckpt. A finished
    run whose best.ckpt is gone trains again, to the same weights."""
    import torch
    from conftest import tiny_train_overrides

    from benchmarks._common import prune_last, run_training
    from octseg.config import load_config

    cfg = load_config("demo_cpu", tiny_train_overrides(tiny_prepared, **{"trainer.max_epochs": 1,
                                                                         "trainer.steps_per_epoch": 2}))
    run = tmp_path / "run"
    prune_last(run, keep_last=False)  # nothing there yet: nothing happens
    best, last, info = run_training(cfg, run)
    assert best.is_file() and last.is_file() and not info["reused"]
    prune_last(run, keep_last=True)
    assert last.is_file()
    weights = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    prune_last(run, keep_last=False)
    assert best.is_file() and not last.exists()
    again, _, info = run_training(cfg, run)
    assert info["reused"] and again == best
    best.unlink()
    again, _, info = run_training(cfg, run)
    assert not info["reused"] and again.is_file()
    retrained = torch.load(again, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(weights[k], retrained[k]) for k in weights)


def test_a_finished_run_is_reused_whatever_other_methods_options_say(tiny_prepared, tmp_path, one_thread):
    """A method reads only its own option section: a supervised run written when another method had other defaults
    is the same run, and is reused; a change to its own settings is still refused, naming the key."""
    from conftest import tiny_train_overrides

    from benchmarks._common import run_training
    from octseg.config import load_config

    def cfg(*extra):
        return load_config("demo_cpu", tiny_train_overrides(tiny_prepared, **{"trainer.max_epochs": 1,
                                                                             "trainer.steps_per_epoch": 2}) + list(extra))

    run = tmp_path / "run"
    best, _, _ = run_training(cfg("method.self_training.strong=true"), run)
    again, _, info = run_training(cfg("method.self_training.strong=false", "method.fixmatch.threshold=0.5"), run)
    assert info["reused"] and again == best
    with pytest.raises(SystemExit, match=r"other settings \(optim.lr: 0.003 -> 0.01"):
        run_training(cfg("optim.lr=0.01"), run)
    with pytest.raises(SystemExit, match="other settings"):  # its own method's section still counts
        run_training(cfg("method.name=self_training", "method.self_training.strong=true"), tmp_path / "st")
        run_training(cfg("method.name=self_training", "method.self_training.strong=false"), tmp_path / "st")


def test_pool_pretrained_variant_pretrains_on_training_volumes_only(tiny_prepared, tmp_path, one_thread):
    """label_efficiency's ``*_mim`` variants: one encoder per workdir, pretrained on the training
    volumes' B-scans only, and the variant's runs start from it."""
    from benchmarks._pool_pretrain import overrides_of, pool_encoder
    from octseg.config import load_config
    from octseg.data.prepared import PreparedDataset

    ds = PreparedDataset(tiny_prepared)
    net = load_config("demo_cpu").model
    vols = sorted({s.volume for s in ds.slices})
    train = vols[:3]
    enc = pool_encoder(tmp_path, ds, train, "mim", (32, 32), net, quick=True)
    assert enc.is_file()
    pooled = sorted(p.stem for p in (tmp_path / "pretrain-pool" / "images").glob("*.png"))
    assert pooled == sorted(s.id for s in ds.slices if s.volume in train)
    mtime = enc.stat().st_mtime_ns
    assert pool_encoder(tmp_path, ds, train, "mim", (32, 32), net, quick=True) == enc and enc.stat().st_mtime_ns == mtime  # reused
    assert overrides_of("supervised_mim", {"mim": enc}) == ["method.name=supervised", f"model.encoder_weights={enc}"]
    longer = pool_encoder(tmp_path, ds, train, "mim3k", (32, 32), net, quick=True)  # its own file, same pool
    assert longer.name == "pool-mim3k.pth" and enc.stat().st_mtime_ns == mtime
    assert overrides_of("supervised_mim3k", {"mim": enc, "mim3k": longer})[-1] == f"model.encoder_weights={longer}"
    assert overrides_of("fixmatch_dice", {})[0] == "method.name=fixmatch"


def test_every_pool_pretrained_variant_names_a_known_method_and_encoder():
    from benchmarks._common import named_methods
    from benchmarks._pool_pretrain import POOL_ENCODERS, POOL_PRETRAINED
    from octseg.training.pretrain import OBJECTIVES

    assert all(base in named_methods() and key in POOL_ENCODERS for base, key in POOL_PRETRAINED.values())
    assert all(obj in OBJECTIVES and steps > 0 for obj, steps in POOL_ENCODERS.values())
    assert POOL_ENCODERS["mim3k"] == ("mim", 3 * POOL_ENCODERS["mim"][1])


def test_duke_cv_pretrained_variant_needs_an_encoder_file(tmp_path, capsys):
    from benchmarks.duke_cv import main

    (tmp_path / "duke-dme-train").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["--shared", str(tmp_path), "--variants", "pretrained"])
    assert exc.value.code == 2 and "--variants pretrained: not among ['scratch']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--shared", str(tmp_path), "--encoder-weights", f"mim={tmp_path / 'missing.pth'}"])
    assert exc.value.code == 2 and "missing.pth is no such file" in capsys.readouterr().err


def test_duke_cv_encoder_variants_are_named_and_unique(tmp_path):
    from benchmarks._common import encoder_variants

    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"x"), b.write_bytes(b"x")
    assert encoder_variants([str(a)]) == {"pretrained": a}
    assert encoder_variants([f"mim={a}", f"synthetic={b}"]) == {"mim": a, "synthetic": b}
    for bad in ([f"scratch={a}"], [f"mim={a}", f"mim={b}"], [f"={a}"]):
        with pytest.raises(ValueError, match="must be new and not 'scratch'"):
            encoder_variants(bad)


def test_duke_counts_pretraining_on_unlabelled_b_scans_as_semi_supervision(tmp_path):
    """An encoder pretrained on the pool (mim, denoise) makes its variants semi-supervised; one pretrained on
    synthetic volumes with their masks, or weights without octseg metadata, leaves them supervised baselines."""
    import torch

    from benchmarks.duke import pretrained_on_unlabelled, split_variant, unlabelled_use
    from octseg.models import ENCODER_META_KEY

    files = {}
    for objective in ("mim", "denoise", "synthetic", None):
        files[objective] = tmp_path / f"{objective}.pth"
        obj = {"state_dict": {"w": torch.zeros(1)}}
        if objective:
            obj[ENCODER_META_KEY] = {"objective": objective, "encoder": "resnet18"}
        torch.save(obj, files[objective])
    assert [pretrained_on_unlabelled(files[o]) for o in ("mim", "denoise", "synthetic", None)] == [
        True, True, False, False]
    assert split_variant("fixmatch@mim") == ("fixmatch", "mim") and split_variant("fixmatch") == ("fixmatch", None)
    pre = {"mim"}
    assert [unlabelled_use(m, pre) for m in ("supervised@scratch", "supervised_strong@synthetic", "supervised@mim",
                                             "fixmatch@scratch", "fixmatch@mim", "supervised_fda", "supervised")] == [
        "-", "-", "pretraining", "training", "both", "training", "-"]
    # bare names take the overrides' encoder: model.encoder_weights=<mim file> makes them learn from the pool
    assert [unlabelled_use(m, pre, bare_pretrained=True) for m in ("supervised", "fixmatch", "supervised@scratch")] == [
        "pretraining", "both", "-"]


def test_duke_refuses_a_variant_of_an_unnamed_encoder(tmp_path, capsys):
    from benchmarks.duke import main

    for d in ("duke-dme-train", "duke-subject01-unlabeled", "kermany-oct2017-test"):
        (tmp_path / d).mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["--shared", str(tmp_path), "--methods", "supervised@scratch", "fixmatch@mim"])
    assert exc.value.code == 2 and "no encoder 'mim'; name it with --encoder-weights mim=PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--shared", str(tmp_path), "--methods", "nosuch@scratch"])
    assert exc.value.code == 2 and "--methods nosuch@scratch: choose among" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # the by-name-only knobs are among the choices, a misspelt one is not
        main(["--shared", str(tmp_path), "--methods", "fixmatch_t0.7@scratch"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--methods fixmatch_t0.7@scratch: choose among" in err and "'fixmatch_t0.6'" in err


def test_duke_replots_a_written_result_and_refuses_another_benchmark(tmp_path, capsys):
    from benchmarks.duke import main

    png = tmp_path / "duke.png"
    assert main(["--replot", str(ROOT / "benchmarks" / "results" / "duke_1s_encoders.json"), "--plot", str(png)]) == 0
    assert png.stat().st_size > 10_000
    with pytest.raises(SystemExit) as exc:
        main(["--replot", str(ROOT / "benchmarks" / "results" / "label_efficiency_2v.json"), "--plot", str(png)])
    assert exc.value.code == 2 and "not a duke result" in capsys.readouterr().err


def test_duke_cv_chooses_the_encoder_per_subject_on_its_inner_cv_only():
    from benchmarks.duke_cv import KINDS, summarise

    def rec(variant, subject, inner, held_out):
        return {"variant": variant, "subject": subject, "inner_cv_fluid_dice": inner,
                "scores": {k: held_out for k in (*KINDS, *(f"{k}_band" for k in KINDS))}}

    # on S1 "a" has the better inner CV but the worse held-out score: the choice must not peek at S1
    per_subject = [rec("scratch", "S1", 0.5, 0.50), rec("scratch", "S2", 0.5, 0.60), rec("scratch", "S3", 0.5, 0.40),
                   rec("a", "S1", 0.7, 0.40), rec("a", "S2", 0.4, 0.90), rec("a", "S3", 0.6, 0.50),
                   rec("b", "S1", 0.6, 0.80), rec("b", "S2", 0.5, 0.70), rec("b", "S3", 0.5, 0.90)]
    summary, rows = summarise(per_subject, ["scratch", "a", "b"], ["S1", "S2", "S3"])
    assert summary["selected_encoder"] == {"S1": "a", "S2": "b", "S3": "a"}
    assert summary["selected - scratch"]["ensemble"]["diffs"] == pytest.approx([-0.1, 0.1, 0.1])
    assert summary["a - scratch"]["single"]["diffs"] == pytest.approx([-0.1, 0.3, 0.1])
    assert summary["b"]["ensemble"]["mean"] == pytest.approx(0.8)
    assert summary["b"]["paired"]["ensemble - single"]["mean"] == 0
    assert ["selected encoder", "by inner CV", "S1: a, S2: b, S3: a"] in rows
    assert "selected_encoder" not in summarise(per_subject[:6], ["scratch", "a"], ["S1", "S2", "S3"])[0]


def test_duke_cv_keeps_each_kind_of_run_apart():
    sys.path.insert(0, str(ROOT))
    from benchmarks.duke_cv import default_paths

    paths = {(q, sel): default_paths(q, sel) for q in (False, True) for sel in ("best", "last")}
    assert paths[(False, "best")][0].name == "duke_cv.json"  # the committed figures
    assert paths[(False, "last")][0].name == "duke_cv_select_last.json"
    assert len({p[0] for p in paths.values()}) == len({p[1] for p in paths.values()}) == 4


def test_self_training_learns_from_the_teacher_run_of_its_own_labels(tiny_prepared, tmp_path, one_thread):
    """Both benchmarks train a self-training student after its teacher (the supervised run of the same seed or
    rotation, from the same encoder) and point it at that run's best checkpoint; an unfinished teacher is named."""
    from conftest import tiny_train_overrides

    from benchmarks import duke, label_efficiency
    from benchmarks._common import run_training, teacher_override
    from octseg.config import load_config

    teachers_of = label_efficiency.teachers_of
    assert teachers_of("self_training") == ("supervised",) and teachers_of("selftrain_mim") == ("supervised_mim",)
    assert teachers_of("fixmatch_t0.6_mim") == () and teachers_of("supervised") == ()
    assert teachers_of("selftrain2_weak_mim") == ("selftrain_weak_mim",)  # a second round
    assert teachers_of("selftrain_ens_weak_mim") == ("supervised_mim", "supervised")  # an ensemble teacher
    assert [label_efficiency.teacher_depth(m) for m in ("supervised_mim", "selftrain_weak_mim", "selftrain2_weak_mim",
                                                        "selftrain_ens_weak_mim")] == [0, 1, 2, 1]
    assert label_efficiency.with_teachers(["selftrain2_weak_mim", "fixmatch"]) == [
        "supervised", "supervised_strong", "supervised_mim", "fixmatch", "selftrain_weak_mim", "selftrain2_weak_mim"]
    assert label_efficiency.with_teachers(["selftrain_ens_weak_mim"]) == [
        "supervised", "supervised_strong", "supervised_mim", "selftrain_ens_weak_mim"]
    assert duke.teachers_of("self_training@mim") == ("supervised@mim",)
    assert duke.teachers_of("self_training") == ("supervised",) and duke.teachers_of("fixmatch@mim") == ()
    assert duke.teachers_of("self_training_weak_ens@synthetic") == ("supervised@synthetic", "supervised@scratch")
    with pytest.raises(SystemExit, match="teacher run has not finished"):
        teacher_override(tmp_path / "supervised")

    base = tiny_train_overrides(tiny_prepared, **{"trainer.max_epochs": 1, "trainer.steps_per_epoch": 2})
    teacher_best, _, _ = run_training(load_config("demo_cpu", base + ["method.name=supervised"]), tmp_path / "supervised")
    override = teacher_override(tmp_path / "supervised")
    assert override == f"method.self_training.teacher={teacher_best}"
    cfg = load_config("demo_cpu", base + ["method.name=self_training", override])
    best, _, info = run_training(cfg, tmp_path / "self_training")
    assert best.is_file() and info["global_step"] == 2
    # two teacher runs: one ensemble teacher, both checkpoints named
    ensemble = teacher_override([tmp_path / "supervised", tmp_path / "self_training"])
    assert ensemble == f"method.self_training.teacher=[{teacher_best},{best}]"
    cfg = load_config("demo_cpu", base + ["method.name=self_training", ensemble])
    assert cfg.method.self_training.teacher == [str(teacher_best), str(best)]


def test_mean_teacher_target_reads_the_form_best_on_validation(capsys):
    """With several forms of Mean Teacher in a result (plain, strong views, CutMix, an encoder), the target is read
    on the one best on validation, never on test, and names it."""
    from benchmarks._common import rank_key
    from benchmarks._label_efficiency_report import aggregate, evaluate_targets

    fig = json.loads((ROOT / "benchmarks" / "results" / "label_efficiency.json").read_text())["figures"]
    s = fig["settings"]
    agg = aggregate(fig["runs"], s["regimes"], s["methods"], list(fig["runs"][0]["scores"]["test"]["dice"]),
                    with_reference=bool(fig["reference_all_labelled"]))
    forms = ["mean_teacher", "mean_teacher_strong"]
    val = {m: rank_key(agg["summary"]["1v"][m]["val"]["mean_foreground"]) for m in forms}
    assert val["mean_teacher"] != val["mean_teacher_strong"]
    target = evaluate_targets(agg, s["regimes"], s["methods"], s["labelled_volumes"])["mean_teacher_above_supervised"]
    assert target["variant"] == max(forms, key=val.get)
    assert target["gains"]["1v"] == agg["summary"]["1v"][target["variant"]]["vs_best_supervised"]["mean"]
    assert f"Mean Teacher ({target['variant']})" in capsys.readouterr().out


def test_a_tie_on_validation_is_reported_with_what_each_pick_would_give(capsys):
    """At 2 labelled volumes the strong- and weak-view self-training runs tie on validation (to 0.000004): the
    target names both, with each one's gain, instead of passing the pick off as a choice."""
    from benchmarks._label_efficiency_report import aggregate, evaluate_targets

    fig = json.loads((ROOT / "benchmarks" / "results" / "label_efficiency_selftrain_weak_mim.json").read_text())["figures"]
    s = fig["settings"]
    agg = aggregate(fig["runs"], s["regimes"], s["methods"], list(fig["runs"][0]["scores"]["test"]["dice"]),
                    with_reference=bool(fig["reference_all_labelled"]))
    targets = evaluate_targets(agg, s["regimes"], s["methods"], s["labelled_volumes"])
    at2 = targets["semi_gain_at_2v"]
    assert {at2["best_semi"], *at2["tied_on_validation"]} == {"selftrain_mim", "selftrain_weak_mim"}
    (other, gain), = at2["tied_on_validation"].items()
    assert gain == agg["summary"]["2v"][other]["vs_best_supervised"]["mean"]
    assert "tied_on_validation" not in targets["semi_gain_at_1v"]
    assert f"tied with {at2['best_semi']} on validation" in capsys.readouterr().out


def test_teacher_agreement_names_a_workdir_without_a_pool(tmp_path, capsys):
    """The ensemble-teacher diagnostic refuses a folder that holds no pool B-scans, naming it."""
    from benchmarks import teacher_agreement

    with pytest.raises(SystemExit):
        teacher_agreement.main([str(tmp_path)])
    assert "pretrain-pool" in capsys.readouterr().err


def test_teacher_agreement_of_a_teacher_with_itself_is_total(tmp_path, capsys):
    """Two runs holding the same checkpoint agree everywhere (IoU 1 where either calls fluid, nothing changed);
    two different networks do not."""
    import json

    import numpy as np
    from conftest import make_tiny_checkpoint
    from PIL import Image

    from benchmarks import teacher_agreement

    pool = tmp_path / "pretrain-pool" / "images"
    pool.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(pool / f"b{i}.png")
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run = tmp_path / "n2-s0" / name
        run.mkdir(parents=True)
        ckpt = make_tiny_checkpoint(run / "best.ckpt", method="supervised", seed=seed)
        (run / "metrics.json").write_text(json.dumps({"best_checkpoint": str(ckpt)}))
    teacher_agreement.main([str(tmp_path), "--seeds", "0", "--members", "a", "b"])
    same = capsys.readouterr().out
    assert "changed on 0.00 % of pixels" in same and "fluid IoU 1.000" in same
    teacher_agreement.main([str(tmp_path), "--seeds", "0", "--members", "a", "c"])
    assert "fluid IoU 1.000" not in capsys.readouterr().out


def test_fluid_share_reports_every_subject_and_pool_with_its_graded_share(tiny_prepared, tmp_path, capsys):
    """The Duke erosion diagnostic: one line per finished run, every volume of the prepared data with its graded
    non-background share (as the masks give it) and every unlabelled pool of the run's config."""
    import json

    import numpy as np
    from conftest import make_tiny_checkpoint

    from benchmarks import fluid_share
    from octseg.config import load_config, save_config
    from octseg.data.prepared import PreparedDataset

    rotation = tmp_path / "r1-2s"
    for name, seed in (("supervised", 1), ("self_training", 2)):
        run = rotation / name
        run.mkdir(parents=True)
        ckpt = make_tiny_checkpoint(run / "best.ckpt", method="supervised", seed=seed)
        (run / "metrics.json").write_text(json.dumps({"best_checkpoint": str(ckpt)}))
        save_config(load_config(None, [f"data.path={tiny_prepared}", f"data.extra_unlabelled=[{tiny_prepared}]"]),
                    run / "config.yaml")
    (rotation / "unfinished").mkdir()  # no metrics.json: not a run to read
    fluid_share.main([str(rotation)])
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in out[1:]] == ["self_training", "supervised"]
    ds = PreparedDataset(tiny_prepared)
    subject = np.array([s.volume for s in ds.slices])
    for v in sorted(set(subject)):
        m = np.asarray(ds.masks)[subject == v]
        graded = 100 * ((m > 0) & (m != 255)).mean()
        assert f"{v} (graded {graded:.2f} %)" in out[1]
    assert f"{tiny_prepared.name} " in out[1]  # the unlabelled pool
    with pytest.raises(SystemExit):
        fluid_share.main([str(tmp_path / "r1-2s" / "unfinished")])
