"""--cuda-graph's replay-safe step (tdsa_fast.graph_step) on the CPU: uncaptured, it trains the
weights the plain step trains (same masks, learning rate schedule and loss sums), and the
options it cannot replay are refused. The captured graph itself is checked on a GPU by
bench/gpu_check.sh."""
from __future__ import annotations

import csv

import pytest
import torch

from tdsa_fast import checkpoint
from tdsa_fast import train
from tdsa_fast.config import TrainConfig, build_parser, resolve
from tdsa_fast.data.sharding import step_seed
from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset
from tdsa_fast.graph_step import GraphStep, check_graph_options

CLASSES, SIZE, BATCH = 4, 64, 4


def _parts(loss: str, seed: int = 0):
    cfg = resolve(build_parser().parse_args(["--dataset", "cub", "--data-root", ".", "--model", "resnet18",
                                             "--stem", "standard", "--img-size", str(SIZE), "--loss", loss,
                                             "--lr", "0.05", "--epochs", "4"]))
    torch.manual_seed(seed)
    model = train.build_network(cfg, CLASSES)
    objective = train.build_objective(cfg, CLASSES)
    optimizer, scheduler = train.build_optimizer(cfg, model, objective)
    return cfg, train.TrainingModule(model, objective), objective, optimizer, scheduler


def _batches(count: int):
    g = torch.Generator().manual_seed(123)
    return [(torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g))
            for _ in range(count)]


def _train(loss: str, graph: bool, batches, lr_change_at: int):
    """Steps over ``batches`` as the trainer does; the scheduler steps after ``lr_change_at``
    batches (milestone 2 of 4 epochs: lr x0.1). Returns (state, sums per step, GraphStep)."""
    cfg, net, objective, optimizer, scheduler = _parts(loss)
    net.train()
    step = GraphStep(net, objective, optimizer, torch.device("cpu"), capture=False, log=lambda *_: None) \
        if graph else None
    generator = torch.Generator()
    all_sums = []
    for k, (images, labels) in enumerate(batches, 1):
        generator.manual_seed(step_seed(0, k, 0))
        n = images.shape[0]
        if step is not None and step.fits(images, labels, n):
            sums = step.step(images, labels, generator).clone()
        else:
            loss_value, ce, scores = net(images, labels, generator)
            optimizer.zero_grad(set_to_none=True)
            (loss_value * 1.0).backward()
            optimizer.step()
            sums = torch.stack([loss_value.detach().double() * n, ce.detach().double() * n,
                                (scores.argmax(1) == labels).sum().double()])
        all_sums.append(sums)
        if k in lr_change_at:
            scheduler.step()
            scheduler.step()  # epoch 2 of 4: the first milestone
    return net.state_dict(), torch.stack(all_sums), step


