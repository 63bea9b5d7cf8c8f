"""Issue 24, evaluation side: the report refuses stale or damaged results, a model whose config does not match
its weights is not evaluated, augment does not overwrite its input, --watch follows a run being extended,
IFEval/IFBench kwargs are validated before generation, and smaller input errors get a sentence."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fixtures_results import make_fake_sweep
from sftbench.analysis import report
from sftbench.core import fingerprint as fpr
from sftbench.core.errors import UserError


# ------------------------------------------------------------------------------------ report (item 2)
def _fingerprint_results(res: Path) -> None:
    """Record each trained checkpoint's fingerprint in its summary.json, as sftbench/eval/run.py does."""
    for d in sorted(res.glob("checkpoint-*")):
        s = json.loads((d / "summary.json").read_text())
        if Path(str(s["model_path"])).is_dir():
            s["model_fingerprint"] = fpr.fingerprint(s["model_path"])
            (d / "summary.json").write_text(json.dumps(s))


def _report_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        report.main([str(a) for a in args])
    assert e.value.code == 2
    return capsys.readouterr().err


def test_report_refuses_results_of_weights_retrained_since(tmp_path, capsys):
    run, res = make_fake_sweep(tmp_path)
    _fingerprint_results(res)
    assert report.main([str(res)]) == 0
    capsys.readouterr()
    # a retrain (another seed) into the same run directory: checkpoint-10 now holds other weights
    (run / "checkpoint-10" / "model.safetensors").write_bytes(b"\1" * 16)
    err = _report_error(capsys, res)
    assert (f"{res}: the results of 1 checkpoint(s) are stale or damaged, so the curve, verdict and pick would mix "
            f"them in: checkpoint-10: stale: the weights changed since it was evaluated "
            f"({(run / 'checkpoint-10').resolve()}).") in err
    assert "--allow_incomplete" in err and "Traceback" not in err
    # --allow_incomplete: left out of the table, verdict and pick, and listed in the report
    assert report.main([str(res), "--allow_incomplete"]) == 0
    md = (res / "report.md").read_text()
    assert "**Left out of this report (1 checkpoint(s) with stale or damaged results; rerun the sweep" in md
    assert "- checkpoint-10: stale: the weights changed since it was evaluated" in md
    assert "| 10 | checkpoint-10" not in md and "| 20 | checkpoint-20 (best, pick) |" in md
    assert "Pick: **checkpoint-10**" not in md


def test_report_refuses_incomplete_results(tmp_path, capsys):
    _, res = make_fake_sweep(tmp_path)
    csv_text = (res / "sweep.csv").read_text()
    lines = csv_text.splitlines(keepends=True)
    (res / "sweep.csv").write_text("".join(l for l in lines if ",checkpoint-5," not in l))
    err = _report_error(capsys, res)
    assert f"checkpoint-5: {res / 'checkpoint-5'} is complete but has no row in {res / 'sweep.csv'}" in err
    (res / "sweep.csv").write_text(csv_text)

    strict = res / "checkpoint-20" / "eval_results_strict.jsonl"
    strict.write_text("".join(strict.read_text().splitlines(keepends=True)[:50]))
    err = _report_error(capsys, res)
    assert "checkpoint-20: eval_results_strict.jsonl has 50 rows, its summary.json counts 60 prompts" in err

    (res / "checkpoint-30" / "eval_results_loose.jsonl").unlink()
    (res / "checkpoint-10" / "summary.json").unlink()
    err = _report_error(capsys, res)
    assert "the results of 3 checkpoint(s) are stale or damaged" in err
    assert f"checkpoint-10: sweep.csv has a row for it but {res / 'checkpoint-10'}/summary.json is missing" in err
    assert "checkpoint-30: eval_results_loose.jsonl is missing" in err
    # never mixed in: the table and the verdict use only the intact checkpoints
    sweep = report.load_sweep(res, allow_incomplete=True)
    assert list(sweep.table["checkpoint"]) == ["checkpoint-0", "checkpoint-5"]
    assert set(sweep.outcomes) == {"checkpoint-0", "checkpoint-5"}
    assert sorted(sweep.excluded) == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]


