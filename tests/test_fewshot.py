"""Supervised few-shot learning: task families, learners' adapt steps, MAML gradients, CLI."""
import json
import math

import pytest
import torch

from metarl.agents.cnp import CNP, CNPConfig
from metarl.agents.fewshot_maml import MAMLConfig, MAMLLearner, ReptileConfig, ReptileLearner
from metarl.agents.metric_learners import MetricConfig, ProtoNet, class_sums
from metarl.config import build
from metarl.envs.glyphs import generate_glyphs, load_glyphs
from metarl.envs.image_tasks import GlyphConfig, OmniglotConfig, make_glyphs, make_omniglot
from metarl.envs.regression_tasks import GPConfig, GPDistribution, SinusoidConfig, SinusoidDistribution
from metarl.errors import UserError
from metarl.fewshot.core import task_generator
from metarl.functional import adapt_batch, params_of


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METARL_CACHE", str(tmp_path / "cache"))


def small_glyphs(**kw):
    return make_glyphs(build(GlyphConfig, {"classes": 40, "variants": 20, **kw}, "env"))


# ---- task families ---------------------------------------------------------------------------

def test_sinusoid_sampling_statistics():
    dist = SinusoidDistribution(SinusoidConfig())
    b = dist.sample(20000, torch.Generator().manual_seed(0))
    assert b["xs"].shape == (20000, 10, 1) and b["xq"].shape == (20000, 10, 1)
    amp, ph = b["amplitude"], b["phase"]
    assert amp.min() >= 0.1 and amp.max() <= 5.0 and abs(amp.mean().item() - 2.55) < 0.05
    assert ph.min() >= 0 and ph.max() <= math.pi and abs(ph.mean().item() - math.pi / 2) < 0.03
    assert b["xs"].min() >= -5 and b["xs"].max() <= 5 and abs(b["xs"].mean().item()) < 0.03
    expect = amp.view(-1, 1, 1) * torch.sin(b["xq"] - ph.view(-1, 1, 1))
    assert torch.allclose(b["yq"], expect)
    a = dist.sample(4, task_generator(0, "train"))["amplitude"]
    assert not torch.equal(a, dist.sample(4, task_generator(0, "test"))["amplitude"])
    assert torch.equal(a, dist.sample(4, task_generator(0, "train"))["amplitude"])


def test_gp_samples_have_the_kernel_covariance():
    cfg = build(GPConfig, {"shots": 1}, "env")
    b = GPDistribution(cfg).sample(6000, torch.Generator().manual_seed(0), query=4, grid=True)
    x, y = b["xq"][0, :, 0].double(), b["yq"][..., 0].double()            # fixed grid, [6000, 4]
    emp = (y - y.mean(0)).T @ (y - y.mean(0)) / (y.shape[0] - 1)
    k = torch.exp(-0.5 * (x.view(-1, 1) - x.view(1, -1)) ** 2 / 0.4 ** 2) + 0.02 ** 2 * torch.eye(4)
    assert torch.allclose(emp, k, atol=0.08)


def test_gp_draws_the_context_size_per_batch_when_shots_is_zero():
    dist = GPDistribution(build(GPConfig, {"shots": 0, "context_min": 3, "context_max": 9}, "env"))
    g = torch.Generator().manual_seed(0)
    sizes = {dist.sample(2, g)["xs"].shape[1] for _ in range(60)}
    assert sizes <= set(range(3, 10)) and len(sizes) >= 5


def test_gp_points_put_the_context_among_the_targets():
    """env.points: the targets are the task's `points` inputs, the context their first K with the
    same noisy values; a context larger than the targets is refused in one line."""
    dist = GPDistribution(build(GPConfig, {"shots": 0, "context_min": 3, "context_max": 9, "points": 20}, "env"))
    b = dist.sample(3, torch.Generator().manual_seed(0))
    k = b["xs"].shape[1]
    assert b["xq"].shape == (3, 20, 1) and 3 <= k <= 9
    assert torch.equal(b["xs"], b["xq"][:, :k]) and torch.equal(b["ys"], b["yq"][:, :k])
    for opts, words in (({"shots": 25, "points": 20}, "env.shots=25"), ({"shots": 0, "points": 20}, "context_max=97")):
        with pytest.raises(UserError, match=f"{words}.*exceed env.points=20"):
            GPDistribution(build(GPConfig, opts, "env"))


def test_gp_context_above_the_target_points_exits_2(cli):
    code, _, err = cli("train", "cnp", "--env", "gp-regression", "--set", "env.points=50", "--set", "env.shots=60",
                       "--quiet")
    assert code == 2 and "exceed env.points=50" in err and len(err.strip().splitlines()) == 1


