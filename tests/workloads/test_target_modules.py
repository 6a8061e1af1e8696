"""LoRA target modules are matched as peft matches them: what admission lets through, the
training workload accepts (a module's short name, or a dotted suffix of its path)."""

from __future__ import annotations

import torch

from tunerag_workloads.finetune.train import linear_module_names, unknown_target_modules


class _Attention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(4, 4)
        self.v_proj = torch.nn.Linear(4, 4)
        self.rotary = torch.nn.Identity()


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([_Attention(), _Attention()])
        self.lm_head = torch.nn.Linear(4, 8)


def test_short_names_and_dotted_suffixes_of_linear_modules_are_known() -> None:
    model = _Model()
    assert linear_module_names(model) == ["lm_head", "q_proj", "v_proj"]
    assert unknown_target_modules(model, ["q_proj", "layers.0.q_proj", "0.v_proj", "layers.1.v_proj", "lm_head"]) == []


def test_names_that_adapt_no_linear_module_are_unknown() -> None:
    model = _Model()
    # A layer that does not exist, a partial name (peft matches whole dotted parts), a module that
    # is not linear, and a container rather than a linear module.
    targets = ["layers.2.q_proj", "proj", "_proj", "rotary", "layers.0", "q_proj"]
    assert unknown_target_modules(model, targets) == ["layers.2.q_proj", "proj", "_proj", "rotary", "layers.0"]
