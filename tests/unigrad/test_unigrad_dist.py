"""2 gloo processes == 1 process on the global batch, for every gradient form (F all-reduce, key gathers,
queue, banks) and the original losses that use global-batch statistics: parameter gradients after the
all-reduce mean, F and the queue after two steps."""
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def test_two_processes_equal_one_process_on_global_batch(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(HERE, "unigrad_dist_worker.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-6000:]
    single = torch.load(tmp_path / "single.pt")
    multi = torch.load(tmp_path / "dist.pt")
    assert set(single) == set(multi) and len(single) > 30
    for k, v in single.items():
        w = multi[k]
        if k.endswith("/queue"):  # same keys; rank order of the enqueued rows differs
            v, w = v[v[:, 0].argsort()], w[w[:, 0].argsort()]
        assert torch.allclose(v, w, atol=1e-10), k
    assert any(k.endswith("/F") for k in single) and any(k.endswith("/queue") for k in single)