def test_glyph_generator_is_deterministic_per_seed_and_cached(tmp_path):
    a, b = generate_glyphs(1, classes=12, variants=4), generate_glyphs(1, classes=12, variants=4)
    assert a.dtype == torch.uint8 and a.shape == (12, 4, 28, 28) and torch.equal(a, b)
    assert not torch.equal(a, generate_glyphs(2, classes=12, variants=4))
    # variants of one class resemble each other more than other classes do
    f = a.float().flatten(2)
    same = (f[:, 0] - f[:, 1]).abs().mean()
    other = (f[:, 0] - f.roll(1, 0)[:, 0]).abs().mean()
    assert same < other
    first = load_glyphs(1, 12, 4)
    assert torch.equal(first, a) and list((tmp_path / "cache" / "glyphs").glob("*.pt"))
    assert torch.equal(load_glyphs(1, 12, 4), a)  # from the cache


def test_classification_tasks_have_class_disjoint_splits():
    dist = small_glyphs(ways=3, shots=2, query=4)
    lo_tr, hi_tr = dist.bounds["train"]
    seen = {}
    for split in ("train", "val", "test"):
        b = dist.sample(50, task_generator(0, split), split)
        assert b["xs"].shape == (50, 6, 1, 28, 28) and b["xq"].shape == (50, 12, 1, 28, 28)
        assert torch.equal(b["ys"][0], torch.tensor([0, 0, 1, 1, 2, 2]))
        lo, hi = dist.bounds[split]
        assert b["classes"].min() >= lo and b["classes"].max() < hi
        assert all(len(set(row.tolist())) == 3 for row in b["classes"])   # distinct classes per task
        seen[split] = set(b["classes"].flatten().tolist())
        assert 0 <= b["xs"].min() and b["xs"].max() <= 1
    assert not (seen["train"] & seen["test"]) and not (seen["train"] & seen["val"]) and not (seen["val"] & seen["test"])
    # support and query drawings of a class are different images
    b = dist.sample(1, torch.Generator().manual_seed(3))
    assert not any(torch.equal(b["xs"][0, 0], q) for q in b["xq"][0, :4])


def test_omniglot_missing_or_malformed_gives_one_line_error(cli, tmp_path):
    code, out, err = cli("train", "protonet", "--env", "omniglot", "--set", f"env.data_dir={tmp_path / 'none'}")
    assert code == 2 and "Omniglot not found" in err and "never downloads" in err and "Traceback" not in err
    char = tmp_path / "om" / "omniglot-py" / "images_background" / "Alpha" / "character01"
    char.mkdir(parents=True)
    (tmp_path / "om" / "omniglot-py" / "images_evaluation").mkdir()
    for i in range(3):
        (char / f"{i}.png").write_bytes(b"not a png")
    code, out, err = cli("train", "protonet", "--env", "omniglot", "--set", f"env.data_dir={tmp_path / 'om'}")
    assert code == 2 and "cannot read image" in err and "0.png" in err and len(err.strip().splitlines()) == 1


def omniglot_folder(root, classes=24, variants=6):
    """A small Omniglot stand-in in torchvision's layout: glyphs drawn dark on white at 105x105,
    the first two thirds of the classes in images_background."""
    from PIL import Image
    g = generate_glyphs(0, classes=classes, variants=variants)
    for c in range(classes):
        part = "images_background" if c < classes * 2 // 3 else "images_evaluation"
        d = root / "omniglot-py" / part / f"alphabet{c // 8}" / f"character{c:02d}"
        d.mkdir(parents=True)
        for v in range(variants):
            Image.fromarray((255 - g[c, v]).numpy()).resize((105, 105)).save(d / f"{c}_{v}.png")
    return root


def test_omniglot_folder_in_torchvision_layout_loads(tmp_path):
    omniglot_folder(tmp_path)
    dist = make_omniglot(build(OmniglotConfig, {"data_dir": str(tmp_path), "ways": 2, "shots": 1, "query": 2,
                                                "eval_query": 2}, "env"))
    assert dist.images.shape == (24, 6, 28, 28)
    assert dist.bounds["test"][1] == 24 and dist.bounds["train"][0] == 0
    # ink is bright after loading, as in the glyphs
    assert dist.images.float().mean() < 128
    b = dist.sample(4, torch.Generator().manual_seed(0), "test")
    assert b["xs"].shape == (4, 2, 1, 28, 28)


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["hypernet", "leo", "learned-opt"])
def test_task_to_parameter_learners_train_and_evaluate_on_omniglot(cli, tmp_path, agent):
    """Issue 25's learners on Omniglot's folder layout (a small generated stand-in): 2-way 1-shot
    tasks of the evaluation alphabets, accuracy over the held-out tasks."""
    data, run = omniglot_folder(tmp_path / "om"), tmp_path / "run"
    env = ["--set", f"env.data_dir={data}", "--set", "env.ways=2", "--set", "env.query=2", "--set", "env.eval_query=2"]
    code, _, err = cli("train", agent, "--env", "omniglot", "--run-dir", run, *TINY, *env, "--set", "agent.channels=8",
                       "--set", "agent.eval_steps=1")
    assert code == 0, err
    code, _, err = cli("eval", run, "--tasks", 10)
    assert code == 0, err
    res = json.loads((run / "eval.json").read_text())["results"][agent]
    assert res["metric"] == "query accuracy" and res["total"]["n"] == 10 and 0.0 <= res["total"]["mean"] <= 1.0


