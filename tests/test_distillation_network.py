"""DistillationNetwork: student + frozen teacher behind MONAI's SupervisedTrainer; strict checkpoint loading."""

import pytest
import torch
from monai.engines import SupervisedTrainer

from qddens_monai.losses import EnsembleDistillationLoss
from qddens_monai.networks import CENet, QMENet
from qddens_monai.networks.distillation import DistillationNetwork, load_checkpoint

TINY = {"channels": (4, 8, 16, 16), "layers": (1, 1, 1, 1)}


def teacher():
    return QMENet(2, 1, 2, backbone_kwargs=TINY, quantization="float", probe_size=32)


def test_train_and_eval_outputs_and_frozen_teacher(tmp_path):
    t = teacher()
    torch.save(t.state_dict(), tmp_path / "model.pt")
    net = DistillationNetwork(CENet(2, 1, 2, **TINY), teacher(), teacher_checkpoint=tmp_path / "model.pt")
    assert all(k.startswith("student.") for k in net.state_dict())
    assert all(not p.requires_grad for p in net.teacher.parameters())
    x = torch.randn(2, 1, 32, 32)
    out = net(x)
    with torch.no_grad():
        expected = torch.softmax(t.eval()(x), 1)
    assert torch.allclose(out["teacher"], expected, atol=1e-6)
    assert out["teacher"].requires_grad is False and out["student"].shape == (2, 2, 32, 32)
    net.eval()
    assert torch.equal(net(x), net.student(x))


def test_supervised_trainer_distills_only_the_student():
    net = DistillationNetwork(CENet(2, 1, 2, **TINY), teacher())
    before = {k: v.clone() for k, v in net.teacher.state_dict().items()}
    student_before = [p.clone() for p in net.student.parameters()]
    data = [{"image": torch.randn(1, 32, 32), "label": torch.randint(0, 2, (1, 32, 32))} for _ in range(4)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=torch.utils.data.DataLoader(data, batch_size=2),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        loss_function=EnsembleDistillationLoss(alpha=0.5, teacher_is_probability=True),
    )
    trainer.run()
    assert all(torch.equal(v, net.teacher.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, b) for a, b in zip(student_before, net.student.parameters()))


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(teacher(), tmp_path / "missing.pt")
    torch.save(CENet(2, 1, 2, **TINY).state_dict(), tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match=r"other.pt does not match QMENet"):
        load_checkpoint(teacher(), tmp_path / "other.pt")
