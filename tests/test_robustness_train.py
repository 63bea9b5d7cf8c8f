"""Issue 24, the trainer's side (docs/GUARANTEES.md, "Stopping early"): a diverged run stops (exit 4) without writing
non-finite weights; one writer per run directory; Ctrl-C / SIGTERM keep the last checkpoint and print the resume
command (exit 130 / 143); a full, read-only or vanished disk is one message (exit 5); damaged or foreign models and
text that is not valid Unicode are one-line errors."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sftbench.core.errors import DiskWriteError, NonFiniteTraining, UserError
from sftbench.data.demo import make_conversations
from test_train import args as _train_args, run_train

ROOT = Path(__file__).resolve().parents[1]


def args(model_dir, data, out, **over) -> list[str]:
    """test_train's tiny run, 4 steps with a checkpoint every 2."""
    return _train_args(model_dir, data, out, **{"max_steps": 4, "save_steps": 2, **over})


def env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))


def cli(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train_hw_parallel.py"), *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env(), **kw)


def metrics(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


def all_finite(path: Path) -> bool:
    from safetensors.torch import load_file

    return all(torch.isfinite(t).all() for t in load_file(str(path)).values())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "chat.jsonl"
    p.write_text("".join(json.dumps(c) + "\n" for c in make_conversations(24, seed=1)))
    return p


@pytest.fixture(scope="module")
def base_run(tiny_model_dir, data, tmp_path_factory):
    """The uninterrupted 4-step run (checkpoints at 2 and 4) that interrupted-and-resumed runs must match."""
    out = tmp_path_factory.mktemp("runs") / "base"
    run_train(args(tiny_model_dir, data, out))
    return out


# A training process that pauses inside its checkpoint at step 2 until GO exists (so that the test can act on
# it while it is mid-run), then goes on.  Its file name makes the printed resume command use the real trainer.
PAUSING = '''
import os, sys, time
sys.argv[0] = "train_hw_parallel.py"
import sftbench.train.loop as loop
orig = loop.save_step
def save_step(run, step):
    orig(run, step)
    if step == 2:
        open(os.environ["READY"], "w").close()
        t = time.time()
        while not os.path.exists(os.environ["GO"]) and time.time() - t < 120:
            time.sleep(0.05)
loop.save_step = save_step
import train_hw_parallel
sys.exit(train_hw_parallel.main(sys.argv[1:]))
'''


def start_pausing(argv, tmp_path) -> tuple[subprocess.Popen, Path, Path]:
    ready, go = tmp_path / "ready", tmp_path / "go"
    p = subprocess.Popen([sys.executable, "-c", PAUSING, *argv], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env() | {"READY": str(ready), "GO": str(go)})
    t = time.time()
    while not ready.exists():
        assert p.poll() is None, p.communicate()[1]
        assert time.time() - t < 120
        time.sleep(0.05)
    return p, ready, go


# --- item 1: non-finite training ---------------------------------------------------------------------------------


def test_diverged_run_stops_with_exit_4_and_writes_no_nonfinite_weights(tiny_model_dir, data, tmp_path):
    out = tmp_path / "nan"
    p = cli(args(tiny_model_dir, data, out, learning_rate="1e5"))
    assert p.returncode == 4, p.stderr
    assert "Traceback" not in p.stderr
    m = re.search(r"train_hw_parallel.py: error: step (\d+): (the loss|the gradient norm|the weights)[^\n]*training "
                  r"diverged \(--learning_rate 100000\)\. Stopped; nothing of this step was logged or saved", p.stderr)
    assert m, p.stderr
    bad = int(m.group(1))
    assert [r["step"] for r in metrics(out)] == list(range(1, bad))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in metrics(out))
    assert not (out / "model.safetensors").exists()  # no final model
    ckpts = sorted(out.glob("checkpoint-*"))
    for c in ckpts:
        assert all_finite(c / "model.safetensors") and all_finite(c / "training_state" / "optimizer.safetensors")
    if ckpts:
        assert f"The last complete checkpoint, {ckpts[-1]}, is intact; resume from it with: python " in p.stderr
        assert "--resume_from_checkpoint latest --allow_changed_settings True --learning_rate 10000" in p.stderr
    else:
        assert "No checkpoint was written yet; start the run over with: python train_hw_parallel.py " in p.stderr
        assert "--start_over True --learning_rate 10000" in p.stderr


def test_optimizer_overflow_is_the_same_clear_stop(tiny_model_dir, data, tmp_path):
    """At lr 1e38 AdamW's own arithmetic overflows (RuntimeError ... without overflow): the same message."""
    with pytest.raises(NonFiniteTraining) as ei:
        run_train(args(tiny_model_dir, data, tmp_path / "o", learning_rate="1e38"))
    assert str(ei.value).startswith("step 1: the optimizer update overflowed (value cannot be converted to type float "
                                    "without overflow): training diverged (--learning_rate 1e+38). Stopped;")
    assert ei.value.exit_code == 4 and not list((tmp_path / "o").glob("checkpoint-*"))


def test_nonfinite_weights_are_never_checkpointed(tiny_model_dir, data, tmp_path, monkeypatch):
    """An update that leaves Inf in the weights although this step's loss and gradient were finite: refused at
    the checkpoint, before anything of it is written."""
    import sftbench.train.loop as loop

    orig = loop.train_step

    def step_then_overflow(engine, optimizer, scheduler, *a):
        r = orig(engine, optimizer, scheduler, *a)
        if scheduler.last_epoch == 2:
            with torch.no_grad():
                next(engine.model.parameters()).view(-1)[0] = float("inf")
        return r

    monkeypatch.setattr(loop, "train_step", step_then_overflow)
    out = tmp_path / "inf"
    with pytest.raises(NonFiniteTraining, match=r"^step 2: the weights after this step are not finite"):
        run_train(args(tiny_model_dir, data, out))
    assert not list(out.glob("checkpoint-*")) and not list(out.glob(".checkpoint-*"))


# --- item 5: one writer per run directory --------------------------------------------------------------------------


def test_second_trainer_on_one_output_dir_is_refused(tiny_model_dir, data, base_run, tmp_path):
    out = tmp_path / "shared"
    first, _, go = start_pausing(args(tiny_model_dir, data, out), tmp_path)
    try:
        second = cli(args(tiny_model_dir, data, out, resume_from_checkpoint="latest"))
    finally:
        go.touch()
    _, err = first.communicate(timeout=120)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert re.search(rf"error: another training run \(pid {first.pid}, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\) is "
                     rf"writing {re.escape(str(out))}; wait for it or use another --output_dir\.", second.stderr)
    assert first.returncode == 0, err
    assert [r["loss"] for r in metrics(out)] == [r["loss"] for r in metrics(base_run)]  # the first run untouched
    assert (out / "checkpoint-2" / "model.safetensors").read_bytes() == (base_run / "checkpoint-2" / "model.safetensors").read_bytes()
    assert not (out / ".sftbench.lock").exists()  # released on exit


def test_stale_lock_of_a_dead_process_is_taken_over(tiny_model_dir, data, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "stale"
    out.mkdir()
    (out / ".sftbench.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                    "started": "2026-01-01 00:00:00", "what": "training run"}))
    res = run_train(args(tiny_model_dir, data, out))
    assert res["global_step"] == 4
    assert (f"taking over the stale lock {out / '.sftbench.lock'} of training run pid {dead.pid} (started "
            f"2026-01-01 00:00:00; that process no longer runs)") in capsys.readouterr().err
    assert not (out / ".sftbench.lock").exists()


def test_lock_of_a_live_process_is_refused_and_released_on_error(tmp_path):
    from sftbench.core.lock import DirLock

    d = tmp_path / "res"
    with DirLock(d, what="sweep", flag="--results_dir"):
        with pytest.raises(UserError, match=rf"^another sweep \(pid {os.getpid()}, started .*\) is writing "
                                            rf"{re.escape(str(d))}; wait for it or use another --results_dir\."):
            DirLock(d, what="sweep", flag="--results_dir").acquire()
    assert not d.exists()  # created for the lock, empty again: removed
    with pytest.raises(RuntimeError):
        with DirLock(d):
            (d / "x").write_text("kept")
            raise RuntimeError
    assert sorted(p.name for p in d.iterdir()) == ["x"]


# --- item 7: SIGINT / SIGTERM --------------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_keeps_the_checkpoint_prints_resume_and_resume_matches(sig, code, tiny_model_dir, data, base_run, tmp_path):
    out = tmp_path / "sig"
    p, _, go = start_pausing(args(tiny_model_dir, data, out), tmp_path)
    p.send_signal(sig)
    time.sleep(0.3)
    go.touch()
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    assert "Traceback" not in err
    name = signal.Signals(sig).name
    assert f"{name}: stopping after this optimizer step" in err
    line = next(l for l in err.splitlines() if l.startswith("train_hw_parallel.py: error: "))
    assert line.startswith(f"train_hw_parallel.py: error: {name}: training stopped at step 2. The last complete "
                           f"checkpoint, {out / 'checkpoint-2'}, is intact; resume from it with: python train_hw_parallel.py ")
    assert line.endswith(" --resume_from_checkpoint latest")
    assert sorted(c.name for c in out.glob("checkpoint-*")) == ["checkpoint-2"] and not (out / ".sftbench.lock").exists()
    cmd = shlex.split(line.split("resume from it with: ", 1)[1])
    assert cmd[:2] == ["python", "train_hw_parallel.py"]
    r = cli(cmd[2:])
    assert r.returncode == 0, r.stderr
    assert [x["loss"] for x in metrics(out)] == [x["loss"] for x in metrics(base_run)]


# --- item 8: full, read-only or vanished disk -----------------------------------------------------------------------


def _nospace(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _safetensors_nospace(*a, **k):
    from safetensors import SafetensorError

    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left '
                          'on device" })')


@pytest.mark.parametrize("fail", [_nospace, _safetensors_nospace], ids=["oserror", "safetensors"])
def test_full_disk_at_a_checkpoint_is_one_message_and_resume_matches(fail, tiny_model_dir, data, base_run, tmp_path,
                                                                     monkeypatch):
    import sftbench.train.checkpoint as ck

    orig, calls = ck.save_file, []

    def save_file(tensors, path, *a, **k):
        calls.append(path)
        if ".checkpoint-4.tmp" in path:
            fail()
        return orig(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", save_file)
    out = tmp_path / "full"
    with pytest.raises(DiskWriteError) as ei:
        run_train(args(tiny_model_dir, data, out))
    msg = str(ei.value)
    assert ei.value.exit_code == 5 and ei.value.errno == errno.ENOSPC
    assert re.match(rf"could not write {re.escape(str(out / 'checkpoint-4'))}: no space left on the device \(this write "
                    rf"needs about [\d.]+ MiB; [\d.]+ [KMGT]iB free there\)\. The last complete checkpoint, "
                    rf"{re.escape(str(out / 'checkpoint-2'))}, is intact; resume from it with: the same training command "
                    rf"plus --resume_from_checkpoint latest Free some space", msg), msg
    assert not list(out.glob(".checkpoint-*")) and not (out / ".sftbench.lock").exists()
    monkeypatch.undo()
    run_train(args(tiny_model_dir, data, out, resume_from_checkpoint="latest"))
    assert [x["loss"] for x in metrics(out)] == [x["loss"] for x in metrics(base_run)]


def test_free_space_is_checked_before_a_checkpoint(tiny_model_dir, data, tmp_path, monkeypatch):
    import sftbench.core.io as io

    out = tmp_path / "small"
    real = shutil.disk_usage
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(DiskWriteError, match=rf"^could not write {re.escape(str(out / 'checkpoint-2'))}: no space left "
                                             rf"on the device \(this write needs about [\d.]+ MiB; 1000 B free there\)\. "
                                             rf"No checkpoint was written yet; start the run over"):
        run_train(args(tiny_model_dir, data, out))
    assert not list(out.glob("*checkpoint-*"))


def test_output_dir_deleted_mid_run_is_one_message(tiny_model_dir, data, tmp_path, monkeypatch):
    import sftbench.train.loop as loop

    out = tmp_path / "gone"
    orig = loop.log_step

    def log_then_delete(run, step, *a):
        orig(run, step, *a)
        if step == 2:  # after checkpoint-2, before checkpoint-4
            shutil.rmtree(out)

    monkeypatch.setattr(loop, "log_step", log_then_delete)
    with pytest.raises(DiskWriteError, match=rf"^could not write {re.escape(str(out / 'checkpoint-4'))}: its directory "
                                             rf"no longer exists \(deleted or moved while running\?\)"):
        run_train(args(tiny_model_dir, data, out))


def test_read_only_or_full_disk_on_the_cli_is_exit_5_without_traceback(tiny_model_dir, data, tmp_path):
    out = tmp_path / "ro"
    code = ("import errno, sys; sys.argv[0] = 'train_hw_parallel.py'\n"
            "import sftbench.train.checkpoint as ck\n"
            "def deny(*a, **k): raise OSError(errno.EROFS, 'Read-only file system')\n"
            "ck.save_file = deny\n"
            "import train_hw_parallel; sys.exit(train_hw_parallel.main(sys.argv[1:]))\n")
    p = subprocess.run([sys.executable, "-c", code, *args(tiny_model_dir, data, out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=env())
    assert p.returncode == 5 and "Traceback" not in p.stderr
    assert (f"train_hw_parallel.py: error: could not write {out / 'checkpoint-2'}: the file system is read-only (this "
            f"write needs about ") in p.stderr
    assert "Choose a writable directory." in p.stderr


def test_atomic_writes_name_the_path_when_the_disk_is_full(tmp_path, monkeypatch):
    import sftbench.core.io as io

    monkeypatch.setattr(io.os, "fsync", _nospace)
    with pytest.raises(DiskWriteError, match=rf"^could not write {re.escape(str(tmp_path / 's.json'))}: no space left "
                                             rf"on the device \([\d.]+ [KMGT]?i?B free there\)\. Free some space"):
        io.atomic_write_json(tmp_path / "s.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):  # still an OSError for code that handles those
        io.append_jsonl(tmp_path / "m.jsonl", {"a": 1})


# --- item 8: the data cache and the evaluation's results on a disk that refuses writes ----------------------------


def test_unwritable_data_cache_dir_warns_and_trains(tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    """A read-only cache dir (injected: chmod does not bind root) costs only the cache: a warning, then training."""
    import sftbench.core.io as io

    cache, orig = tmp_path / "cache", io._atomic_write_text

    def read_only(path, text):
        if cache in path.parents:
            raise OSError(errno.EROFS, "Read-only file system")
        return orig(path, text)

    monkeypatch.setattr(io, "_atomic_write_text", read_only)
    res = run_train(args(tiny_model_dir, data, tmp_path / "o", data_cache_dir=str(cache), max_steps=2))
    assert res["global_step"] == 2
    assert (f"warning: tokenised-data cache not written (could not write {cache}/examples-") in capsys.readouterr().err


def test_evaluation_on_a_full_disk_is_one_message(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from sftbench.eval import run as runner
    from sftbench.tasks import data as ifdata
    import sftbench.core.io as io

    orig = io._atomic_write_text

    def full(path, text):
        if path.name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return orig(path, text)

    monkeypatch.setattr(io, "_atomic_write_text", full)
    out = tmp_path / "res"
    with pytest.raises(SystemExit) as e:
        runner.main([str(tiny_model_dir), str(out), "--data", str(ifdata.TINY_PROMPTS), "--limit", "2", "--max_new_tokens", "4", "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 5 and "Traceback" not in err
    assert f"{runner.PROG}: error: could not write {out / 'summary.json'}: no space left on the device (" in err
    assert not (out / ".sftbench.lock").exists()


# --- item 1 (evaluation side): a checkpoint whose weights hold NaN/Inf is refused -------------------------------------


def test_evaluation_refuses_nonfinite_weights(tiny_model_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from sftbench.eval import run as runner
    from sftbench.tasks import data as ifdata

    m = tmp_path / "checkpoint-6"
    shutil.copytree(tiny_model_dir, m)
    w = load_file(str(m / "model.safetensors"))
    k = sorted(w)[-1]
    w[k] = w[k].clone()
    w[k].view(-1)[3] = float("nan")
    save_file(w, str(m / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SystemExit) as e:
        runner.main([str(m), str(tmp_path / "res"), "--data", str(ifdata.TINY_PROMPTS), "--limit", "2", "--max_new_tokens", "4", "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert (f"{runner.PROG}: error: {m}: its weights hold NaN or Inf values (the training run diverged before this "
            f"checkpoint was written); refusing to evaluate it.") in err
    assert not (tmp_path / "res" / "summary.json").exists()


def test_second_evaluation_into_one_results_dir_is_refused(tiny_model_dir, tmp_path, capsys):
    from sftbench.eval import run as runner
    from sftbench.eval import sweep as sw
    from sftbench.tasks import data as ifdata

    out = tmp_path / "res"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sftbench.core.lock import DirLock; "
                               "l = DirLock(sys.argv[1], what='sweep').acquire(); print('held', flush=True); "
                               "time.sleep(60)", str(out)], cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as e:
            runner.main([str(tiny_model_dir), str(out), "--data", str(ifdata.TINY_PROMPTS), "--limit", "2", "--max_new_tokens", "4", "--device", "cpu"])
        assert e.value.code == 2
        assert (f"error: another sweep (pid {holder.pid}, started ") in capsys.readouterr().err
        run = tmp_path / "run"
        shutil.copytree(tiny_model_dir, run / "checkpoint-1")
        with pytest.raises(SystemExit) as e:
            sw.main([str(run), str(out), "--data", str(ifdata.TINY_PROMPTS), "--limit", "2", "--max_new_tokens", "4", "--device", "cpu"])
        assert e.value.code == 2
        assert f"is writing {out}; wait for it or use another RESULTS_DIR." in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [".sftbench.lock"]  # nothing written by the refused ones


# --- item 9: damaged or foreign models ------------------------------------------------------------------------------


def _variant(tiny_model_dir, tmp_path, name, config=None, truncate=None) -> Path:
    d = tmp_path / name
    shutil.copytree(tiny_model_dir, d)
    if config is not None:
        c = json.loads((d / "config.json").read_text())
        for k, v in config.items():
            c.pop(k) if v is None else c.__setitem__(k, v)
        (d / "config.json").write_text(json.dumps(c))
    if truncate:
        f = d / truncate
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return d


@pytest.mark.parametrize("name, config, expected", [
    ("gpt2", {"model_type": "gpt2"}, "{m}: this trainer supports Llama-architecture models (SmolLM2, Llama, TinyLlama, "
                                     "...); got gpt2. Choose a Llama-architecture --model_name_or_path."),
    ("bert", {"model_type": "bert"}, "{m}: this trainer supports Llama-architecture models (SmolLM2, Llama, TinyLlama, "
                                     "...); got bert."),
    ("no_type", {"model_type": None}, "{m}/config.json: has no \"model_type\", so the architecture is unknown."),
    ("shapes", {"hidden_size": 96}, "{m}: could not load the model: the shapes in config.json do not match the weights"),
    ("layers", {"num_hidden_layers": 3}, "{m}: could not load the model: config.json does not match the weights: 9 "
                                         "missing from the weights (e.g. model.layers.2.input_layernorm.weight, "),
    ("fewer", {"num_hidden_layers": 1}, "{m}: could not load the model: config.json does not match the weights: 9 in "
                                        "the weights but not in the model (e.g. model.layers.1.input_layernorm.weight, "),
])
def test_foreign_or_mismatched_base_model_is_one_line(name, config, expected, tiny_model_dir, data, tmp_path):
    m = _variant(tiny_model_dir, tmp_path, name, config=config)
    with pytest.raises(UserError) as ei:
        run_train(args(m, data, tmp_path / "o"))
    assert str(ei.value).startswith(expected.format(m=m)), str(ei.value)
    assert not (tmp_path / "o").exists()


def test_truncated_base_model_is_one_line_on_the_cli(tiny_model_dir, data, tmp_path):
    m = _variant(tiny_model_dir, tmp_path, "trunc", truncate="model.safetensors")
    p = cli(args(m, data, tmp_path / "o"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"train_hw_parallel.py: error: {m / 'model.safetensors'}: truncated safetensors file: its header needs " in p.stderr


@pytest.mark.parametrize("damaged", ["model.safetensors", "training_state/optimizer.safetensors"])
def test_truncated_checkpoint_on_resume_is_one_line(damaged, base_run, tiny_model_dir, data, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    shutil.rmtree(out / "checkpoint-4")
    f = out / "checkpoint-2" / damaged
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(UserError, match=rf"^{re.escape(str(f))}: truncated safetensors file: its header needs \d+ "
                                        rf"bytes, the file has \d+ \(\d+ missing\)\. Copy or save the checkpoint again\."):
        run_train(args(tiny_model_dir, data, out, resume_from_checkpoint="latest"))


# --- item 10: text that is not valid Unicode ------------------------------------------------------------------------


def _surrogate_data(tmp_path) -> Path:
    convs = make_conversations(8, seed=1)
    lines = [json.dumps(c) for c in convs]
    lines[2] = lines[2].replace(json.dumps(convs[2]["messages"][-1]["content"])[:-1], json.dumps(convs[2]["messages"][-1]["content"])[:-1] + "\\ud800", 1)
    p = tmp_path / "sur.jsonl"
    p.write_text("\n".join(lines) + "\n")
    assert "\\ud800" in p.read_text()
    return p


def test_lone_surrogate_names_file_line_and_field(tiny_model_dir, tmp_path):
    bad = _surrogate_data(tmp_path)
    with pytest.raises(UserError, match=rf"^{re.escape(str(bad))}:3: turn \d+ \(assistant\) \"content\" is not valid "
                                        rf"Unicode: a lone surrogate \\ud800 at character \d+"):
        run_train(args(tiny_model_dir, bad, tmp_path / "o"))
    res = run_train(args(tiny_model_dir, bad, tmp_path / "o2", skip_bad_records=True, max_steps=1,
                         gradient_accumulation_steps=1))
    assert res["data_stats"]["skipped_bad"] == {"invalid_unicode": 1}


def test_lone_surrogate_in_conversation_func_and_augment(tiny_tokenizer, tmp_path):
    import conversation_func as cf
    from sftbench.data.augment import read_chat_jsonl

    bad = _surrogate_data(tmp_path)
    with pytest.raises(UserError, match=rf"^{re.escape(str(bad))}:3: .*lone surrogate \\ud800"):
        cf.build_examples(str(bad), tiny_tokenizer, max_length=128, max_rounds=6)
    with pytest.raises(UserError, match=rf"^{re.escape(str(bad))}:3: .*lone surrogate \\ud800"):
        read_chat_jsonl(bad)


# --- item 12 (part): --report_to without its package -----------------------------------------------------------------


def test_report_to_tensorboard_without_the_package_names_the_install(tiny_model_dir, data, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    with pytest.raises(UserError, match=r"^--report_to tensorboard needs the package tensorboard, which is not "
                                        r"installed: pip install tensorboard"):
        run_train(args(tiny_model_dir, data, tmp_path / "o", report_to="tensorboard"))
    assert not (tmp_path / "o").exists()
