"""The bundle's configs as a reader meets them: one network_def, named entries, handlers that do what they say."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser

from qddens_monai.config import load_bundle_configs
from qddens_monai.data import write_plan
from qddens_monai.export import load_bundle_network
from qddens_monai.quantization import is_quantization_complete, quantization_progress, quantization_step

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
CONFIGS = BUNDLE / "configs"
TINY = {"network_def#backbone_kwargs#channels": [4, 8, 16, 32], "network_def#meta_kwargs#channels": [4, 8, 16, 32]}
#: what training plans on the 2D demo data, given: these parsers build networks without reading any data
DEMO_PLAN = {"in_channels": 3, "num_classes": 2, "modality": "rgb"}


def parser_of(*names, **overrides):
    parser = ConfigParser()
    parser.read_config(load_bundle_configs([CONFIGS / n for n in names]))
    for key, value in {**TINY, **DEMO_PLAN, **overrides}.items():
        parser[key] = value
    return parser


def test_one_network_def():
    raw = {f.name: json.loads(f.read_text()) for f in CONFIGS.glob("*.json")}
    literal = [name for name, config in raw.items() if isinstance(config.get("network_def"), dict)]
    # train.json is its home; the student (another network) replaces it; inference.json refers to it
    assert sorted(literal) == ["distill.json", "inference_student.json", "train.json"]
    assert raw["inference.json"]["network_def"] == "%configs/train.json#network_def"
    assert raw["distill.json"]["teacher_def"] == "%configs/train.json#network_def"
    train, infer = parser_of("train.json"), parser_of("inference.json")
    assert train["network_def"] == infer["network_def"]


def handler_index(parser, target, section="train#handlers"):
    return next(i for i, h in enumerate(parser[section]) if h["_target_"].endswith(target))


def trained_with_portions(tmp_path, portions):
    """A finished schedule of ``portions`` (no training needed: the steps only freeze weights), saved as model.pt."""
    parser = parser_of("train.json", portions=portions, device="$torch.device('cpu')", bundle_root=str(tmp_path))
    handler = parser.get_parsed_content(f"train#handlers#{handler_index(parser, 'IncrementalQuantizationHandler')}")
    net = parser.get_parsed_content("network")
    assert handler.network is net and handler.num_steps == len(portions)  # the configured schedule, set on the network
    for _ in portions:
        quantization_step(net)
    assert quantization_progress(net) == (len(portions), len(portions)) and is_quantization_complete(net)
    (tmp_path / "models").mkdir()
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    settings = {**parser.get_parsed_content("settings"), **parser.get_parsed_content("plan")}
    write_plan(tmp_path / "models", settings, parser.get_parsed_content("fingerprint"))  # as training does
    return net.eval()


def test_a_model_trained_with_other_portions_loads_complete_at_inference_and_export(tmp_path):
    trained = trained_with_portions(tmp_path, [0.5, 1.0])
    parser = parser_of("inference.json", bundle_root=str(tmp_path), device="$torch.device('cpu')")
    net = parser.get_parsed_content("network_def")
    assert quantization_progress(net) == (0, 4)  # built with the default schedule ...
    loader = parser.get_parsed_content("handlers#0")  # the CheckpointLoader inference.json runs
    loader(Engine(lambda engine, batch: None))
    assert quantization_progress(net) == (2, 2) and is_quantization_complete(net)  # ... the checkpoint's after loading
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), trained(x))
    exported, _ = load_bundle_network(BUNDLE, tmp_path / "models" / "model.pt", overrides=TINY)  # refused before
    assert is_quantization_complete(exported)


def test_checkpoints_without_a_recorded_schedule_still_load(tmp_path):
    trained = trained_with_portions(tmp_path, [0.3, 0.6, 0.8, 1.0])
    state = {k: v for k, v in trained.state_dict().items() if not k.endswith(".portions")}  # as before 0.3
    net = parser_of("inference.json").get_parsed_content("network_def")
    missing, unexpected = net.load_state_dict(state, strict=True)
    assert not missing and not unexpected and is_quantization_complete(net)


@pytest.mark.slow
def test_inference_json_runs_alone_from_the_bundle_root_on_other_portions(tmp_path):
    trained_with_portions(tmp_path, [0.5, 1.0])
    network = tmp_path / "tiny_network.json"
    network.write_text(json.dumps({"network_def": parser_of("inference.json")["network_def"]}))
    configs = json.dumps(["configs/inference.json", str(network)])
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        "--bundle_root",
        str(tmp_path),
        "--demo_size",
        "64",
    ]
    proc = subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert len(list((tmp_path / "eval" / "predictions").glob("*_seg.png"))) == 4


def test_run_and_training_are_one_list():
    train = json.loads((CONFIGS / "train.json").read_text())
    assert train["run"] == "@training" and isinstance(train["training"], list)
    assert "run" not in json.loads((CONFIGS / "multi_gpu_train.json").read_text())  # its training is the run
    assert json.loads((CONFIGS / "evaluate.json").read_text())["run"] == "@evaluating"
    # no positional ids ("...#2", "[:3]") in any config
    for f in CONFIGS.glob("*.json"):
        text = f.read_text()
        assert "[:" not in text and "[: " not in text, f.name
        assert not any(part.isdigit() for key in json.loads(text) for part in key.split("#")), f.name


@pytest.mark.slow
def test_configured_handlers_produce_what_they_are_for(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/train.json",
        "--bundle_root",
        str(tmp_path),
        "--epochs",
        "1",
        "--epochQ",
        "1",
        "--val_interval",
        "1",
        "--demo_size",
        "64",
        "--roi_size",
        "[32,32]",
        "--network_def#backbone_kwargs#channels",
        "[4,8,16,32]",
        "--network_def#meta_kwargs#channels",
        "[4,8,16,32]",
        "--portions",
        "[0.5,1.0]",
    ]
    proc = subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    eval_dir, models = tmp_path / "eval", tmp_path / "models"
    assert "train_loss: " in log  # StatsHandler, every iteration
    assert "quantization step 2/2: 100.0%" in log  # IncrementalQuantizationHandler, on the configured portions
    assert "val_mean_dice" in log  # ValidationHandler + the evaluator's StatsHandler
    assert "- Epoch 3: loss " in log and "(seg " in log and "diversity " in log  # the loss parts, per epoch
    header = (eval_dir / "training_history.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "loss/seg", "loss/diversity", "val_mean_dice", "lr", "quant_step"} <= set(header)
    assert (eval_dir / "training_curves.png").is_file()  # TrainingCurvesHandler
    assert (models / "model.pt").is_file() and (models / "model_best_val.pt").is_file()  # final and key-metric savers
    assert list((eval_dir / "checkpoints").glob("checkpoint_epoch=*.pt"))  # checkpoint_saver (resumable)
    assert list(eval_dir.glob("events.out.tfevents.*"))  # TensorBoardStatsHandler
    assert list((eval_dir / "overlays").glob("*.png"))  # OverlayHandler
    plan = json.loads((models / "plan.json").read_text())  # beside the model: inference reads it back
    assert plan["settings"]["portions"] == [0.5, 1.0] and plan["settings"]["roi_size"] == [32, 32]
    assert plan["settings"]["in_channels"] == 3 and plan["settings"]["modality"] == "rgb"  # planned: RGB PNGs
    assert plan["fingerprint"]["num_images"] == 16
    assert "100.0%" in (eval_dir / "quantization_report.txt").read_text()


@pytest.mark.slow
def test_published_shape_flags_of_the_bundle_readme(tmp_path):
    """The flags the bundle's README gives for the published shape, run through MONAI's CLI, build four learners
    of one size fused at every level (a flag the CLI silently drops, e.g. ``None``, would leave the default)."""
    import shlex

    readme = (BUNDLE / "docs" / "README.md").read_text()
    block = readme.split("is one set of flags away:", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    flags = shlex.split(block.replace("\\\n", " "))
    flags = flags[flags.index("configs/train.json") + 1 :]
    check = tmp_path / "check.json"
    shape = "$print('SHAPE', @network_def.num_learners, @network_def.level_roles, @quantization, @lr_decay_per_step)"
    check.write_text(json.dumps({"check": [shape]}))
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "check",
        "--config_file",
        json.dumps(["configs/train.json", str(check)]),
    ]
    proc = subprocess.run(cmd + flags, cwd=BUNDLE, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("SHAPE"))
    assert line.startswith("SHAPE 4 ['encoder', 'encoder', 'encoder', 'bottleneck', 'decoder', 'decoder']"), line
    assert line.endswith("qme_net 0.5"), line  # the published bit widths (meta learner at 16) and lr halvings