def test_too_many_ways_or_shots_is_a_user_error(cli):
    code, _, err = cli("train", "protonet", "--env", "glyphs", "--set", "env.classes=60", "--set", "env.ways=30")
    assert code == 2 and "env.ways=30" in err
    code, _, err = cli("train", "protonet", "--env", "glyphs", "--set", "env.classes=60", "--set", "env.shots=10")
    assert code == 2 and "drawings per class" in err


def test_rl_and_fewshot_agents_refuse_each_others_envs(cli):
    code, _, err = cli("train", "rl2", "--env", "sinusoid")
    assert code == 2 and "supervised few-shot" in err and "maml" in err
    code, _, err = cli("train", "maml", "--env", "bandit")
    assert code == 2 and "RL task family" in err
    code, _, err = cli("train", "protonet", "--env", "sinusoid")
    assert code == 2 and "classifier" in err


def test_a_learner_without_trainable_parameters_is_a_user_error():
    from metarl.errors import UserError
    from metarl.fewshot.core import FewShotConfig, FewShotLearner, make_trainer_cls
    from metarl.registry import ENVS, load

    class Nearest(FewShotLearner):  # 1-nearest-neighbour regression: nothing to meta-train
        def adapt(self, xs, ys, steps=None):
            return xs, ys

        def predict(self, state, xq):
            xs, ys = state
            return ys.gather(1, torch.cdist(xq, xs).argmin(-1, keepdim=True).expand(-1, -1, ys.shape[-1]))

    spec = load(ENVS["sinusoid"].target)
    with pytest.raises(UserError, match="Nearest has no trainable parameters"):
        make_trainer_cls(lambda dist, cfg: Nearest(dist))(spec, SinusoidConfig(), FewShotConfig(), 0, "cpu")


# ---- learners ------------------------------------------------------------------------------------

def test_protonet_prototypes_are_class_means():
    dist = small_glyphs(ways=3, shots=4)
    learner = ProtoNet(dist, build(MetricConfig, {"channels": 8}, "env"))
    b = dist.sample(2, torch.Generator().manual_seed(0))
    protos = learner.adapt(b["xs"], b["ys"])
    emb = learner.embed(b["xs"])                                          # [2, 12, 8]
    for c in range(3):
        assert torch.allclose(protos[:, c], emb[:, b["ys"][0] == c].mean(1), atol=1e-6)
    logits = learner.predict(protos, b["xq"])
    q = learner.embed(b["xq"])
    assert torch.allclose(logits[1, 5, 2], -((q[1, 5] - protos[1, 2]) ** 2).sum(), atol=1e-4)
    sums, counts = class_sums(emb, b["ys"], 3)
    assert counts.flatten().tolist() == [4.0] * 6


def _manual_maml_grad(learner, b, first_order):
    """Hand-written second-order (or first-order) MAML meta-gradient with a per-task loop."""
    meta = params_of(learner.model)
    losses = []
    for i in range(b["xs"].shape[0]):
        params = meta
        for _ in range(learner.cfg.inner_steps):
            inner = ((learner.model.forward_with(params, b["xs"][i]) - b["ys"][i]) ** 2).mean()
            grads = torch.autograd.grad(inner, list(params.values()), create_graph=not first_order)
            params = {k: p - learner.cfg.inner_lr * g for (k, p), g in zip(params.items(), grads)}
        losses.append(((learner.model.forward_with(params, b["xq"][i]) - b["yq"][i]) ** 2).mean())
    return torch.autograd.grad(torch.stack(losses).mean(), list(meta.values()))


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("vectorized", [True, False])
def test_maml_meta_gradient_equals_hand_written_autograd(first_order, steps, vectorized):
    torch.manual_seed(0)
    dist = SinusoidDistribution(SinusoidConfig())
    cfg = build(MAMLConfig, {"inner_steps": steps, "first_order": first_order, "inner_lr": 0.05}, "agent")
    learner = MAMLLearner(dist, cfg).double()
    learner.vectorized = vectorized
    b = {k: v.double() for k, v in dist.sample(4, torch.Generator().manual_seed(1)).items()}
    loss, _ = learner.meta_loss(b)
    got = torch.autograd.grad(loss, list(params_of(learner.model).values()))
    want = _manual_maml_grad(learner, b, first_order)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-10)
    if not first_order and steps == 1:  # second order really differs from first order here
        fo = _manual_maml_grad(learner, b, True)
        assert not all(torch.allclose(g, f, atol=1e-6) for g, f in zip(got, fo))