@pytest.mark.parametrize("loss", ["ce", "mc", "tdsa"])
def test_replay_safe_step_trains_the_plain_weights(loss):
    batches = _batches(6)
    batches.insert(4, (batches[0][0][:3], batches[0][1][:3]))  # a partial batch: the eager step
    plain_state, plain_sums, _ = _train(loss, False, batches, lr_change_at={5})
    graph_state, graph_sums, step = _train(loss, True, batches, lr_change_at={5})
    for name, value in plain_state.items():
        if value.is_floating_point():
            torch.testing.assert_close(graph_state[name], value, rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert torch.equal(graph_state[name], value), name
    torch.testing.assert_close(graph_sums, plain_sums, rtol=1e-6, atol=1e-7)
    # 3 warmup steps, then a "capture" and one again after the lr change; the partial batch eager
    assert step.eager_steps == 3 and step.captures == 2 and step.replayed == 3


def test_masks_are_the_plain_draws():
    _, net, objective, optimizer, _ = _parts("tdsa")
    net.train()
    step = GraphStep(net, objective, optimizer, torch.device("cpu"), capture=False)
    images, labels = _batches(1)[0]
    step.step(images, labels, torch.Generator().manual_seed(7))
    plain = net.drawn_masks
    assert len(plain) == 2 and all(m.shape[0] == 1 for m in plain)
    again = step._draw_masks(torch.Generator().manual_seed(7))
    for a, b in zip(plain, again):
        assert torch.equal(a, b)
    assert not torch.equal(step._draw_masks(torch.Generator().manual_seed(8))[1], plain[1])


def test_fits_only_the_captured_shape():
    _, net, objective, optimizer, _ = _parts("ce")
    net.train()
    step = GraphStep(net, objective, optimizer, torch.device("cpu"), capture=False)
    images, labels = _batches(1)[0]
    assert step.fits(images, labels, BATCH)
    assert not step.fits(images, labels, BATCH - 1)  # padding / skipped images in the batch
    step.step(images, labels, None)
    assert not step.fits(images[:2], labels[:2], 2)
    assert not step.fits(images.double(), labels, BATCH)
    assert not step.fits(images.contiguous(memory_format=torch.channels_last), labels, BATCH)


def test_refusals():
    cuda = torch.device("cuda")
    cfg = TrainConfig(cuda_graph=True, amp=False, amp_dtype=None)
    check_graph_options(cfg, cuda, 1)
    check_graph_options(cfg.replace(cuda_graph=False), cuda, 4)  # off: nothing to refuse
    with pytest.raises(ValueError, match="one process only"):
        check_graph_options(cfg, cuda, 2)
    with pytest.raises(ValueError, match="float16"):
        check_graph_options(cfg.replace(amp=True, amp_dtype="float16"), cuda, 1)
    check_graph_options(cfg.replace(amp=True, amp_dtype="bfloat16"), cuda, 1)
    _, net, objective, optimizer, _ = _parts("ce")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        GraphStep(net, objective, optimizer, torch.device("cpu"), capture=True)
    adam = torch.optim.Adam(net.parameters())
    with pytest.raises(ValueError, match="SGD"):
        GraphStep(net, objective, adam, torch.device("cpu"), capture=False)


# -- the trainer ---------------------------------------------------------------------------------
TINY = SyntheticSpec(num_classes=4, train_per_class=5, test_per_class=2, image_size=64, seed=1)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return ensure_default_dataset(TINY, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


def _cli(root, out, *extra):
    # 20 images in batches of 6: three full batches and a partial one of 2 per epoch; lr x0.1 after epoch 1
    return ["--dataset", "cub", "--data-root", str(root), "--model", "resnet18", "--stem", "standard",
            "--img-size", "64", "--epochs", "2", "--batch-size", "6", "--lr", "0.02", "--workers", "0",
            "--loader", "torch", "--log-interval", "1000", "--seed", "0", "--loss", "mc", "--device", "cpu",
            "--output", str(out), *extra]


def test_trainer_cuda_graph_matches_the_plain_run(tiny_root, tmp_path, capsys):
    assert train.main(_cli(tiny_root, tmp_path / "plain")) == 0
    assert train.main(_cli(tiny_root, tmp_path / "graph", "--cuda-graph")) == 0
    assert "replay-safe step uncaptured" in capsys.readouterr().out
    plain, graph = (checkpoint.load(tmp_path / name / "last.pt") for name in ("plain", "graph"))
    for name, value in plain["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(graph["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert torch.equal(graph["model"][name], value), name
    rows = [list(csv.DictReader(open(tmp_path / name / "metrics.csv"))) for name in ("plain", "graph")]
    for a, b in zip(*rows):
        for key in ("train_loss", "train_ce", "train_acc", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6, abs=1e-9), key
    assert graph["config"]["cuda_graph"] is True
    # stopped mid-epoch 2 (--max-steps) and resumed: the replay-safe step starts afresh, same weights
    assert train.main(_cli(tiny_root, tmp_path / "resumed", "--cuda-graph", "--max-steps", "6")) == 0
    assert train.main(["--resume", str(tmp_path / "resumed"), "--max-steps", "0"]) == 0
    resumed = checkpoint.load(tmp_path / "resumed" / "last.pt")
    for name, value in plain["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(resumed["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_trainer_refuses_what_it_cannot_replay(tiny_root, tmp_path, capsys):
    cfg = resolve(build_parser().parse_args(_cli(tiny_root, tmp_path / "x", "--cuda-graph")))
    with pytest.raises(ValueError, match="one process only"):
        train.check_run_options(cfg, torch.device("cuda"), type("P", (), dict(enabled=True, world_size=2))())
    with pytest.raises(ValueError, match="float16"):
        train.check_run_options(cfg.replace(amp=True, amp_dtype="float16"), torch.device("cuda"),
                                type("P", (), dict(enabled=False, world_size=1))())
