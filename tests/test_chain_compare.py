"""scripts/chain_compare.py (issue 28) in --quick mode on two tiny random-init families: every stage scored with its
own folder's recipe, the discriminator's health read from the adversarial stage's log, finished stages reused."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from test_nano_results import _numbers, _script, tiny_family

ROOT = Path(__file__).resolve().parent.parent


def _compare():
    _script()  # nano_results, which chain_compare imports, registered as test_nano_results does
    if "chain_compare" not in sys.modules:
        spec = importlib.util.spec_from_file_location("chain_compare", ROOT / "scripts" / "chain_compare.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["chain_compare"] = module
        spec.loader.exec_module(module)
    return sys.modules["chain_compare"]


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    stages = _script().STAGES
    a = tiny_family(tmp_path_factory.mktemp("a") / "ship", stages)
    b = tmp_path_factory.mktemp("b") / "work"
    shutil.copytree(a, b)
    log = b / "mobile-pix2pix-1step.train" / "log.jsonl"
    log.parent.mkdir()
    rows = [{"step": s, "loss": 1.0} | ({"d_acc_real": s / 100, "d_acc_fake": 1 - s / 100, "d_hinge": 2.0,
                                         "g_adv_share": 0.1, "g_adv_term": 0.01, "g_mse_term": 0.1}
                                        if s > 10 else {}) for s in range(1, 101)]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return a, b


@pytest.mark.usefixtures("one_thread")
def test_two_chains_side_by_side_and_reused_on_a_rerun(families, tmp_path, monkeypatch):
    a, b = families
    out = tmp_path / "cmp.json"
    args = ["--chain", f"shipped={a}", "--chain", f"paper={b}", "--quick", "--out", str(out)]
    result = _compare().main(args)
    for name in ("shipped", "paper"):
        stages = result["chains"][name]["stages"]
        assert list(stages) == [s for _, s in _script().STAGES]
        for stage, row in stages.items():
            assert row["images"]["test"]["count"] == 2 and row["weights"]
            assert ("controllability" in row) == (row["preset"] in ("mmg", "movie")), stage
    assert result["chains"]["shipped"]["stages"]["instruct-pix2pix"]["ratio_to_base"]["psnr_img"] == 1.0
    health = result["chains"]["paper"]["stages"]["mobile-pix2pix-1step"]["discriminator"]
    assert result["chains"]["shipped"]["stages"]["mobile-pix2pix-1step"]["discriminator"] is None  # no log
    assert health["logged_steps"] == 90 and health["last_step"] == 100 and len(health["curve"]) == 10
    assert math.isclose(health["last_tenth"]["d_acc_real"], sum(range(92, 101)) / 9 / 100)
    assert math.isclose(health["first_tenth"]["d_acc_fake"], 1 - sum(range(11, 20)) / 9 / 100)
    assert all(math.isfinite(v) for p, v in _numbers(json.loads(out.read_text())) if "seconds" not in p)
    # a rerun scores nothing again; changed weights are scored again
    scored: list[str] = []
    real = sys.modules["nano_results"].evaluate_stage
    monkeypatch.setattr(sys.modules["nano_results"], "evaluate_stage",
                        lambda pipe, *a, **k: scored.append(pipe) or real(pipe, *a, **k))
    again = _compare().main(args)
    assert scored == [] and again["chains"]["paper"]["stages"] == result["chains"]["paper"]["stages"]
    weights = b / "mobile-pix2pix" / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    tensors["conv_in.bias"] = tensors["conv_in.bias"] + 1
    save_file(tensors, weights)
    _compare().main(args)
    assert len(scored) == 1


def test_a_chain_that_is_not_a_folder_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="NAME=FOLDER"):
        _compare().main(["--chain", f"x={tmp_path / 'none'}", "--out", str(tmp_path / "o.json")])
    assert not (tmp_path / "o.json").exists()


def _ablation():
    spec = importlib.util.spec_from_file_location("paper_ablation", ROOT / "scripts" / "paper_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_ablation_sets_back_every_paper_value_the_shipped_chain_departs_from_one_at_a_time(tmp_path, capsys):
    """scripts/paper_ablation.py's departures are exactly the budget entries where the paper preset differs from the
    shipped family's recorded budget, each with the shipped value; each is one --reuse-from run of the paper chain."""
    from movie_plugins.nano.chain import PRESETS, ChainBudget, recorded_budget

    ablation = _ablation()
    shipped = recorded_budget(json.loads((ROOT / "plugins" / "nano" / "chain.json").read_text())["budget"])
    paper = ChainBudget(**PRESETS["paper"])
    import attrs

    paper_values = attrs.asdict(paper)
    differing = {k for k in paper_values if k in shipped and paper_values[k] != shipped[k]}
    assert {key for key, _, _ in ablation.DEPARTURES.values()} == differing
    for key, value, _ in ablation.DEPARTURES.values():
        assert value == shipped[key] and attrs.asdict(attrs.evolve(paper, **{key: value})) != paper_values
    ablation.main(["--root", str(tmp_path), "--dry-run", "--only", "gt-anchoring", "--only", "mmg-lr"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert len(lines) == 3 and "--reuse-from" not in lines[0]
    assert lines[1].endswith(f"-B adversarial_data_weight=1.0 --reuse-from {tmp_path / 'paper'}")
    assert "-B mmg_lr=0.0003" in lines[2] and not any(tmp_path.iterdir())


def test_the_ablation_table_marks_copied_stages_and_the_one_step_change():
    """--table's rows: a departure shows the entry set back, the stages it trained again, '=' for the scored stages
    it copied from the paper chain, and its one-step PSNR against the paper chain's."""
    ablation = _ablation()

    def stage(psnr, ssim, control=None, health=None):
        return {"images": {"test": {"psnr": psnr, "ssim": ssim}}, "controllability": control or {},
                "discriminator": {"last_tenth": health} if health else None}

    line = ("mobile-pix2pix", "mobile-pix2pix-mmg", "mobile-pix2pix-1step")
    paper = {"chain": {"seconds": dict.fromkeys(("init", "vpred", *line), 1.0)},
             "stages": dict(zip(line, (stage(13.25, 0.487), stage(13.16, 0.506), stage(13.9, 0.363))))}
    departure = {"chain": {"seconds": dict.fromkeys(("init", "vpred", *line), 1.0),
                           "reused": dict.fromkeys(("vpred", "mobile-pix2pix", "mobile-pix2pix-mmg"), {})},
                 "stages": {**paper["stages"], "mobile-pix2pix-1step": stage(
                     15.4, 0.5, {"text_guidance": {"direction": "grows"}, "image_guidance": {"direction": "falls"}},
                     {"d_acc_real": 0.5, "d_acc_fake": 0.75})}}
    # a departure trained first, the paper chain copying its shared stages: those count as copied too
    earlier = {"folder": "/runs/no-t2i", "chain": {"seconds": dict.fromkeys(("init", "text", *line), 1.0)},
               "stages": {**paper["stages"], "mobile-pix2pix": stage(13.0, 0.4)}}
    paper["chain"]["reused"] = {"text": {"from": "/runs/no-t2i"}}
    rows = ablation.table({"chains": {"paper": paper, "gt-anchoring": departure, "no-t2i-finetune": earlier}})
    rows = rows.splitlines()
    assert len(rows) == 5 and rows[2].startswith("| paper | (all) |")
    assert rows[4].startswith("| no-t2i-finetune | `t2i_mobile_steps=0` | mobile-pix2pix, mobile-pix2pix-mmg, "
                              "mobile-pix2pix-1step | 13.00 / 0.400 |")
    assert rows[3] == ("| gt-anchoring | `adversarial_data_weight=1.0` | mobile-pix2pix-1step | = | = | "
                       "15.40 / 0.500 | +1.50 | grows / falls | 0.50 / 0.75 |")