def test_report_non_numeric_sweep_csv_cell(tmp_path, capsys):
    _, res = make_fake_sweep(tmp_path)
    rows = list(csv.DictReader(open(res / "sweep.csv")))
    rows[2]["prompt_strict"] = "abc"
    with open(res / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    err = _report_error(capsys, res)
    assert f"{res / 'sweep.csv'}: row 3 (line 4), column prompt_strict: 'abc' is not a number." in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------ foreign config (item 3)
def _eval_error(capsys, model: Path, out: Path) -> str:
    from sftbench.eval import run as runner
    from sftbench.tasks import data as ifdata

    with pytest.raises(SystemExit) as e:
        runner.main([str(model), str(out), "--data", str(ifdata.TINY_PROMPTS), "--limit", "2", "--device", "cpu",
                     "--max_new_tokens", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert not out.exists()
    return err


def test_eval_refuses_a_config_that_does_not_match_the_weights(tiny_model_dir, tmp_path, capsys):
    import shutil

    from transformers import GPT2Config

    gpt2 = shutil.copytree(tiny_model_dir, tmp_path / "gpt2")
    GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=384).save_pretrained(gpt2)
    err = _eval_error(capsys, gpt2, tmp_path / "out")
    assert (f"error: {gpt2}: could not load the model (its config.json, a gpt2 GPT2LMHeadModel, does not match its "
            f"weights: ") in err
    assert "tensor(s) in the weights are not in the model: model.embed_tokens.weight" in err

    wide = shutil.copytree(tiny_model_dir, tmp_path / "wide")
    c = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**c, "intermediate_size": 2 * c["intermediate_size"]}))
    err = _eval_error(capsys, wide, tmp_path / "out")
    assert (f"error: {wide}: could not load the model (its config.json, a llama LlamaForCausalLM, does not match its "
            f"weights: 6 tensor(s) have another shape, e.g. model.layers.0.mlp.down_proj.weight: [64, 128] in the "
            f"weights, [64, 256] by the config).") in err

    notype = shutil.copytree(tiny_model_dir, tmp_path / "notype")
    (notype / "config.json").write_text(json.dumps({k: v for k, v in c.items() if k != "model_type"}))
    err = _eval_error(capsys, notype, tmp_path / "out")
    assert f"error: {notype}: could not load the model (config.json: Unrecognized model in {notype}." in err


# ------------------------------------------------------------------------------------ augment OUT (item 4)
def _augment_error(capsys, *argv) -> str:
    from sftbench.data import augment as A

    with pytest.raises(SystemExit) as e:
        A.main([str(a) for a in argv])
    assert e.value.code == 2
    return capsys.readouterr().err


def test_augment_refuses_to_overwrite_its_input_or_an_unrelated_file(tmp_path, capsys):
    from sftbench.data import augment as A

    src = tmp_path / "in.jsonl"
    data = "".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}."},
                                            {"role": "assistant", "content": f"{i}."}]}) + "\n" for i in range(4))
    src.write_text(data)
    err = _augment_error(capsys, src, src)
    assert f"OUT {src} is the input file {src}: augmenting in place would overwrite the data it reads." in err
    (tmp_path / "link.jsonl").symlink_to(src)
    assert "is the input file" in _augment_error(capsys, src, tmp_path / "link.jsonl")
    assert src.read_text() == data  # untouched
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    err = _augment_error(capsys, src, notes)
    assert (f"OUT {notes} exists and is not the output of an earlier augmentation (its first record has no "
            f"\"constraints\" field), so it would be replaced. Give another OUT, or pass --force to replace it.") in err
    assert notes.read_text() == "my notes\n"
    # an earlier augmentation's output is replaced; --force replaces anything
    out = tmp_path / "out.jsonl"
    assert A.main([str(src), str(out), "--fraction", "1"]) == 0
    assert A.main([str(src), str(out), "--fraction", "1", "--seed", "2"]) == 0
    assert A.main([str(src), str(notes), "--force"]) == 0
    assert "constraints" in notes.read_text().splitlines()[0]


