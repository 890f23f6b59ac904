"""The life of a ``train.py`` run (issues 11, 12, 13): the teacher built from the DDP-broadcast student,
clipping tied to ``--amp``, ``mme_ckpt.pth`` as an atomic copy that a resume never rewrites, ``--device``,
one-line errors for negative counts and bad output paths, and no host reads in the training step."""
import os

import pytest
import torch

from core import dist
from core.dist.testing import run_ranks
from core.engine.syncs import count_host_syncs

import paper_import

paper_import.register_package("twist", "twist_lib")
T = paper_import.load_script("twist", "train.py", "twist_train_lifecycle", cached=True)

TINY = ["--backbone", "resnet_tiny", "--img_size", "32", "--batch-size", "2", "--dim", "16", "--hid_dim", "32",
        "--max_steps_per_epoch", "2", "--num_workers", "0", "--num_samples", "16", "--local_crops_number", "2",
        "--device", "cpu"]


@pytest.fixture(autouse=True)
def _keep_cuda_env(monkeypatch):
    # train.main hides CUDA for --device cpu; restore the variable after each test
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    # curves.png of ~24 metrics takes most of a tiny run's time; nothing here looks at it
    monkeypatch.setattr("core.engine.plots.plot_curves", lambda *a, **k: None)


def run_main(argv, capsys):
    """``train.main`` in this process; returns (exit status, stderr)."""
    try:
        T.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- #11.2: the teacher of every rank is equal
def _teacher_on_rank(rank, world):
    captured = {}

    def fake_train(wrapped, optimizer, loader, cfg, ctx, **hooks):
        state = hooks["extra_state"](0)
        captured["teacher"] = {k: v.clone() for k, v in state["teacher"].items()}
        captured["student"] = {k: v.detach().clone() for k, v in dist.unwrap(wrapped).state_dict().items()}

    T.train = fake_train
    args = T.get_args_parser().parse_args(TINY + ["--use_momentum_encoder", "1", "--epochs", "1",
                                                  "--output_dir", os.environ["TWIST_TEST_OUT"]])
    T.main_worker(dist.DistContext(rank, rank, world, torch.device("cpu")), args)  # seeds with seed + rank
    return captured


@pytest.mark.slow  # two gloo processes (~25 s on a busy 2-core machine)
def test_teacher_is_built_from_the_broadcast_student_on_every_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("TWIST_TEST_OUT", str(tmp_path))
    r0, r1 = run_ranks(_teacher_on_rank, 2)
    assert r0["teacher"].keys() == r1["teacher"].keys()
    for k in r0["teacher"]:
        assert torch.equal(r0["teacher"][k], r1["teacher"][k]), k  # bit-identical over ranks
        assert torch.equal(r0["teacher"][k], r0["student"][k]), k  # a copy of the student
        assert torch.equal(r0["student"][k], r1["student"][k]), k