def test_meta_sgd_step_sizes_are_learned_and_used():
    from metarl.agents.fewshot_maml import _meta_sgd
    dist = SinusoidDistribution(SinusoidConfig())
    learner = _meta_sgd(dist, build(MAMLConfig, {}, "agent"))
    b = dist.sample(3, torch.Generator().manual_seed(0))
    loss, _ = learner.meta_loss(b)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.step_sizes.values())
    with torch.no_grad():
        for p in learner.step_sizes.values():
            p.zero_()
    adapted = learner.adapt(b["xs"], b["ys"], 1)
    for k, p in params_of(learner.model).items():  # zero step sizes: nothing moves
        assert torch.allclose(adapted[k], p.expand_as(adapted[k]))


def test_anil_adapts_only_the_head():
    from metarl.agents.fewshot_maml import _anil
    dist = small_glyphs(ways=3)
    learner = _anil(dist, build(MAMLConfig, {"channels": 8, "inner_lr": 0.5}, "agent"))
    b = dist.sample(2, torch.Generator().manual_seed(0))
    state = learner.adapt(b["xs"], b["ys"], 2)
    assert set(state) == {"head_w", "head_b"} and state["head_w"].shape == (2, 3, 8)
    assert not torch.allclose(state["head_w"][0], learner.model.head_w)
    loss, _ = learner.meta_loss(b)
    loss.backward()
    assert learner.model.conv0_w.grad.abs().sum() > 0  # the body learns through the adapted head


def test_reptile_update_moves_toward_adapted_weights():
    torch.manual_seed(0)
    dist = SinusoidDistribution(SinusoidConfig())
    cfg = build(ReptileConfig, {"meta_lr": 0.5, "inner_steps": 3}, "agent")
    learner = ReptileLearner(dist, cfg)
    b = dist.sample(5, torch.Generator().manual_seed(0))
    before = {k: v.detach().clone() for k, v in params_of(learner.model).items()}
    x, y = torch.cat([b["xs"], b["xq"]], 1), torch.cat([b["ys"], b["yq"]], 1)
    phi = learner.adapt(x, y, first_order=True)
    target = {k: v.detach().mean(0) for k, v in phi.items()}
    learner.meta_update(b, torch.optim.SGD(learner.parameters(), lr=0.5))
    for k, p in params_of(learner.model).items():
        assert torch.allclose(p, before[k] + 0.5 * (target[k] - before[k]), atol=1e-6)
    dist_before = sum(((before[k] - target[k]) ** 2).sum() for k in before)
    dist_after = sum(((p - target[k]) ** 2).sum() for k, p in params_of(learner.model).items())
    assert dist_after < dist_before


