"""MoCo builder: initialisation, momentum update before the keys, enqueue after the losses, pointer wrap,
per-process shuffle-BN, gradient flow. Expected values come from independent re-computations."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from au_helpers import tiny
from au_lib.builder import MoCo


def _model(**kw):
    torch.manual_seed(0)
    args = dict(dim=8, K=16, m=0.9, contr_tau=None, align_alpha=2.0, unif_t=3.0)
    args.update(kw)
    bn = args.pop("bn", False)
    return MoCo(tiny(bn), **args)


def test_init_queue_encoders_and_head():
    m = _model(mlp=True)
    assert m.queue.shape == (8, 16)
    np.testing.assert_allclose(m.queue.norm(dim=0).numpy(), np.ones(16), rtol=1e-6)
    assert int(m.queue_ptr) == 0 and m.scalar_label is None
    for (nq, pq), (nk, pk) in zip(m.encoder_q.named_parameters(), m.encoder_k.named_parameters()):
        assert nq == nk and torch.equal(pq, pk) and not pk.requires_grad and pq.requires_grad
    head = m.encoder_q.fc
    assert isinstance(head[0], torch.nn.Linear) and head[0].weight.shape == (16, 16)
    assert isinstance(head[1], torch.nn.ReLU) and head[2].weight.shape == (8, 16)
    assert _model(contr_tau=0.2).scalar_label.item() == 0


def test_momentum_update_happens_before_the_keys():
    m = _model()
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.add_(0.1 * torch.randn_like(p))
    q0 = {n: p.detach().clone() for n, p in m.encoder_q.named_parameters()}
    k0 = {n: p.detach().clone() for n, p in m.encoder_k.named_parameters()}
    x_q, x_k = torch.randn(4, 12), torch.randn(4, 12)
    m.compute_losses(x_q, x_k)
    expected = {n: 0.9 * k0[n] + 0.1 * q0[n] for n in k0}
    for n, p in m.encoder_k.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n])
    k_ref = F.normalize(functional_call(m.encoder_k, expected, (x_k,)), dim=1)
    torch.testing.assert_close(m.last_qk[1], k_ref)
    k_old = F.normalize(functional_call(m.encoder_k, k0, (x_k,)), dim=1)
    assert not torch.allclose(m.last_qk[1], k_old)


def _np_unif(q, queue, t, intra):
    d = [np.sum((qi - uj) ** 2) for qi in q for uj in queue.T]
    if intra:
        d += [np.sum((q[i] - q[j]) ** 2) for i in range(len(q)) for j in range(i + 1, len(q))]
    return np.log(np.mean(np.exp(-t * np.asarray(d))))


@pytest.mark.parametrize("intra", [True, False])
def test_losses_use_the_queue_before_this_steps_enqueue(intra):
    m = _model(unif_intra_batch=intra)
    queue0 = m.queue.clone().double().numpy()
    losses = m.compute_losses(torch.randn(4, 12), torch.randn(4, 12))
    q, k = (t.double().numpy() for t in m.last_qk)
    assert losses.loss_unif.item() == pytest.approx(_np_unif(q, queue0, 3.0, intra), rel=1e-5)
    assert losses.loss_align.item() == pytest.approx(np.mean(np.sum((q - k) ** 2, 1)), rel=1e-5, abs=1e-6)
    assert losses.loss_contr is None and losses.logits_contr is None  # default objective: no logits built
    qa = m.queue.double().numpy()
    np.testing.assert_allclose(qa[:, :4], k.T, rtol=1e-6)
    np.testing.assert_allclose(qa[:, 4:], queue0[:, 4:], rtol=0)
    assert int(m.queue_ptr) == 4


def test_queue_pointer_wraps_around():
    m = _model(K=8)
    keys, ptrs = [], []
    for _ in range(3):
        m.compute_losses(torch.randn(4, 12), torch.randn(4, 12))
        keys.append(m.last_qk[1].clone())
        ptrs.append(int(m.queue_ptr))
    assert ptrs == [4, 0, 4]
    torch.testing.assert_close(m.queue[:, :4], keys[2].T)  # third batch overwrote the oldest slot
    torch.testing.assert_close(m.queue[:, 4:], keys[1].T)


def test_queue_size_must_be_multiple_of_batch():
    m = _model(K=10)
    with pytest.raises(RuntimeError, match="multiple"):
        m.compute_losses(torch.randn(4, 12), torch.randn(4, 12))


def test_single_process_shuffle_bn_restores_order():
    m = _model(bn=True, m=0.0)  # m=0: key encoder = query encoder params after the update
    seen = []
    m.encoder_k.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].clone()))
    torch.manual_seed(1)
    x_k = torch.randn(16, 12)
    m.compute_losses(torch.randn(16, 12), x_k)
    shuffled = seen[0]
    assert not torch.equal(shuffled, x_k)  # keys were encoded in a shuffled order ...
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, x_k.tolist()))
    m.encoder_k.train()
    with torch.no_grad():
        ref = F.normalize(m.encoder_k.fc(m.encoder_k.body(x_k)), dim=1)  # unshuffled batch, same BN stats
    torch.testing.assert_close(m.last_qk[1], ref, rtol=1e-5, atol=1e-6)  # ... and returned in input order


def test_gradient_reaches_query_encoder_only_and_forward_combines():
    m = _model(contr_tau=0.2, contr_w=0.5, align_w=3.0, unif_w=1.0)
    x = [torch.randn(4, 12), torch.randn(4, 12)]
    queue = m.queue.clone().double().numpy()  # dim x K, before this step's enqueue
    loss, logs = m((x, torch.zeros(4)))
    assert set(logs) == {"loss_contr", "contr_acc1", "contr_acc5", "loss_align", "loss_unif"}
    # every term again in NumPy from this step's q, k and the old queue (eq. 17/18 of the paper, unif_t 1 default)
    q, k = (v.double().numpy() for v in m.last_qk)
    logits = np.concatenate([np.sum(q * k, 1, keepdims=True), q @ queue], 1) / 0.2
    contr = np.mean(np.log(np.exp(logits).sum(1)) - logits[:, 0])
    align = np.mean(np.sum((q - k) ** 2, 1))
    d2 = np.concatenate([(2 - 2 * q @ queue).ravel(),
                         [np.sum((q[i] - q[j]) ** 2) for i in range(4) for j in range(i + 1, 4)]])
    unif = np.log(np.mean(np.exp(-m.unif_t * d2)))
    for key, ref in (("loss_contr", contr), ("loss_align", align), ("loss_unif", unif)):
        assert logs[key].item() == pytest.approx(ref, rel=1e-5, abs=1e-6), key
    assert loss.item() == pytest.approx(0.5 * contr + 3.0 * align + unif, rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in m.encoder_k.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder_q.parameters())


def test_alpha_one_path_through_model():
    m = _model(align_alpha=1.0)
    losses = m.compute_losses(torch.randn(4, 12), torch.randn(4, 12))
    q, k = (t.double().numpy() for t in m.last_qk)
    assert losses.loss_align.item() == pytest.approx(np.mean(np.linalg.norm(q - k, axis=1)), rel=1e-5)
