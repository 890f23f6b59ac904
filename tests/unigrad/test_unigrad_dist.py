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
        if k.endswith("/queue"):
            # queue_size 40, 2 steps of 2 views x 8 samples: rows 0-15 step 0, 16-31 step 1, 32-39 untouched.
            # One process enqueues [k1(0-7), k2(0-7)]; two gather each rank's [k1, k2] (the original's
            # concat_all_gather of cat(k1, k2)): [k1(0-3), k2(0-3), k1(4-7), k2(4-7)]
            block = [*range(0, 4), *range(8, 12), *range(4, 8), *range(12, 16)]
            order = block + [16 + i for i in block] + list(range(32, 40))
            v = v[order]
        assert torch.allclose(v, w, atol=1e-10), k
    assert any(k.endswith("/F") for k in single) and any(k.endswith("/queue") for k in single)


def test_moco_queue_pointer_and_enqueue_order():
    """SiameseNet.enqueue by hand on one process: queue of K = 5 rows, the pointer advances by the number of
    keys modulo K, the oldest rows are replaced in order, wrapping around; a batch of K or more keys fills the
    queue with its last K rows and resets the pointer."""
    from unigrad_lib.config import load_config
    from unigrad_lib.model import SiameseNet

    cfg = load_config(os.path.join(HERE, "..", "..", "papers", "unigrad", "configs", "unigrad.py"),
                      ["arch=resnet_tiny", "projector_input_dim=128", "projector_hidden_dim=8",
                       "projector_output_dim=3", "queue_size=5", "loss=loss_moco", "form=loss", "moco_t=0.2"])
    m = SiameseNet(cfg).double()
    old = m.queue.clone()
    keys = torch.arange(1, 25, dtype=torch.float64).view(8, 3)
    m.enqueue(keys[0:2])
    assert int(m.queue_ptr) == 2 and torch.equal(m.queue, torch.cat([keys[0:2], old[2:]]))
    m.enqueue(keys[2:4])
    assert int(m.queue_ptr) == 4 and torch.equal(m.queue, torch.cat([keys[0:4], old[4:]]))
    m.enqueue(keys[4:6])  # rows 4 and 0
    assert int(m.queue_ptr) == 1 and torch.equal(m.queue, torch.cat([keys[5:6], keys[1:5]]))
    m.enqueue(keys[0:3])  # rows 1, 2, 3
    assert int(m.queue_ptr) == 4 and torch.equal(m.queue, torch.cat([keys[5:6], keys[0:3], keys[4:5]]))
    m.enqueue(keys[1:7])  # 6 >= K keys: the last 5
    assert int(m.queue_ptr) == 0 and torch.equal(m.queue, keys[2:7])
