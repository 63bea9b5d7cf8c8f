"""sftbench.eval.run end to end on the tiny model (CPU, seconds): files and fields, resume, bad inputs, run.sh."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sftbench.tasks import data as ifdata
from sftbench.engine import generate as gen
from sftbench.model import hf
from sftbench.model.load import load_model
from sftbench.eval import run as runner
from sftbench.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ifdata.TINY_PROMPTS)


@pytest.fixture(scope="module")
def session():
    return runner.EvalSession(runner.EvalConfig())


def cfg(**kw):
    base = dict(data=TINY, limit=3, max_new_tokens=8, batch_size=2, device="cpu")  # batch 2: several batches
    base.update(kw)
    return runner.EvalConfig(**base)


def read_jsonl(p):
    return [json.loads(l) for l in Path(p).read_text().splitlines() if l.strip()]


def test_output_files_and_fields(tiny_model_dir, tmp_path, session):
    out = tmp_path / "checkpoint-7"
    s = runner.evaluate_checkpoint(str(tiny_model_dir), out, cfg(), loaded=session)
    assert sorted(p.name for p in out.iterdir()) == ["eval_results_loose.jsonl", "eval_results_strict.jsonl",
                                                     "responses.jsonl", "summary.json"]  # no GPU: no memory samples
    assert json.loads((out / "summary.json").read_text()) == s
    resp = read_jsonl(out / "responses.jsonl")
    assert [r["key"] for r in resp] == [1, 2, 3]
    for r in resp:
        assert set(r) == {"key", "prompt", "prompt_text", "response", "generated_tokens", "hit_cap"}
        assert r["prompt_text"] == f"<|im_start|>user\n{r['prompt']}<|im_end|>\n<|im_start|>assistant\n"
        assert 1 <= r["generated_tokens"] <= 8 and (r["generated_tokens"] == 8 or not r["hit_cap"])
    for name in ("strict", "loose"):
        rows = read_jsonl(out / f"eval_results_{name}.jsonl")
        assert [r["key"] for r in rows] == [1, 2, 3]
        assert set(rows[0]) == {"follow_all_instructions", "follow_instruction_list", "instruction_id_list",
                                "prompt", "response", "key"}
        assert [r["response"] for r in rows] == [r["response"] for r in resp]
    assert s["complete"] is True and s["model_path"] == str(tiny_model_dir) and s["step"] is None
    st = s["settings"]
    assert {k: st[k] for k in ("backend", "max_new_tokens", "batch_size", "dtype", "device", "subset", "limit",
                                "system_prompt", "chat_template", "padding_side", "seed")} == {
        "backend": "hf", "max_new_tokens": 8, "batch_size": 2, "dtype": "fp32", "device": "cpu", "subset": "full",
        "limit": 3, "system_prompt": "default", "chat_template": "model", "padding_side": "left", "seed": 0}
    assert st["data_path"] == str(Path(TINY).resolve()) and len(st["data_sha256"]) == 64
    assert s["settings_hash"] == runner.expected_settings_hash(str(tiny_model_dir), cfg(), session)
    assert set(s["accuracy"]) == {"prompt_strict", "inst_strict", "prompt_loose", "inst_loose"}
    for a in s["accuracy"].values():
        assert 0 <= a["ci95"][0] <= a["value"] <= a["ci95"][1] <= 1
    assert s["counts"] == {"prompts": 3, "instructions": 5, "hit_cap": sum(r["hit_cap"] for r in resp)}
    assert s["generation"]["generated_tokens"] == sum(r["generated_tokens"] for r in resp)
    assert s["generation"]["tokens_per_s"] > 0 and s["wall_s"] > 0
    assert set(s["per_category"]["strict"]) == {"punctuation", "change_case", "detectable_content",
                                                "length_constraints", "keywords"}
    for k in ("torch_peak_allocated_gib", "nvml_peak_gib", "gpu_name"):
        assert k in s["memory"]
    # The scores in the summary are the ones in the per-prompt files.
    strict = read_jsonl(out / "eval_results_strict.jsonl")
    assert s["accuracy"]["prompt_strict"]["value"] == sum(r["follow_all_instructions"] for r in strict) / 3
    # A rerun with the same settings is a no-op returning the same summary.
    mtime = (out / "summary.json").stat().st_mtime_ns
    assert runner.evaluate_checkpoint(str(tiny_model_dir), out, cfg(), loaded=session) == s
    assert (out / "summary.json").stat().st_mtime_ns == mtime


def test_finish_and_stop_ids(tiny_tokenizer):
    assert hf.finish([5, 6, 2, 9], [0, 2], 8) == ([5, 6], 3, False)
    assert hf.finish([5, 6, 7], [0, 2], 3) == ([5, 6, 7], 3, True)
    assert hf.finish([0], [0, 2], 3) == ([], 1, False)
    from transformers import GenerationConfig

    assert hf.stop_token_ids(tiny_tokenizer, GenerationConfig(eos_token_id=0)) == [0, 2]


def test_resume_after_interruption(tiny_model_dir, tmp_path, session, monkeypatch):
    c = cfg(limit=5, batch_size=2)
    ref = runner.evaluate_checkpoint(str(tiny_model_dir), tmp_path / "ref", c, loaded=session)
    calls = {"n": 0}
    real = gen.HFGenerator.generate

    def crash_after_one_batch(self, ids):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, ids)

    monkeypatch.setattr(gen.HFGenerator, "generate", crash_after_one_batch)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate_checkpoint(str(tiny_model_dir), out, c, loaded=session)
    assert not (out / "summary.json").exists() and not (out / "responses.jsonl").exists()
    partial = read_jsonl(out / runner.PARTIAL)
    assert len(partial) == 2
    # A torn last line (a crash mid-write) is tolerated.
    with open(out / runner.PARTIAL, "a") as f:
        f.write('{"key": 4, "prom')
    seen = []

    def record(self, ids):
        seen.append(len(ids))
        return real(self, ids)

    monkeypatch.setattr(gen.HFGenerator, "generate", record)
    s = runner.evaluate_checkpoint(str(tiny_model_dir), out, c, loaded=session)
    assert sum(seen) == 3  # only the 3 missing prompts were generated
    assert s["generation"]["new_prompts"] == 3
    assert read_jsonl(out / "responses.jsonl") == read_jsonl(tmp_path / "ref" / "responses.jsonl")
    assert s["accuracy"] == ref["accuracy"] and s["settings_hash"] == ref["settings_hash"]
    assert not (out / runner.PARTIAL).exists() and not (out / runner.PARTIAL_SETTINGS).exists()


def test_unfinished_run_with_other_settings_is_kept(tiny_model_dir, tmp_path, session, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(gen.HFGenerator, "generate", lambda self, ids: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate_checkpoint(str(tiny_model_dir), out, cfg(), loaded=session)
    with pytest.raises(UserError, match="unfinished run of this model with other settings.*max_new_tokens: 8 -> 9"):
        runner.evaluate_checkpoint(str(tiny_model_dir), out, cfg(max_new_tokens=9), loaded=session)
    assert (out / runner.PARTIAL_SETTINGS).exists()


def _no_out(out):
    assert not out.exists(), f"{out} was created"


def test_bad_model_paths(tmp_path, tiny_model_dir, session):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="does not exist"):
        runner.evaluate_checkpoint(str(tmp_path / "nope"), out, cfg(), loaded=session)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(tiny_model_dir / "config.json", no_weights)
    with pytest.raises(UserError, match="no weights"):
        runner.evaluate_checkpoint(str(no_weights), out, cfg(), loaded=session)
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / f, no_tok)
    with pytest.raises(UserError, match="no tokenizer"):
        runner.evaluate_checkpoint(str(no_tok), out, cfg(), loaded=session)
    _no_out(out)


def test_no_chat_template(tmp_path, session):
    from sftbench.model.tiny import make_tiny_model_dir

    d = make_tiny_model_dir(tmp_path / "base", chat_template=False)
    out = tmp_path / "out"
    # no template and none given: plain ChatML, as training uses it, said and recorded (tests/test_chat_template.py)
    s = runner.evaluate_checkpoint(str(d), out, cfg(limit=1), loaded=session)
    assert s["settings"]["chat_template"] == "chatml (tokenizer has none)"
    s = runner.evaluate_checkpoint(str(d), tmp_path / "out2", cfg(limit=1, chat_template="plain_chatml"), loaded=session)
    assert s["settings"]["chat_template"] == "plain_chatml" and len(s["settings"]["chat_template_sha256"]) == 64


def test_bad_ifeval_file(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    lines = ifdata.TINY_PROMPTS.read_text().splitlines()
    bad.write_text("\n".join(lines[:2] + ['{"key": 9, "prompt": "x", "kwargs": []}']) + "\n")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"bad.jsonl:3: missing field"):
        runner.evaluate_checkpoint(str(tiny_model_dir), out, cfg(data=str(bad)))
    _no_out(out)


def test_out_of_another_model(tmp_path, tiny_model_dir, session):
    from sftbench.model.tiny import make_tiny_model_dir

    other = make_tiny_model_dir(tmp_path / "other", seed=1)
    out = tmp_path / "out"
    runner.evaluate_checkpoint(str(tiny_model_dir), out, cfg(limit=1), loaded=session)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match="results of another model"):
        runner.evaluate_checkpoint(str(other), out, cfg(limit=1), loaded=session)
    with pytest.raises(UserError, match="other settings.*limit: 1 -> 2"):
        runner.evaluate_checkpoint(str(tiny_model_dir), out, cfg(limit=2), loaded=session)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_same_checkpoint_relative_absolute_or_symlinked_is_one_model(tmp_path, tiny_model_dir, session, monkeypatch):
    """Results name a local model by its resolved path: a rerun spelled differently returns them as they are."""
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    shutil.copytree(tiny_model_dir, run / "checkpoint-2")
    (tmp_path / "link").symlink_to(run / "checkpoint-2")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "res"
    s = runner.evaluate_checkpoint("runs/a/checkpoint-2", out, cfg(limit=1), loaded=session)
    assert s["model_path"] == str((run / "checkpoint-2").resolve())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for spelled in (str(run / "checkpoint-2"), "./runs/a/../a/checkpoint-2", "link"):
        assert runner.evaluate_checkpoint(spelled, out, cfg(limit=1), loaded=session) == s
        assert runner.expected_settings_hash(spelled, cfg(limit=1), session) == s["settings_hash"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_score_only(tmp_path, tiny_model_dir, session):
    out = tmp_path / "gen"
    s = runner.evaluate_checkpoint(str(tiny_model_dir), out, cfg(), loaded=session)
    rescored = runner.evaluate_checkpoint(None, tmp_path / "rescored", cfg(limit=None, score_only=str(out / "responses.jsonl")),
                                          loaded=session)
    assert rescored["accuracy"] == s["accuracy"] and rescored["settings"]["backend"] == "score_only"
    assert read_jsonl(tmp_path / "rescored" / "eval_results_loose.jsonl") == read_jsonl(out / "eval_results_loose.jsonl")
    # Google's format (prompt + response, no key), and a foreign prompt named by line
    g = tmp_path / "google.jsonl"
    g.write_text(json.dumps({"prompt": ifdata.load_jsonl(TINY)[0].prompt, "response": "no commas"}) + "\n"
                 + json.dumps({"prompt": "some other prompt", "response": "x"}) + "\n")
    with pytest.raises(UserError, match=r"google.jsonl:2: this prompt is not in the prompt set"):
        runner.evaluate_checkpoint(None, tmp_path / "g", cfg(limit=None, score_only=str(g)), loaded=session)
    g.write_text(g.read_text().splitlines()[0] + "\n")
    r = runner.evaluate_checkpoint(None, tmp_path / "g", cfg(limit=None, score_only=str(g)), loaded=session)
    assert r["accuracy"]["prompt_strict"]["value"] == 1.0 and r["counts"]["prompts"] == 1


def _run_sh(cwd, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)}
    return subprocess.run(["bash", str(Path(cwd) / "run.sh") if Path(cwd).name == "ifeval" else "ifeval/run.sh", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("where", ["root", "ifeval"])
def test_run_sh(where, tmp_path, tiny_model_dir):
    cwd = ROOT if where == "root" else ROOT / "ifeval"
    data = "sftbench/tasks/tiny_prompts.jsonl"  # repo-relative: resolves from ifeval/ too
    out = tmp_path / "out"
    p = _run_sh(cwd, str(tiny_model_dir), str(out), "--data", data, "--limit", "3", "--max_new_tokens", "8",
                "--device", "cpu")
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["complete"] and s["counts"]["prompts"] == 3
    bad = _run_sh(cwd, str(tmp_path / "missing-model"), str(tmp_path / "out2"), "--data", data, "--limit", "1")
    assert bad.returncode == 2 and "sftbench.eval.run: error:" in bad.stderr and "does not exist" in bad.stderr
    assert not (tmp_path / "out2").exists()


def test_cli_help_lists_every_option():
    h = runner.build_parser().format_help()
    for f in ("--limit", "--subset", "--data", "--max_new_tokens", "--batch_size", "--dtype", "--device",
              "--chat_template", "--system_prompt", "--backend", "--score_only", "--memory_cap_gib", "--seed"):
        assert f in h


def test_fast_backend_matches_hf(tiny_model_dir, tmp_path, session):
    """The fast generator (explicitly asked for on CPU) gives the hf backend's greedy answers."""
    if gen.fast_generator_class() is None:
        pytest.skip("sftbench/engine/fast_generate.py not present")
    c_hf = cfg(limit=4, max_new_tokens=12, batch_size=4)
    hf = runner.evaluate_checkpoint(str(tiny_model_dir), tmp_path / "hf", c_hf, loaded=session)
    fast = runner.evaluate_checkpoint(str(tiny_model_dir), tmp_path / "fast", cfg(limit=4, max_new_tokens=12, batch_size=4,
                                                                                  backend="fast"), loaded=session)
    assert fast["settings"]["backend"] == "fast" and hf["settings"]["backend"] == "hf"
    strip = lambda rows: [{k: r[k] for k in ("key", "response", "generated_tokens", "hit_cap")} for r in rows]
    assert strip(read_jsonl(tmp_path / "fast" / "responses.jsonl")) == strip(read_jsonl(tmp_path / "hf" / "responses.jsonl"))
    # auto on CPU is hf; batch size defaults are recorded
    assert runner.resolve_backend(runner.EvalConfig(device="cpu"), __import__("torch").device("cpu"))[0] == "hf"


def test_generator_interface_completions(tiny_model_dir, tiny_tokenizer):
    """HFGenerator.generate -> Completions: stop token cut, counted, hit_cap; a smaller cap per call."""
    tok = hf.load_tokenizer(str(tiny_model_dir), padding_side="left")
    model = load_model(str(tiny_model_dir), "fp32", __import__("torch").device("cpu"))
    spec = gen.GenSpec(max_new_tokens=6, stop_ids=[0, 2], pad_id=int(tok.pad_token_id))
    g = gen.HFGenerator(model, tok, spec)
    ids = gen.encode(tok, gen.render_prompts(tok, ["Say hi.", "Write a longer answer about cats."]))
    out = g.generate(ids)
    assert len(out) == 2
    for c in out:
        assert isinstance(c, gen.Completion)
        assert not set(c.token_ids) & {0, 2}
        assert c.generated_tokens == len(c.token_ids) + (0 if c.hit_cap else 1) <= 6
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
    short = g.generate(ids, 2)
    assert all(c.generated_tokens <= 2 for c in short)
    for c, s in zip(out, short):  # greedy: the shorter cap gives a prefix of the longer answer
        assert s.token_ids == c.token_ids[: len(s.token_ids)]
