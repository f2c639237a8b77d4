r"""The reference's own training iteration in PyTorch, timed on this machine.

    python -m dac_tf.benchmark.torch_reference --batch_size=16 --steps=3 [--nouse_dac]

Issue targets compare dac_tf's step with the reference's on the same machine, one
process after the other. This is the reference's DAC-AT iteration as
TrustMLRG/AdvCertainty dac_at_cifar10.py runs it (the robust-overfitting code base's
`attack_pgd`, model in train mode for the whole epoch): PGD-10 with
`loss.backward()` (which also computes every weight gradient), the final `all_loss`
forward, the AC step `ac_step * std(logits).mean()` and one SGD step, a fresh attack,
the cross-entropy step, then the clean forward that feeds the logged train accuracy.
Without DAC (`--nouse_dac`) it is the AT iteration. PreActResNet-18 as the reference
defines it (3x3 stem, [2, 2, 2, 2] pre-activation blocks, final BN-ReLU, 4x4 average
pool, linear), random CIFAR-shaped data, fp32, PyTorch's own thread count.

PyTorch is optional (`pip install torch`); the training code never imports this.
"""

import statistics
import time

from absl import app
from absl import flags

_EPSILON, _STEP, _ATTACK_STEPS = 8 / 255, 2 / 255, 10
_MEAN, _STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def _preact_resnet18(torch, num_classes=10):
    nn, functional = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self, in_planes, planes, stride):
            super().__init__()
            self.bn1, self.bn2 = nn.BatchNorm2d(in_planes), nn.BatchNorm2d(planes)
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride, bias=False)
                             if stride != 1 or in_planes != planes else None)

        def forward(self, x):
            out = functional.relu(self.bn1(x))
            shortcut = self.shortcut(out) if self.shortcut is not None else x
            out = self.conv2(functional.relu(self.bn2(self.conv1(out))))
            return out + shortcut

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            blocks, in_planes = [], 64
            for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                blocks += [Block(in_planes, planes, stride), Block(planes, planes, 1)]
                in_planes = planes
            self.blocks = nn.Sequential(*blocks)
            self.bn = nn.BatchNorm2d(512)
            self.linear = nn.Linear(512, num_classes)

        def forward(self, x):
            out = functional.relu(self.bn(self.blocks(self.conv1(x))))
            return self.linear(torch.flatten(functional.avg_pool2d(out, 4), 1))

    return Net()


def time_reference_step(batch_size=16, steps=3, use_dac=True, ac_step=0.3, seed=0):
    """Times the reference's AT or DAC-AT iteration on PreActResNet-18 in PyTorch.

    Args:
      batch_size: images per iteration.
      steps: timed iterations (after one untimed warm-up iteration).
      use_dac: the DAC-AT iteration (True) or the AT one.
      ac_step: the AC step's weight (`stepsize` in the reference; 0.3 for AT).
      seed: torch's seed for the weights and the data.

    Returns:
      A dict: img_per_s (from the median iteration), step_ms_median, step_ms_runs,
      batch_size, use_dac, torch_version and torch_threads.
    """
    import torch  # noqa: PLC0415 (optional dependency)
    functional = torch.nn.functional
    torch.manual_seed(seed)
    model = _preact_resnet18(torch).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                                weight_decay=5e-4)
    mean = torch.tensor(_MEAN).view(3, 1, 1)
    std = torch.tensor(_STD).view(3, 1, 1)
    images = torch.rand(batch_size, 3, 32, 32)
    labels = torch.randint(0, 10, (batch_size,))

    def logits(x):
        return model((x - mean) / std)

    def attack_pgd():   # the robust-overfitting code base's attack_pgd, one restart
        max_loss = torch.zeros(batch_size)
        max_delta = torch.zeros_like(images)
        delta = torch.zeros_like(images).uniform_(-_EPSILON, _EPSILON)
        delta = torch.max(torch.min(delta, 1 - images), -images)
        delta.requires_grad = True
        for _ in range(_ATTACK_STEPS):
            functional.cross_entropy(logits(images + delta), labels).backward()
            moved = torch.clamp(delta + _STEP * torch.sign(delta.grad.detach()),
                                -_EPSILON, _EPSILON)
            delta.data = torch.max(torch.min(moved, 1 - images), -images).data
            delta.grad.zero_()
        all_loss = functional.cross_entropy(logits(images + delta), labels,
                                            reduction="none")
        keep = all_loss >= max_loss
        max_delta[keep] = delta.detach()[keep]
        return max_delta

    def iteration():
        if use_dac:
            adversarial = torch.clamp(images + attack_pgd(), 0, 1)
            ac_loss = ac_step * logits(adversarial).std(dim=1).mean()
            optimizer.zero_grad()
            ac_loss.backward()
            optimizer.step()
        adversarial = torch.clamp(images + attack_pgd(), 0, 1)
        loss = functional.cross_entropy(logits(adversarial), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logits(images)   # the clean forward behind the logged train accuracy

    iteration()
    runs = []
    for _ in range(steps):
        start = time.perf_counter()
        iteration()
        runs.append(1000 * (time.perf_counter() - start))
    median = statistics.median(runs)
    return {"img_per_s": 1000 * batch_size / median, "step_ms_median": median,
            "step_ms_runs": runs, "batch_size": batch_size, "use_dac": use_dac,
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}


def main(argv):
    del argv
    row = time_reference_step(flags.FLAGS.batch_size, flags.FLAGS.steps,
                              flags.FLAGS.use_dac)
    print(f"reference {'DAC-AT' if row['use_dac'] else 'AT'} PreActResNet-18, batch "
          f"{row['batch_size']}, torch {row['torch_version']} "
          f"({row['torch_threads']} threads): {row['img_per_s']:.2f} img/s, "
          f"{row['step_ms_median']:.0f} ms per iteration (runs: "
          f"{', '.join(f'{ms:.0f}' for ms in row['step_ms_runs'])})")


if __name__ == "__main__":
    flags.DEFINE_integer("batch_size", 16, "Images per iteration.", lower_bound=1)
    flags.DEFINE_integer("steps", 3, "Timed iterations.", lower_bound=1)
    flags.DEFINE_boolean("use_dac", True, "The DAC-AT iteration (else AT).")
    app.run(main)
