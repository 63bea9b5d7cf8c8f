"""The ONE chat-template parser (sftbench.model.chat_template.resolve_chat_template, loaded through
sftbench.model.hf.load_tokenizer): training, evaluation and the sweep's base model render the same prompt text,
and a tokenizer without a template gets plain ChatML on both sides, said in one log line and recorded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sftbench.core.errors import UserError
from sftbench.data import masking
from sftbench.engine import generate as gen
from sftbench.model.chat_template import (FALLBACK, HOMEWORK, HOMEWORK_CHATML, MODEL, PLAIN, PLAIN_CHATML,
                                          resolve_chat_template)
from sftbench.model.hf import chat_template_of, load_tokenizer

CONV = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
OWN = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
NOTE = ("chat template: {} has none; using the project's plain ChatML (ChatML, no system prompt), the same in "
        "training and evaluation (--chat_template PATH gives another)")


def test_resolve_every_value(tmp_path):
    assert resolve_chat_template(None, OWN) == resolve_chat_template("model", OWN)
    own = resolve_chat_template(None, OWN)
    assert (own.text, own.name, own.note, own.sha256) == (OWN, MODEL, None, None)
    fb = resolve_chat_template("model", None, where="base/")
    assert (fb.text, fb.name, fb.note) == (PLAIN_CHATML, FALLBACK, NOTE.format("base/"))
    assert fb.sha256 == hashlib.sha256(PLAIN_CHATML.encode()).hexdigest()
    for v in ("plain", "plain_chatml"):
        assert (resolve_chat_template(v, OWN).text, resolve_chat_template(v, OWN).name) == (PLAIN_CHATML, PLAIN)
    assert (resolve_chat_template("homework", None).text, resolve_chat_template("homework", None).name) == (
        HOMEWORK_CHATML, HOMEWORK)
    f = tmp_path / "t.jinja"
    f.write_text(OWN)
    ct = resolve_chat_template(str(f), None)
    assert (ct.text, ct.name, ct.note) == (OWN, str(f.resolve()), None)
    with pytest.raises(UserError, match=r"^--chat_template .*nope.jinja: file not found \(give `model`"):
        resolve_chat_template(str(tmp_path / "nope.jinja"), OWN)
    f.write_text("  \n")
    with pytest.raises(UserError, match=r"t.jinja: the file is empty\.$"):
        resolve_chat_template(str(f), OWN)
    f.write_text("line one\n{% for m in messages %}")
    with pytest.raises(UserError, match=r"t.jinja:2: Jinja syntax error"):
        resolve_chat_template(str(f), OWN)


@pytest.mark.parametrize("has_template", [True, False])
def test_training_and_evaluation_render_identical_prompts(tmp_path, has_template):
    from sftbench.model.tiny import make_tiny_model_dir

    d = str(make_tiny_model_dir(tmp_path / "m", chat_template=has_template))
    logs_t, logs_e = [], []
    tok_t = load_tokenizer(d, None, log=logs_t.append)                        # as sftbench.train.setup.start
    tok_e = load_tokenizer(d, None, padding_side="left", log=logs_e.append)   # as sftbench.eval.run
    assert chat_template_of(tok_t) == chat_template_of(tok_e)
    assert chat_template_of(tok_t).name == (MODEL if has_template else FALLBACK)
    assert logs_t == logs_e == ([] if has_template else [NOTE.format(d)])
    template = masking.resolve_template(tok_t, None, "assistant")            # what build_examples renders with
    prompt = gen.render_prompts(tok_e, [CONV[0]["content"]], "default")[0]
    assert masking.render(tok_t, CONV[:1], template, add_generation_prompt=True) == prompt
    assert prompt == "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    assert masking.render(tok_t, CONV, template) == prompt + "Blue.<|im_end|>\n"


def _train(model_dir: Path, out: Path, data: Path, **over):
    from sftbench.config.train import parse_train_config
    from train_hw_parallel import train

    kw = dict(model_name_or_path=str(model_dir), data_path=str(data), output_dir=str(out), max_steps=2,
              per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-3, warmup_ratio=0.0,
              model_max_length=64, save_steps=2, logging_steps=1, seed=0, data_cache_dir="none", progress=False)
    kw.update(over)
    return train(parse_train_config([x for k, v in kw.items() for x in (f"--{k}", str(v))]))


@pytest.fixture(scope="module")
def base_and_data(tmp_path_factory):
    from sftbench.data.demo import make_conversations
    from sftbench.model.tiny import make_tiny_model_dir

    root = tmp_path_factory.mktemp("ct")
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in make_conversations(8, seed=1)))
    return make_tiny_model_dir(root / "base", chat_template=False), data


def _eval_args(extra=()):
    return ["--limit", "1", "--max_new_tokens", "2", "--device", "cpu", "--batch_size", "1", *extra]


def test_template_less_base_trains_and_evaluates_with_plain_chatml(base_and_data, tmp_path, capsys):
    from sftbench.eval import run as runner
    from sftbench.eval import sweep as sw

    base, data = base_and_data
    out = tmp_path / "run"
    _train(base, out, data)
    logged = capsys.readouterr()
    assert (logged.out + logged.err).count(NOTE.format(base)) == 1   # one line, not a silent fallback
    saved = json.loads((out / "sft_config.json").read_text())
    assert (saved["chat_template"], saved["chat_template_name"]) == (PLAIN_CHATML, FALLBACK)
    # evaluation of the base: the same template, the same line, recorded
    s = runner.evaluate_checkpoint(str(base), tmp_path / "ev", runner.EvalConfig(limit=1, max_new_tokens=2,
                                                                                 device="cpu", batch_size=1))
    assert NOTE.format(base) in capsys.readouterr().err
    assert (s["settings"]["chat_template"], s["settings"]["chat_template_sha256"]) == (
        FALLBACK, hashlib.sha256(PLAIN_CHATML.encode()).hexdigest())
    # the sweep's base: its own fallback already is the run's template, so no file is written
    res = tmp_path / "res"
    assert sw.main([str(out), str(res), "--include_base", *_eval_args()]) == 0
    assert not (res / sw.BASE_TEMPLATE).exists()
    assert json.loads((res / "checkpoint-0" / "summary.json").read_text())["settings"]["chat_template"] == FALLBACK
    assert json.loads((res / "checkpoint-2" / "summary.json").read_text())["settings"]["chat_template"] == MODEL


def test_sweep_evaluates_the_base_with_the_runs_template(base_and_data, tmp_path, capsys):
    from sftbench.eval import sweep as sw

    base, data = base_and_data
    out = tmp_path / "run"
    _train(base, out, data, chat_template="homework")
    assert json.loads((out / "sft_config.json").read_text())["chat_template"] == HOMEWORK_CHATML
    res = tmp_path / "res"
    assert sw.main([str(out), str(res), "--include_base", *_eval_args()]) == 0
    assert (res / sw.BASE_TEMPLATE).read_text() == HOMEWORK_CHATML
    s0 = json.loads((res / "checkpoint-0" / "summary.json").read_text())
    assert s0["model_path"] == str(base) or Path(s0["model_path"]).resolve() == base.resolve()
    assert (s0["settings"]["chat_template"], s0["settings"]["chat_template_sha256"]) == (
        str((res / sw.BASE_TEMPLATE).resolve()), hashlib.sha256(HOMEWORK_CHATML.encode()).hexdigest())
    assert "checkpoint-0 (base): evaluated with the chat template the run trained with" in capsys.readouterr().out
    # a rerun finds it done: the base's settings hash is computed with the same template
    assert sw.main([str(out), str(res), "--include_base", *_eval_args()]) == 0
    assert "already evaluated" in capsys.readouterr().out