# ------------------------------------------------------------------------------------ --watch an extended run (item 6)
def test_watch_follows_a_finished_run_that_is_being_extended(tmp_path):
    import os
    import socket
    import threading
    import time

    from fixtures_results import fake_model_dir, make_fake_run
    from sftbench.core.lock import LOCK_NAME
    from sftbench.eval import sweep as sw
    from test_sweep import FakeConfig, FakeEvaluator

    run = make_fake_run(tmp_path / "run", steps=(2,), final_step=4, gpu=False)  # finished at step 4
    res = tmp_path / "res"
    ev = FakeEvaluator()
    assert sw.Sweep(run, res, FakeConfig(limit=2), ev, log=lambda *a: None).run_once() == (2, 0)
    # `--resume_from_checkpoint latest --max_steps 8`: the trainer holds the run's lock while it writes
    (run / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                             "started": "now", "what": "training run"}))
    logs: list[str] = []

    def trainer():
        time.sleep(0.4)
        tmp = run / ".checkpoint-6.tmp"
        fake_model_dir(tmp, 6)
        tmp.rename(run / "checkpoint-6")
        time.sleep(0.4)
        (run / "model.safetensors").write_bytes(b"8" * 16)   # the new final model, step 8
        (run / "trainer_state.json").write_text(json.dumps({"global_step": 8}))
        time.sleep(0.2)
        (run / LOCK_NAME).unlink()

    t = threading.Thread(target=trainer)
    t.start()
    outcome = sw.Sweep(run, res, FakeConfig(limit=2), ev, log=logs.append).watch(poll_s=0.05, timeout_s=30)
    t.join()
    assert outcome == "final"
    assert [c[0] for c in ev.calls] == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert (f"[sftbench.eval.sweep] the final model is evaluated, but a trainer (pid {os.getpid()}) is still writing "
            f"{run} (the run is being extended): watching on") in logs
    # a lock left by a process that is gone does not keep the watch going
    (run / LOCK_NAME).write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": socket.gethostname()}))
    assert sw.Sweep(run, res, FakeConfig(limit=2), ev, log=lambda *a: None).watch(poll_s=0.05, timeout_s=5) == "final"


# ------------------------------------------------------------------------------------ IFEval/IFBench kwargs (items 6, 11)
def _ifeval_row(key, iid, kwargs, prompt="Write about cats."):
    return json.dumps({"key": key, "prompt": prompt, "instruction_id_list": [iid], "kwargs": [kwargs]}) + "\n"


GOOD = _ifeval_row(1, "punctuation:no_comma", {})


