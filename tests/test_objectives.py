import torch

from mgsd.train.objectives import (
    full_reverse_kl,
    generalized_jsd,
    masked_mean,
    policy_gradient_loss,
    reverse_kl_advantages,
)


def test_zero_loss_and_zero_gradient_when_teacher_equals_student():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    logp_all = torch.log_softmax(logits, -1)
    tokens = torch.randint(0, 7, (2, 5))
    logp = logp_all.gather(-1, tokens[..., None])[..., 0]
    mask = torch.ones(2, 5)
    adv = reverse_kl_advantages(logp.detach(), logp, mask)
    loss = policy_gradient_loss(logp, logp.detach(), adv, mask)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0
    logits.grad = None
    kl = full_reverse_kl(logits, logits.detach(), mask)
    kl.backward()
    assert abs(kl.item()) < 1e-6 and logits.grad.abs().max() < 1e-6
    assert abs(generalized_jsd(logits, logits.detach(), mask).item()) < 1e-6


def test_advantage_sign_and_clip():
    t = torch.tensor([[-0.1, -3.0]])
    s = torch.tensor([[-1.0, -1.0]])
    adv = reverse_kl_advantages(t, s, torch.ones(1, 2))
    assert adv[0, 0] > 0 and adv[0, 1] < 0  # teacher likes token 0 more, token 1 less than the student
    clipped = reverse_kl_advantages(t, s, torch.ones(1, 2), clip=0.5)
    assert clipped.tolist() == [[0.5, -0.5]]


def test_masks_exclude_prompt_and_padding():
    logp = torch.zeros(1, 4, requires_grad=True)
    adv = torch.tensor([[5.0, 1.0, 1.0, 5.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    loss = policy_gradient_loss(logp, logp.detach(), adv * mask, mask)
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 3] == 0 and logp.grad[0, 1] < 0
    x = torch.tensor([[1.0, 100.0]])
    assert masked_mean(x, torch.tensor([[1.0, 0.0]])).item() == 1.0


def _reverse_kl(student_logits, teacher_logp):
    s = torch.log_softmax(student_logits, -1)
    return (s.exp() * (s - teacher_logp)).sum(-1).mean()


def test_sampled_policy_gradient_lowers_reverse_kl_on_a_toy_problem():
    """One categorical 'token': sampling from the student and following -A * grad log p reduces KL(s||t)."""
    torch.manual_seed(0)
    teacher_logp = torch.log_softmax(torch.tensor([2.0, 0.0, -1.0, -2.0]), -1)
    logits = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    start = _reverse_kl(logits, teacher_logp).item()
    for _ in range(200):
        probs = torch.softmax(logits, -1).detach()
        y = torch.multinomial(probs, 64, replacement=True)
        logp = torch.log_softmax(logits, -1)[y][None]
        adv = reverse_kl_advantages(teacher_logp[y][None], logp, torch.ones_like(logp))
        loss = policy_gradient_loss(logp, logp.detach(), adv, torch.ones_like(logp))
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = _reverse_kl(logits, teacher_logp).item()
    assert end < 0.1 * start


def test_full_and_topk_reverse_kl_gradients_descend():
    torch.manual_seed(1)
    teacher = torch.randn(3, 6, 10)
    logits = torch.zeros(3, 6, 10, requires_grad=True)
    mask = torch.ones(3, 6)
    for top_k in (None, 4):
        before = full_reverse_kl(logits, teacher, mask).item()
        opt = torch.optim.SGD([logits], lr=1.0)
        for _ in range(50):
            loss = full_reverse_kl(logits, teacher, mask, top_k=top_k)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert full_reverse_kl(logits, teacher, mask).item() < before


def test_ppo_ratio_clip_stops_gradient_outside_trust_region():
    old = torch.zeros(1, 1)
    logp = torch.tensor([[0.5]], requires_grad=True)  # ratio e^0.5 = 1.65 > 1.2
    loss = policy_gradient_loss(logp, old, torch.ones(1, 1), torch.ones(1, 1), ratio_clip=0.2)
    loss.backward()
    assert logp.grad.item() == 0.0


def test_the_stage2_loss_registry_names_exactly_the_configs_losses():
    import typing

    from mgsd.train.config import OPSDConfig
    from mgsd.train.objectives import STAGE2_LOSSES

    assert set(STAGE2_LOSSES) == set(typing.get_args(typing.get_type_hints(OPSDConfig)["loss"]))
