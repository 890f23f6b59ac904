"""The contract every training entry point keeps (issue #11), run as a user runs the scripts.

(a) every parameter with requires_grad is in the optimizer (by identity) and changes after one step (1 and 2
    processes); (b) with 2 processes all ranks hold bit-identical student and teacher / momentum / EMA / F
    states after set-up and at the end; (g) no host reads inside a step outside the print boundaries;
(c) kill -9 mid-epoch and resume (1 DataLoader worker) gives bitwise the uninterrupted run's per-step losses
    and final weights; (e) that resume leaves every epoch-named checkpoint of earlier epochs as it was;
(d) a kill during a checkpoint write or copy leaves the previous file intact, the next start removes the
    temp files, and files follow the umask; (f) a UserError on rank 1 only: one ``error:`` line, status 2 on
    every rank, no traceback.
The cells of the default suite are a cross-section (every property at least once); ``-m slow`` runs the
whole matrix. TWIST's lr is 0 at its first warm-up step and UniGrad's zero-init residual BNs give bn1 a zero
gradient at step 1, so their cells compare after 2 steps (see ``entry_points.ENTRIES``).
"""
import glob
import os
import stat

import pytest
import torch

from entry_points import BY_NAME, ENTRIES, PRETRAINING, probes, run, tail

FAST = {1: {"twist/train", "align_uniform/main_moco"}, 2: {"unigrad/pretrain", "twist/train"}}
FAST_RESUME = {"unigrad/pretrain"}
FAST_WRITE = {"unigrad/pretrain"}
FAST_FAULT = {"rdm/main_simsiam"}
KILLED = -9
BN_STATS = ("running_mean", "running_var")


def _cells(names, fast):
    return [pytest.param(n, marks=() if n in fast else pytest.mark.slow) for n in names]


_RUNS = {}


def probed(name, procs, tmp_path_factory):
    """One probed run of ``name`` in ``procs`` processes (shared by the cells that read it)."""
    key = (name, procs)
    if key not in _RUNS:
        out = str(tmp_path_factory.mktemp(name.replace("/", "_") + f"_{procs}p"))
        res = run(BY_NAME[name], out, procs=procs, env={"SSL_ENGINE_PROBE": os.path.join(out, "probe")})
        assert all(r.returncode == 0 for r in res), tail(res)
        _RUNS[key] = probes(BY_NAME[name], os.path.join(out, "probe"), procs)
    return _RUNS[key]


def _grid():
    return [pytest.param(e.name, p, marks=() if e.name in FAST[p] else pytest.mark.slow, id=f"{e.name}-{p}p")
            for p in (1, 2) for e in ENTRIES]


def _differs(a, b):
    return not torch.equal(a, b)


@pytest.mark.parametrize("name, procs", _grid())
def test_a_every_trainable_parameter_is_optimised_and_moves(name, procs, tmp_path_factory):
    entry = BY_NAME[name]
    for rank, rec in enumerate(probed(name, procs, tmp_path_factory)):
        assert rec["trainable"], "no trainable parameter"
        assert rec["untracked"] == [], f"rank {rank}: not in the optimizer: {rec['untracked'][:6]}"
        after = rec["end"] if entry.moves_at_end else rec["first"]
        still = [n for n in rec["trainable"] if not _differs(rec["start"][n], after[n]) and n not in entry.still_ok]
        assert still == [], f"rank {rank}: unchanged after one step with lr > 0: {still[:6]}"


@pytest.mark.parametrize("name", _cells([e.name for e in ENTRIES], FAST[2]))
def test_b_ranks_hold_bit_identical_weights(name, tmp_path_factory):
    """Parameters and buffers (momentum encoders and queues inside the model, UniGrad's F, setup_run teachers);
    where an entry's BN is per rank by design (``local_bn``), its running statistics differ after a step and
    are compared after set-up only."""
    r0, r1 = probed(name, 2, tmp_path_factory)
    local = BY_NAME[name].local_bn
    for when in ("start", "end"):
        assert r0[when].keys() == r1[when].keys()
        bad = [k for k in r0[when] if not torch.equal(r0[when][k], r1[when][k])
               and not (local and when == "end" and k.endswith(BN_STATS))]
        assert bad == [], f"student differs over ranks at {when}: {bad[:6]}"
        teachers = r0[f"teachers_{when}"]
        assert teachers.keys() == r1[f"teachers_{when}"].keys()
        for t, state in teachers.items():
            bad = [k for k in state if not torch.equal(state[k], r1[f"teachers_{when}"][t][k])]
            assert bad == [], f"teacher '{t}' differs over ranks at {when}: {bad[:6]}"


@pytest.mark.parametrize("name, procs", _grid())
def test_g_no_host_reads_in_a_step(name, procs, tmp_path_factory):
    for rank, rec in enumerate(probed(name, procs, tmp_path_factory)):
        assert rec["reads"] == 0, f"rank {rank}: {rec['reads']} host reads in the steps: {rec['read_sites']}"


def _files(folder):
    """Checkpoint-like files under ``folder`` (relative path -> bytes)."""
    out = {}
    for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(p) and p.endswith((".pth", ".tar", ".ckpt")) and "/probe/" not in p:
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


def _same_states(a, b, what):
    assert a.keys() == b.keys(), what
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert bad == [], f"{what}: {len(bad)} tensors differ, e.g. {bad[:4]}"