@pytest.mark.parametrize("row, why", [
    (_ifeval_row(7, "length_constraints:number_words", {"num_words": 5, "relation": "less than", "colour": "red"}),
     "instruction 1 (length_constraints:number_words): unknown kwarg(s) 'colour' (it takes: num_words, relation)"),
    (_ifeval_row(7, "length_constraints:number_words", {"num_words": "five", "relation": "less than"}),
     "instruction 1 (length_constraints:number_words): kwarg 'num_words' is 'five'; it must be a number"),
    (_ifeval_row(7, "length_constraints:number_words", {"num_words": 5, "relation": "about"}),
     "instruction 1 (length_constraints:number_words): its checker rejects kwargs {'num_words': 5, 'relation': "
     "'about'}: ValueError: The supported relation for comparison must be in ('less than', 'at least'), but about is "
     "given."),
    (_ifeval_row(7, "length_constraints:number_words", {}),
     "instruction 1 (length_constraints:number_words): missing kwarg(s) 'num_words', 'relation' (empty or absent; "
     "the checker would draw random values and score against those)"),
    (_ifeval_row(7, "keywords:existence", {"keywords": "cat"}),
     "instruction 1 (keywords:existence): kwarg 'keywords' is 'cat'; it must be a list of strings"),
])
def test_ifeval_kwargs_are_checked_before_generation(tiny_model_dir, tmp_path, capsys, row, why):
    from sftbench.eval import run as runner

    data = tmp_path / "bad.jsonl"
    data.write_text(GOOD + row)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        runner.main([str(tiny_model_dir), str(out), "--data", str(data), "--device", "cpu", "--max_new_tokens", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f": error: {data.resolve()}:2: key 7: {why}. Fix the kwargs of that row (nothing was generated)." in err
    assert not out.exists()  # no responses.partial.jsonl


def test_shipped_ifeval_and_ifbench_prompts_all_validate():
    from sftbench.tasks import data as ifdata
    from sftbench.tasks import ifbench, scoring

    ps = ifdata.load_prompt_set("full", None, log=lambda *a: None, allow_hub=False)
    assert len(ps.examples) == 541
    scoring.Scorer().check_ids(ps.examples, ps.source)   # raises on any bad row
    rows = ifbench.load_ifbench_prompts()
    assert len(rows) == 294
    reg = ifbench._import_registry().INSTRUCTION_DICT
    scoring.check_kwargs(reg, rows, "ifbench_test.jsonl", lambda v: v is not None)
    bad = [ifdata.Example(5, "Write.", ["count:keywords_multiple"], [{"keyword1": "a", "colour": "red"}], line=3)]
    with pytest.raises(UserError, match=r"^f.jsonl:3: key 5: instruction 1 \(count:keywords_multiple\): unknown "
                                        r"kwarg\(s\) 'colour' \(it takes: keyword1, keyword2, keyword3, keyword4, "
                                        r"keyword5\)"):
        scoring.check_kwargs(reg, bad, "f.jsonl", lambda v: v is not None)


# ------------------------------------------------------------------------------------ smaller ones (item 12)
BOM = b"\xef\xbb\xbf"


def test_utf8_bom_is_accepted_in_jsonl_and_json(tmp_path):
    from sftbench.core.io import read_json
    from sftbench.data.augment import read_chat_jsonl
    from sftbench.data.records import load_records
    from sftbench.tasks import data as ifdata

    conv = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    f = tmp_path / "chat.jsonl"
    f.write_bytes(BOM + (json.dumps(conv) + "\n").encode() * 2)
    assert [(line, rec) for _, line, rec in load_records(str(f))] == [(1, conv), (2, conv)]
    assert read_chat_jsonl(f)[0]["messages"] == conv["messages"]
    j = tmp_path / "chat.json"
    j.write_bytes(BOM + json.dumps([conv]).encode())
    assert read_json(j) == [conv]
    ife = tmp_path / "ifeval.jsonl"
    ife.write_bytes(BOM + GOOD.encode())
    assert [e.key for e in ifdata.load_jsonl(ife)] == [1]


def test_relative_data_path_not_found_is_not_a_hub_download(tmp_path, monkeypatch):
    from sftbench.data.records import load_records

    monkeypatch.chdir(tmp_path)
    for rel in ("data/train.jsonl", "train.jsonl", "sub/dir/x.json"):
        with pytest.raises(UserError) as e:
            load_records(rel)
        assert str(e.value) == (f"no such file: {rel} (relative to the current directory, {tmp_path}). Run from the "
                                f"directory it is relative to, or give an absolute path.")


def test_a_run_named_checkpoint_n_inside_a_run_is_not_one_of_its_checkpoints(tmp_path):
    from fixtures_results import fake_model_dir, make_fake_run
    from sftbench.core import rundir
    from sftbench.eval import sweep as sw

    run = make_fake_run(tmp_path / "run", steps=(5, 10), final_step=None, gpu=False)
    make_fake_run(run / "checkpoint-7", steps=(2,), final_step=3, gpu=False)   # --output_dir run/checkpoint-7
    fake_model_dir(run / "checkpoint-8", 80)                                  # a model copied in from elsewhere
    assert [s for s, _ in rundir.list_checkpoints(run)] == [5, 10]
    assert [c.name for c in sw.discover_checkpoints(run)] == ["checkpoint-5", "checkpoint-10"]
    assert [(s, why) for s, _, why in rundir.incomplete_checkpoints(run)] == [
        (7, "it is another run directory (it holds metrics.jsonl, checkpoint-<step>/ folders)"),
        (8, "its trainer_state.json says step 80, not 8")]


def test_report_refuses_damaged_ifbench_results_too(tmp_path, capsys):
    from fixtures_results import make_fake_ifbench

    run, res = make_fake_sweep(tmp_path)
    ifb = make_fake_ifbench(res, run)
    assert report.main([str(res)]) == 0
    capsys.readouterr()
    (ifb / "checkpoint-5" / "eval_results_loose.jsonl").unlink()
    err = _report_error(capsys, res)
    assert f"{ifb}: the results of 1 checkpoint(s) are stale or damaged" in err
    assert "checkpoint-5: eval_results_loose.jsonl is missing" in err
    assert report.main([str(res), "--allow_incomplete"]) == 0
    md = (res / "report.md").read_text()
    assert md.count("**Left out of this report (1 checkpoint(s)") == 1 and "- checkpoint-5: eval_results_loose" in md


def test_load_model_refuses_weights_it_cannot_place(tiny_model_dir, tmp_path):
    """The second line of defence (hub ids are not pre-checked): from_pretrained's loading info."""
    import shutil

    import torch
    from transformers import GPT2Config

    from sftbench.model.load import load_model

    gpt2 = shutil.copytree(tiny_model_dir, tmp_path / "gpt2")
    GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=384).save_pretrained(gpt2)
    # the trainer's message for the same check (sftbench.model.load.check_loading_info, one home)
    with pytest.raises(UserError, match=rf"^{gpt2}: could not load the model: config.json does not match the "
                                        r"weights: 29 missing from the weights \(e.g. lm_head.weight, .*; 20 in the "
                                        r"weights but not in the model \(e.g. model.embed_tokens.weight, "):
        load_model(str(gpt2), "fp32", torch.device("cpu"))
    assert load_model(str(tiny_model_dir), "fp32", torch.device("cpu")) is not None
