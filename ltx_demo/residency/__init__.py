"""Model lifetimes per residency mode: the manager, its modes, the one table of models, and the estimator for auto."""

from ltx_demo.residency.builds import free_device_memory
from ltx_demo.residency.estimate import MemoryEstimate, ResidencyPlan, estimate_memory, plan_residency
from ltx_demo.residency.manager import ModelManager, ResidencyStatus, StageTransformer
from ltx_demo.residency.modes import CONCRETE_MODES
from ltx_demo.residency.specs import ADAPTER, MODEL_NAMES, MODEL_SPECS, ModelConfig
from ltx_demo.residency.stage2_lora import Stage2Lora

__all__ = [
    "ADAPTER",
    "CONCRETE_MODES",
    "MODEL_NAMES",
    "MODEL_SPECS",
    "MemoryEstimate",
    "ModelConfig",
    "ModelManager",
    "ResidencyPlan",
    "ResidencyStatus",
    "Stage2Lora",
    "StageTransformer",
    "estimate_memory",
    "free_device_memory",
    "plan_residency",
]