@pytest.mark.parametrize("name", _cells(PRETRAINING + ["rdm/main_pretrain"], FAST_RESUME))
def test_c_e_kill_mid_epoch_and_resume_is_exact(name, tmp_path):
    """2 epochs x 2 steps, 1 worker: killed (SIGKILL) before step 3, the second step of epoch 1, then resumed
    from the epoch checkpoint in the same folder."""
    entry = BY_NAME[name]
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    kw = dict(epochs=2, steps=2, workers=1)
    res = run(entry, straight, env={"SSL_ENGINE_PROBE": os.path.join(straight, "probe")}, **kw)
    assert res[0].returncode == 0, tail(res)
    res = run(entry, killed, env={"SSL_ENGINE_KILL_AT": "3"}, **kw)
    assert res[0].returncode == KILLED, tail(res)
    before = _files(killed)
    assert before, "no checkpoint after the first epoch"
    res = run(entry, killed, extra=entry.resume(killed), env={"SSL_ENGINE_PROBE": os.path.join(killed, "probe")},
              **kw)
    assert res[0].returncode == 0, tail(res)
    (a,), (b,) = probes(entry, os.path.join(straight, "probe"), 1), probes(entry, os.path.join(killed, "probe"), 1)
    assert [s for s, _ in b["losses"]] == [2, 3]
    assert b["losses"] == a["losses"][2:]  # bitwise: python floats of the same float32 values
    _same_states(a["end"], b["end"], "final weights")
    for t in a["teachers_end"]:
        _same_states(a["teachers_end"][t], b["teachers_end"][t], f"final teacher '{t}'")
    # (e) the resume rewrote only the files every epoch rewrites, never an earlier epoch's named checkpoint
    after = _files(killed)
    kept = {k: v for k, v in before.items() if os.path.basename(k) not in entry.latest}
    assert {k: after.get(k) == v for k, v in kept.items()} == {k: True for k in kept}


def _debris(folder):
    return [p for p in glob.glob(os.path.join(folder, "**", ".tmp_*"), recursive=True)]


@pytest.mark.parametrize("name", _cells(["unigrad/pretrain", "twist/train"], FAST_WRITE))
def test_d_kill_during_a_checkpoint_write_or_copy(name, tmp_path):
    """umask 027: every file 0640. Run 1 writes the latest checkpoint (write 1) and a named copy (write 2); runs 2
    and 3 (another seed, same folder) are killed in write 1 and in write 2: the earlier file keeps its bytes,
    a temp file is left, and the next start (a resume) removes it."""
    entry = BY_NAME[name]
    out = str(tmp_path / "w")
    kw = dict(epochs=1, steps=1, umask=0o027, extra=list(entry.copy_flags))
    res = run(entry, out, **kw)
    assert res[0].returncode == 0, tail(res)
    latest, named = entry.latest[0], entry.named_copy
    first = _files(out)
    assert {latest, named} <= set(first)
    kw["extra"] = list(entry.copy_flags) + list(entry.seed_flags)
    res = run(entry, out, env={"SSL_ENGINE_KILL_IN_WRITE": "1"}, **kw)
    assert res[0].returncode == KILLED, tail(res)
    assert _files(out) == first and len(_debris(out)) == 1  # killed writing latest: nothing else changed
    res = run(entry, out, env={"SSL_ENGINE_KILL_IN_WRITE": "2"}, **kw)
    assert res[0].returncode == KILLED, tail(res)
    now = _files(out)
    assert now[named] == first[named]  # killed copying onto the named checkpoint: the old one is intact
    assert now[latest] != first[latest]  # (the latest of the other seed was written)
    torch.load(os.path.join(out, latest), weights_only=False)
    assert len(_debris(out)) == 1  # its own: the start of this run removed the one the previous kill left
    kw.update(epochs=2, extra=list(entry.copy_flags) + entry.resume(out))
    res = run(entry, out, **kw)
    assert res[0].returncode == 0, tail(res)
    assert _debris(out) == []
    modes = {k: stat.S_IMODE(os.stat(os.path.join(out, k)).st_mode) for k in _files(out)}
    assert modes and set(modes.values()) == {0o640}, modes


@pytest.mark.parametrize("name", _cells([e.name for e in ENTRIES], FAST_FAULT))
def test_f_user_error_on_rank_1_only(name, tmp_path):
    """SSL_ENGINE_FAULT=1:0 raises a UserError on rank 1 before its first step; rank 0 is then inside (or
    about to enter) a collective with a peer that has gone."""
    res = run(BY_NAME[name], str(tmp_path), procs=2, env={"SSL_ENGINE_FAULT": "1:0", "SSL_DIST_TIMEOUT": "120"},
              timeout=300)
    assert [r.returncode for r in res] == [2, 2], tail(res)
    errors = [ln for r in res for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: injected fault on rank 1 at step 0"], tail(res)
    assert not any("Traceback" in r.stderr for r in res), tail(res)


SPAWN = {"rdm/main_simsiam": ["--multiprocessing-distributed", "--dist-url", "env://"],
         "align_uniform/main_moco": ["--multiprocessing-distributed", "--world-size", "1", "--rank", "0",
                                     "--dist-url", "env://"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPAWN))
def test_f_user_error_on_rank_1_of_a_spawned_run(name, tmp_path):
    """The same with the script's own --multiprocessing-distributed (2 CPU processes spawned by the script):
    the launching process prints the one error line and exits with 2."""
    res = run(BY_NAME[name], str(tmp_path), extra=SPAWN[name], timeout=300,
              env={"SSL_CPU_PROCS": "2", "SSL_ENGINE_FAULT": "1:0", "SSL_DIST_TIMEOUT": "120"})
    assert res[0].returncode == 2, tail(res)
    errors = [ln for ln in res[0].stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: injected fault on rank 1 at step 0"], tail(res)
    assert "Traceback" not in res[0].stderr, tail(res)
