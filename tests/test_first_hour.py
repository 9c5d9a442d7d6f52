"""The first hour: a learnable default task evaluated at the end, --version, rate and
ETA, RUNDIR/train.log, wall-clock metric lines, an exit status for a missed target AUC."""

from __future__ import annotations

import io
import json

import pytest

from dlrm_tvm import cli


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "tiny"
    assert cli.main(["compile", "--config", "tiny", "--out", str(out)]) == 0
    return out


def test_version_names_dlrm_tvm_tvm_and_python(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("dlrm-tvm ") and "apache-tvm 0.27" in out and "Python 3." in out


def test_default_run_learns_and_is_evaluated(art, tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["train", "--artifact", str(art), "--steps", "200", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["config"]["data"]["labels"] == "teacher"
    assert s["eval"] is not None and s["eval"]["auc"] > 0.6, s["eval"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x.get("kind") != "eval"]
    assert sum(x["loss"] for x in train[:10]) > sum(x["loss"] for x in train[-10:]) + 0.5
    assert all("wall" in x and "time_s" in x for x in lines)
    assert [x["step"] for x in lines if x.get("kind") == "eval"] == [200]
    log = (out / "train.log").read_text()
    assert "train 200/200 (100%)" in log and "step/s" in log and "eval at step 200" in log
    assert "auc" in capsys.readouterr().out


def test_random_labels_stay_for_reference_parity(art, tmp_path):
    out = tmp_path / "r"
    assert cli.main(["train", "--artifact", str(art), "--steps", "3", "--labels", "random",
                     "--out", str(out), "--quiet", "--no-eval"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["config"]["data"]["labels"] == "random" and s["eval"] is None


def test_a_missed_target_auc_exits_4(art, tmp_path, capsys):
    rc = cli.main(["train", "--artifact", str(art), "--steps", "4", "--target-auc", "0.999",
                   "--out", str(tmp_path / "r"), "--quiet"])
    assert rc == 4
    assert "target auc 0.999 not reached" in capsys.readouterr().out


def test_progress_lines_show_rate_and_eta():
    from dlrm_tvm.progress import Progress

    buf, seen = io.StringIO(), []
    p = Progress(100, "train", stream=buf, also=seen.append)
    for i in range(1, 101):
        p.update(i, loss=0.5)
    text = buf.getvalue()
    assert text.count("\n") == 11 and "step/s" in text and "ETA" in text
    assert seen and seen[-1].startswith("train 100/100 (100%)")


def test_a_run_directorys_config_json_is_a_config(art, tmp_path):
    from dlrm_tvm.config import load_config

    out = tmp_path / "r"
    assert cli.main(["train", "--config", "tiny", "--arch-interaction-op", "cat", "--labels",
                     "random", "--steps", "1", "--no-eval", "--no-final-checkpoint", "--out",
                     str(out), "--quiet"]) == 0
    cfg = load_config(out / "config.json")
    assert cfg.model.interaction == "cat" and cfg.data.labels == "random"
    assert load_config(out) == cfg  # the run directory itself
    assert cli.main(["plan", "--config", str(out / "config.json"), "--ranks", "2"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: a JSON config must be an object"):
        load_config(bad)


def test_readme_commands_create_what_they_use():
    """Every `--artifact DIR` and `--resume DIR` of the README's command blocks names a
    directory an earlier command there creates (`compile --out DIR`, `train --out DIR`): the
    examples run top to bottom."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    made: set[str] = set()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if not line.startswith(("dlrm-tvm", "mpiexec")):
                continue
            words = shlex.split(line)
            opts = dict(zip(words, words[1:], strict=False))
            for flag in ("--artifact",):
                if flag in opts:
                    assert opts[flag] in made, f"README: {line!r} uses {opts[flag]} before " \
                        "any command creates it"
            if "--out" in opts:
                made.add(opts["--out"])