def test_cnp_predicts_a_bounded_gaussian_and_learns_gp_regression():
    torch.manual_seed(0)
    dist = GPDistribution(build(GPConfig, {"shots": 0, "context_max": 20}, "env"))
    learner = CNP(dist, build(CNPConfig, {"hidden": 32}, "agent"))
    opt = torch.optim.Adam(learner.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    test = dist.sample(64, torch.Generator().manual_seed(9), shots=10)
    first = learner.meta_loss(test)[0].item()
    for _ in range(300):
        learner.meta_update(dist.sample(16, g), opt)
    mean, std = learner.predict_dist(learner.adapt(test["xs"], test["ys"]), test["xq"])
    assert mean.shape == std.shape == (64, 50, 1) and std.min() >= 0.1
    assert learner.meta_loss(test)[0].item() < first - 0.2


def test_vectorized_inner_loop_equals_vmap_for_meta_sgd_and_several_steps():
    torch.manual_seed(0)
    dist = SinusoidDistribution(SinusoidConfig())
    learner = MAMLLearner(dist, build(MAMLConfig, {}, "agent"), meta_sgd=True).double()
    b = {k: v.double() for k, v in dist.sample(3, torch.Generator().manual_seed(2)).items()}
    lf = learner._loss_fn()
    p = params_of(learner.model)
    vec = adapt_batch(lf, p, (b["xs"], b["ys"]), 3, learner.step_sizes, vectorized=True)
    vm = adapt_batch(lf, p, (b["xs"], b["ys"]), 3, learner.step_sizes, vectorized=False)
    for k in p:
        assert torch.allclose(vec[k], vm[k], atol=1e-10)
    with torch.no_grad():  # evaluation: no graph, same values
        ev = adapt_batch(lf, p, (b["xs"], b["ys"]), 3, learner.step_sizes, vectorized=True)
    assert all(not v.requires_grad and torch.allclose(v, vec[k]) for k, v in ev.items())



def test_regression_mlp_uses_the_reference_init_unless_asked_for_torch_default():
    dist = SinusoidDistribution(SinusoidConfig())
    ref = MAMLLearner(dist, build(MAMLConfig, {}, "agent")).model
    tor = MAMLLearner(dist, build(MAMLConfig, {"init": "torch"}, "agent")).model
    assert all(ref.get_parameter(f"w{i}").abs().max() <= 0.02 for i in range(ref.depth))
    assert all((ref.get_parameter(f"b{i}") == 0).all() for i in range(ref.depth))
    assert tor.get_parameter("w0").abs().max() > 0.1  # nn.Linear: U(-1, 1) for one input
    with pytest.raises(Exception, match="init"):
        build(MAMLConfig, {"init": "xavier"}, "agent")


def test_summary_counts_diverged_tasks_and_reports_the_median():
    from metarl.fewshot.evaluation import summarize_fewshot
    scores = {0: torch.tensor([1.0, 2.0, 3.0, 1.0]), 10: torch.tensor([0.1, float("nan"), 0.3, float("inf")])}
    s = summarize_fewshot(scores, "regression")
    zero, ten = s["curve"]["points"]
    assert zero["x"] == 0 and zero["diverged"] == 0 and zero["median"] == 1.0 and "kept" not in zero
    assert ten["x"] == 10 and ten["diverged"] == 2 and ten["median"] == pytest.approx(0.1) and math.isnan(ten["mean"])
    assert ten["kept"]["n"] == 2 and ten["kept"]["mean"] == pytest.approx(0.2)


def test_a_regression_task_ten_times_worse_than_before_adaptation_counts_as_diverged():
    """A finite blow-up (MSE 1e4 from 2.0) swamps the mean as surely as inf: it is counted, and
    the mean tables print is over the other tasks. Under 10x its start is kept, and so is a task
    that started almost fitted and stays under 10x the median task's start (0.01 -> 0.3)."""
    from metarl.fewshot.evaluation import summarize_fewshot
    before = torch.tensor([2.0, 2.0, 0.5, 1.0, 0.01])
    s = summarize_fewshot({0: before, 5: torch.tensor([0.2, 1e4, 4.9, 0.4, 0.3])}, "regression")
    five = s["curve"]["points"][1]
    assert five["diverged"] == 1 and five["mean"] > 2000
    assert five["kept"]["mean"] == pytest.approx((0.2 + 4.9 + 0.4 + 0.3) / 4)
    worse = summarize_fewshot({0: before, 5: torch.tensor([0.2, 2.0, 5.1, 0.4, 10.1])}, "regression")
    assert worse["total"]["diverged"] == 1  # 10.1 > 10 x median 1.0; 5.1 > 10 x 0.5 but not 10 x 1.0
    acc = summarize_fewshot({0: torch.tensor([0.9, 0.2]), 1: torch.tensor([0.1, 0.2])}, "classification")
    assert acc["total"]["diverged"] == 0  # accuracy has no blow-up to count


def test_report_table_prints_the_mean_without_diverged_tasks_and_says_so():
    from metarl.app.report import report_table
    from metarl.fewshot.evaluation import summarize_fewshot
    r = summarize_fewshot({0: torch.full((4,), 2.0), 1: torch.tensor([0.2, 0.4, 1e6, float("nan")])}, "regression")
    text = report_table({"results": {"maml": r}, "metric": "query MSE", "protocol": "fewshot", "env": "sinusoid",
                         "agent": "maml", "tasks": 4, "env_config": {"shots": 10}, "seed": 0, "env_steps": 8})
    row = next(line for line in text.splitlines() if line.startswith("maml (1 step)"))
    assert "0.300*" in row and "nan" not in row and "1000000" not in row
    assert "2 of 4 tasks diverged" in text and "over the other 2" in text


# ---- CLI: every learner trains and evaluates ------------------------------------------------------

TINY = ["--set", "agent.iterations=4", "--set", "agent.log_every=2", "--set", "agent.meta_batch=2",
        "--set", "agent.checkpoint_every=1", "--quiet", "--device", "cpu"]


@pytest.mark.parametrize("agent,env", [("maml", "sinusoid"), ("meta-sgd", "sinusoid"), ("reptile", "sinusoid"),
                                       ("pretrain", "sinusoid"), ("cnp", "gp-regression"), ("np", "gp-regression"),
                                       ("hypernet", "sinusoid"), ("hypernet", "gp-regression"), ("leo", "sinusoid"),
                                       ("leo", "gp-regression"), ("learned-opt", "sinusoid"),
                                       ("learned-opt", "gp-regression"), pytest.param("leo", "glyphs", marks=pytest.mark.slow),
                                       pytest.param("hypernet", "glyphs", marks=pytest.mark.slow),
                                       pytest.param("maml", "glyphs", marks=pytest.mark.slow),
                                       pytest.param("anil", "glyphs", marks=pytest.mark.slow),
                                       pytest.param("reptile", "glyphs", marks=pytest.mark.slow),
                                       pytest.param("protonet", "glyphs", marks=pytest.mark.slow),
                                       pytest.param("matching-net", "glyphs", marks=pytest.mark.slow),
                                       pytest.param("relation-net", "glyphs", marks=pytest.mark.slow)])
def test_every_learner_trains_and_evaluates(cli, tmp_path, agent, env):
    run = tmp_path / "run"
    extra = ["--set", "env.classes=60", "--set", "agent.channels=8"] if env == "glyphs" else []
    if agent in ("maml", "anil", "reptile", "hypernet", "leo") and env == "glyphs":
        extra += ["--set", "agent.eval_steps=2"]
    code, out, err = cli("train", agent, "--env", env, "--run-dir", run, *TINY, *extra)
    assert code == 0, err
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and math.isfinite(json.loads(lines[-1])["loss"])
    code, out, err = cli("eval", run, "--tasks", 30)
    assert code == 0, err
    report = json.loads((run / "eval.json").read_text())
    res = report["results"][agent]
    assert report["schema"] == 2 and res["total"]["n"] == 30
    regression = env != "glyphs"
    assert res["metric"] == report["metric"] == ("query MSE" if regression else "query accuracy")
    steps = [p["x"] for p in res["curve"]["points"]]
    if agent in ("maml", "anil", "reptile", "hypernet", "leo") and not regression:
        assert steps == [0, 1, 2]
    elif agent in ("maml", "meta-sgd", "reptile", "pretrain", "hypernet", "leo", "learned-opt"):
        assert steps == [0, 1, 5, 10]
    else:
        assert steps == [0]
    assert (run / "eval_adaptation.png").stat().st_size > 1000
    if regression:
        assert (run / "eval_fits.png").stat().st_size > 1000
    if agent in ("cnp", "np"):
        assert (run / "eval_context.png").stat().st_size > 1000 and res["per_context"]["contexts"][0] == 1


def test_fewshot_training_is_deterministic_and_resumes(cli, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    args = ["train", "maml", "--env", "sinusoid", *TINY, "--set", "agent.iterations=8"]
    assert cli(*args, "--run-dir", a)[0] == 0
    assert cli(*args, "--run-dir", b)[0] == 0
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    assert cli("train", "maml", "--env", "sinusoid", *TINY, "--set", "agent.iterations=4", "--run-dir", c)[0] == 0
    code, _, err = cli("train", "maml", "--env", "sinusoid", "--run-dir", c, "--resume", "--quiet",
                       "--set", "agent.total_steps=8")
    assert code == 2  # few-shot runs extend by agent.iterations, not total_steps
    code, _, err = cli("train", "maml", "--env", "sinusoid", "--run-dir", c, "--resume", "--quiet",
                       "--set", "agent.iterations=8")
    assert code == 0, err
    assert (a / "metrics.jsonl").read_text() == (c / "metrics.jsonl").read_text()


def test_metric_learners_train_with_more_ways_than_they_test_with(cli, tmp_path):
    dist = small_glyphs(ways=3, train_ways=6)
    b = dist.sample(2, torch.Generator().manual_seed(0), "train")
    assert b["ys"].max() == 5 and dist.sample(2, torch.Generator().manual_seed(0), "test")["ys"].max() == 2
    learner = ProtoNet(dist, build(MetricConfig, {"channels": 8}, "agent"))
    assert learner.adapt(b["xs"], b["ys"]).shape == (2, 6, 8)
    code, _, err = cli("train", "maml", "--env", "glyphs", "--set", "env.classes=60", "--set", "env.train_ways=6",
                       "--run-dir", tmp_path / "r")
    assert code == 2 and "env.train_ways=6" in err


def test_a_fewshot_run_is_tested_on_another_family_with_matching_shapes(cli, tmp_path):
    """--env: the sinusoid-trained learner, unchanged, on gp-regression tasks (its own report
    file, naming both families); a family of another shape or an RL env is refused in one line."""
    run = tmp_path / "run"
    assert cli("train", "maml", "--env", "sinusoid", "--run-dir", run, *TINY)[0] == 0
    assert cli("eval", run, "--tasks", 20)[0] == 0
    code, out, err = cli("eval", run, "--tasks", 20, "--env", "gp-regression")
    assert code == 0, err
    own, gp = (json.loads((run / f).read_text()) for f in ("eval.json", "eval_gp-regression.json"))
    assert gp["env"] == "gp-regression" and gp["trained_on"] == "sinusoid" and own["env"] == "sinusoid"
    assert gp["env_config"]["length_scale"] == 0.4 and gp["results"]["maml"]["scores"] != own["results"]["maml"]["scores"]
    assert (run / "eval_gp-regression_fits.png").exists()
    for env, words in (("glyphs", "network was built for"), ("bandit", "RL task distribution")):
        code, _, err = cli("eval", run, "--env", env)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_fixed_labels_make_training_tasks_non_mutually_exclusive():
    """env.fixed_labels: every training class always carries one label (its index mod ways), so
    the label is predictable from the image alone; held-out tasks still relabel their classes.
    Without the option a class takes several labels over the tasks."""
    fixed, plain = small_glyphs(ways=4, fixed_labels=True), small_glyphs(ways=4)
    for dist, expect_fixed in ((fixed, True), (plain, False)):
        b = dist.sample(200, torch.Generator().manual_seed(0), "train")
        labels: dict[int, set] = {}
        for c_row in b["classes"]:
            for label, c in enumerate(c_row.tolist()):
                labels.setdefault(c, set()).add(label)
        assert all(len(v) == 1 for v in labels.values()) == expect_fixed
        if expect_fixed:
            assert all(v == {(c - dist.bounds["train"][0]) % 4} for c, v in labels.items())
            assert len(labels) > 8  # many classes per label, drawn at random
    test = fixed.sample(200, torch.Generator().manual_seed(1), "test")
    labels = {}
    for c_row in test["classes"]:
        for label, c in enumerate(c_row.tolist()):
            labels.setdefault(c, set()).add(label)
    assert any(len(v) > 1 for v in labels.values())
    with pytest.raises(Exception, match="train_ways"):
        small_glyphs(ways=4, fixed_labels=True, train_ways=8)


def test_attacks_stay_in_the_ball_and_raise_the_loss():
    """PGD and FGSM perturb query images within eps (L-infinity) and [0, 1], and raise the
    adapted classifier's query loss; bad options are one-line user errors."""
    from metarl.errors import UserError
    from metarl.fewshot.attacks import Attack
    from metarl.fewshot.core import task_loss
    torch.manual_seed(0)
    dist = small_glyphs(ways=3, shots=2)
    learner = ProtoNet(dist, build(MetricConfig, {"channels": 8}, "agent"))
    learner.eval()
    b = dist.sample(4, torch.Generator().manual_seed(0), "test")
    with torch.no_grad():
        state = learner.adapt(b["xs"], b["ys"])
        clean = task_loss("classification", learner.predict(state, b["xq"]), b["yq"]).mean()
        for attack in (Attack("fgsm", 0.05), Attack("pgd", 0.05, 5)):
            x = attack.perturb(learner, state, b["xq"], b["yq"], torch.Generator().manual_seed(1))
            assert (x - b["xq"]).abs().max() <= 0.05 + 1e-6 and x.min() >= 0 and x.max() <= 1
            assert task_loss("classification", learner.predict(state, x), b["yq"]).mean() > clean
    for bad in (("pgd", 0.0, 5), ("pgd", 0.1, 0), ("cw", 0.1, 5)):
        with pytest.raises(UserError):
            Attack(*bad)


def test_eval_attack_reports_robust_accuracy_beside_clean_and_refuses_regression(cli, tmp_path):
    run = tmp_path / "run"
    extra = ["--set", "env.classes=60", "--set", "agent.channels=8"]
    assert cli("train", "protonet", "--env", "glyphs", "--run-dir", run, *TINY, *extra)[0] == 0
    code, out, err = cli("eval", run, "--tasks", 20, "--attack", "pgd", "--eps", 0.3, "--attack-steps", 3)
    assert code == 0, err
    res = json.loads((run / "eval.json").read_text())["results"]
    assert set(res) == {"protonet", "protonet (pgd eps=0.3, 3 steps)"}
    assert res["protonet (pgd eps=0.3, 3 steps)"]["total"]["mean"] < res["protonet"]["total"]["mean"]
    maml = tmp_path / "maml"  # a gradient-step learner: attacked only after all its evaluation steps
    assert cli("train", "maml", "--env", "glyphs", "--run-dir", maml, *TINY, *extra, "--set", "agent.eval_steps=2")[0] == 0
    assert cli("eval", maml, "--tasks", 10, "--attack", "fgsm", "--eps", 0.3)[0] == 0
    res = json.loads((maml / "eval.json").read_text())["results"]
    assert [p["x"] for p in res["maml"]["curve"]["points"]] == [0, 1, 2]
    assert [p["x"] for p in res["maml (fgsm eps=0.3)"]["curve"]["points"]] == [2]
    sin = tmp_path / "sin"
    assert cli("train", "maml", "--env", "sinusoid", "--run-dir", sin, *TINY)[0] == 0
    code, _, err = cli("eval", sin, "--attack", "fgsm")
    assert code == 2 and "classifiers" in err and not (sin / "eval.json").exists()
    code, _, err = cli("eval", run, "--attack", "fgsm", "--eps", -1)
    assert code == 2 and "--eps" in err


def test_adml_trains_and_is_attacked_on_omniglot(cli, tmp_path):
    """ADML end to end on a local Omniglot folder: training logs the adversarial meta-loss and the
    evaluation reports robust accuracy beside clean accuracy on the same held-out tasks."""
    data = omniglot_folder(tmp_path / "om")
    run = tmp_path / "run"
    code, _, err = cli("train", "maml", "--env", "omniglot", "--run-dir", run, *TINY,
                       "--set", f"env.data_dir={data}", "--set", "env.ways=2", "--set", "env.query=2",
                       "--set", "env.eval_query=2", "--set", "agent.channels=8",
                       "--set", "agent.adversarial=pgd", "--set", "agent.adv_steps=2", "--set", "agent.eval_steps=1")
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # the meta-loss is the mean of its two adversarial halves; clean loss logged beside
        assert r["loss"] == pytest.approx(0.5 * (r["loss_adv_query"] + r["loss_adv_support"]), rel=1e-5)
        assert r["loss_adv_query"] > r["loss_clean"]
    code, _, err = cli("eval", run, "--tasks", 10, "--attack", "pgd", "--eps", 0.3, "--attack-steps", 3)
    assert code == 0, err
    res = json.loads((run / "eval.json").read_text())["results"]
    robust = res["maml (pgd eps=0.3, 3 steps)"]["total"]["mean"]
    assert 0.0 <= robust <= res["maml"]["total"]["mean"]


def test_meta_loss_terms_add_their_weighted_values_and_log_each():
    """agent.meta_loss=maml,l2,proximal,aux-maml: the objective is the query loss after adaptation
    plus lambda times each term, each term matching its definition; plain maml is unchanged."""
    torch.manual_seed(0)
    dist = SinusoidDistribution(SinusoidConfig())
    b = dist.sample(4, torch.Generator().manual_seed(0))
    plain = MAMLLearner(dist, build(MAMLConfig, {}, "agent"))
    torch.manual_seed(0)
    full = MAMLLearner(dist, build(MAMLConfig, {"meta_loss": "maml,l2,proximal,aux-maml", "meta_loss_weight": 0.5},
                                   "agent"))
    loss_p, m_p = plain.meta_loss(b)
    loss_f, m_f = full.meta_loss(b)
    assert m_p.keys() == {"loss"} and m_f.keys() == {"loss", "loss_l2", "loss_proximal", "loss_aux-maml"}
    assert m_f["loss"] == pytest.approx(m_p["loss"])  # the same init and tasks: the same maml term
    theta = params_of(full.model)
    phi = full.adapt(b["xs"], b["ys"])
    assert m_f["loss_l2"] == pytest.approx(sum((p ** 2).sum() for p in theta.values()).item(), rel=1e-5)
    prox = sum(((phi[k] - p) ** 2).flatten(1).sum(1) for k, p in theta.items()).mean().item()
    assert m_f["loss_proximal"] == pytest.approx(prox, rel=1e-4)
    x, y = torch.cat([b["xs"], b["xq"]], 1), torch.cat([b["ys"], b["yq"]], 1)
    assert m_f["loss_aux-maml"] == pytest.approx(((full.model(x) - y) ** 2).mean().item(), rel=1e-5)
    extra = m_f["loss_l2"] + m_f["loss_proximal"] + m_f["loss_aux-maml"]
    assert loss_f.item() == pytest.approx(m_f["loss"] + 0.5 * extra, rel=1e-5)


def test_bad_meta_loss_terms_are_one_line_errors(cli):
    for agent, value, words in (("maml", "maml,rgx", "unknown: rgx"), ("maml", "l2", "with maml"),
                                ("reptile", "maml,l2", "own update")):
        code, _, err = cli("train", agent, "--env", "sinusoid", "--set", f"agent.meta_loss={value}", "--quiet")
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("train", "maml", "--env", "sinusoid", "--set", "agent.meta_loss_weight=-1", "--quiet")
    assert code == 2 and "meta_loss_weight" in err