# ------------- #12: --clip_norm with --amp 1; #11.5: mme_ckpt.pth, an atomic copy a resume never rewrites
def test_clip_follows_amp_and_mme_checkpoint_is_copied_once(tmp_path, capsys, monkeypatch):
    calls, copies = [], []
    real_clip, real_copy = torch.nn.utils.clip_grad_norm_, T.copy_checkpoint

    def spy(params, max_norm, *a, **k):
        calls.append(float(max_norm))
        return real_clip(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    monkeypatch.setattr(T, "copy_checkpoint", lambda s, d: copies.append((s, d)) or real_copy(s, d))
    out = str(tmp_path)
    ckpt, mme = os.path.join(out, "checkpoint.pth"), os.path.join(out, "mme_ckpt.pth")
    code, err = run_main(TINY + ["--epochs", "2", "--mme_epochs", "2", "--amp", "1", "--clip_norm", "0.5",
                                 "--output_dir", out], capsys)
    assert code == 0, err
    assert calls == [0.5] * 4  # every step, as the original's GradScaler branch (here on CPU)
    assert copies == [(ckpt, mme)]
    ck = torch.load(mme, map_location="cpu", weights_only=False)
    assert ck["epoch"] == 1 and ck["engine"]["epoch"] == 2  # the state after epoch mme_epochs - 1
    before = os.stat(mme).st_mtime_ns, open(mme, "rb").read()
    # resume for one more (self-labeling) epoch with --amp 0: no clipping (the original's plain branch),
    # and the named checkpoint of the earlier epoch stays as it was
    calls.clear()
    code, err = run_main(TINY + ["--epochs", "3", "--mme_epochs", "2", "--amp", "0", "--clip_norm", "0.5",
                                 "--output_dir", out, "--resume", ckpt], capsys)
    assert code == 0, err
    assert calls == []
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["engine"]["epoch"] == 3
    assert (os.stat(mme).st_mtime_ns, open(mme, "rb").read()) == before and len(copies) == 1
    assert not [f for f in os.listdir(out) if f.startswith(".tmp_")]


# ------------------------------------------------------------------------------------ --device (#12)
class FakeCuda:
    def __init__(self, n):
        self.n, self.set = n, []


@pytest.fixture
def fake_cuda(monkeypatch):
    def make(n):
        fake = FakeCuda(n)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", lambda i: fake.set.append(i))
        return fake
    return make


def test_device_cuda_index_is_honoured_in_one_process(fake_cuda):
    fake = fake_cuda(2)
    ctx = T.resolve_device(dist.DistContext(0, 0, 1, torch.device("cuda", 0)), "cuda:1")
    assert ctx.device == torch.device("cuda", 1) and fake.set == [1]
    # plain "cuda" keeps the launcher's device (the GPU of the local rank)
    same = dist.DistContext(1, 1, 2, torch.device("cuda", 1))
    assert T.resolve_device(same, "cuda") is same
    assert T.resolve_device(same, "cpu").device == torch.device("cpu")


@pytest.mark.parametrize("spec,world,n,msg", [
    ("cuda:2", 1, 2, "has 2 CUDA devices"), ("cuda:1", 1, 0, "has 0 CUDA devices"),
    ("cuda:1", 2, 2, "pass --device cuda"), ("tpu", 1, 0, "not a device"), ("mps", 1, 0, "not supported")])
def test_device_errors_are_one_line(fake_cuda, spec, world, n, msg):
    fake_cuda(n)
    with pytest.raises(T.UserError, match=msg):
        T.resolve_device(dist.DistContext(0, 0, world, torch.device("cpu")), spec)


# ------------------------------------------------------------------ one-line errors (#11.6, negative)
@pytest.mark.parametrize("flag", ["--mme_epochs", "--sl_warmup_epochs", "--start_epoch", "--max_steps_per_epoch",
                                  "--num_samples", "--local_crops_number", "--num_workers"])
def test_negative_counts_are_one_line_errors(flag, capsys, tmp_path):
    code, err = run_main(TINY + ["--epochs", "2", flag, "-1", "--output_dir", str(tmp_path)], capsys)
    assert code == 2 and err.strip().splitlines() == [f"error: {flag} must be non-negative, got -1"]


def test_output_dir_under_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run_main(TINY + ["--epochs", "1", "--output_dir", str(blocker / "out")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and str(blocker) in lines[0]


# ----------------------------------------------------------------- #13.5: no host reads in the step
def _tiny_args(*extra):
    args = T.get_args_parser().parse_args(TINY + ["--epochs", "2", "--mme_epochs", "1", *extra])
    return T.finalize_args(args, 1)


def _crops(n_local, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)] + \
           [torch.randn(b, 3, 16, 16, generator=g) for _ in range(n_local)]


@pytest.mark.parametrize("amp", [None, torch.bfloat16, torch.float16])  # autocast on CPU emulates --amp 1
@pytest.mark.parametrize("stage,extra,n_local", [
    ("twist", (), 2), ("teacher", ("--use_momentum_encoder", "1"), 2), ("self_label", (), 12),
    ("self_label_teacher", ("--use_momentum_encoder", "1"), 2)])
def test_training_step_reads_nothing_back_to_the_host(stage, extra, n_local, amp):
    args = _tiny_args("--local_crops_number", str(n_local), *extra)
    torch.manual_seed(0)
    model = T.build_twist(args)
    teacher = None
    if args.use_momentum_encoder:
        teacher = T.build_twist(args)
        teacher.load_state_dict(model.state_dict())
        teacher.requires_grad_(False)
    method = T.TwistMethod(lam1=args.lam1, lam2=args.lam2, tau=args.tau, eps=args.EPS, mme_epochs=1,
                           teacher=teacher, watch=True)
    model.attach(method)
    method.epoch = 1 if stage.startswith("self_label") else 0
    method.quantile = 0.5
    method.extra_logs = {"lrb": 0.1, "wd": 1e-6, "wdb": 0.0}
    batch = (_crops(n_local), torch.arange(4))
    with count_host_syncs() as c:
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss, logs = model(batch)
        loss.backward()
        if teacher is not None:
            T.ema_update(model, teacher, 0.99)
    assert c.count == 0, c.where
    assert torch.isfinite(loss) and loss.dtype == torch.float32  # the loss in fp32 under autocast too
    # the schedule values stay python floats: no tensor is made on the host per step
    assert all(not torch.is_tensor(logs[k]) for k in ("lrb", "wd", "wdb"))
    assert ("threshold" in logs) == stage.startswith("self_label")
